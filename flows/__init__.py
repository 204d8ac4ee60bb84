"""Prefect flows that orchestrate the DVC pipeline.

DVC stays the judge of what is up to date; Prefect adds what DVC lacks: retries,
per-stage timeouts, logs and artifacts in a UI, and schedules. The flows only call
DVC (``dvc repro``, ``dvc exp run``); they never re-implement a stage.

Modules, one job each:

- :mod:`flows.dvc_commands`: run ``dvc`` as a subprocess with streamed output, the
  per-workspace lock, the stage order read from ``dvc.yaml``, override validation.
- :mod:`flows.leftovers`: the DVC commands a killed flow run left running, stopped by
  the next run on the workspace.
- :mod:`flows.artifacts`: the Prefect artifacts a run publishes.
- :mod:`flows.ephemeral`: settings for the temporary server a run starts without one.
- :mod:`flows.pipeline`: the ``agegap-pipeline`` flow and its ``run``/``serve`` CLI.
- :mod:`flows.experiments`: the blog's study (``experiments.yaml``) as queued DVC
  experiments, and its report.
"""
