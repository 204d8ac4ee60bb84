"""The Prefect artifacts a pipeline run publishes: what the UI shows about its results.

Plots are published as links to local files, never embedded: they show real faces.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)

from flows.dvc_commands import run_dvc

METRICS_KEY = "agegap-metrics"
STAGES_KEY = "agegap-stages"
DIFF_KEY = "agegap-metrics-diff"
PLOTS_KEY = "agegap-plots"
PLOTS_DIR = "dvc_plots"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg", ".gif")


def artifact_key(text: str) -> str:
    """``text`` as a Prefect artifact key: lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def publish_metrics(metrics: Mapping[str, Any], description: str) -> None:
    """The test metrics as a two-column table, one row per metric."""
    table = [{"metric": name, "value": value} for name, value in metrics.items()]
    create_table_artifact(table=table, key=METRICS_KEY, description=description)


def publish_stages(outcomes: list[dict[str, Any]]) -> None:
    """What DVC did with each stage, so a skipped stage is visible without reading logs."""
    create_table_artifact(
        table=outcomes,
        key=STAGES_KEY,
        description=(
            "What DVC did with each stage: ran, restored (from DVC's run cache),"
            " skipped (up to date), failed, not run"
        ),
    )


def publish_metrics_diff(
    workspace: Path, against: str, on_line: Callable[[str], None] | None = None
) -> str:
    """``dvc metrics diff <against> --md``: how this run's metrics moved since that commit."""
    result = run_dvc(["metrics", "diff", against, "--md", "--all"], workspace, check=False)
    table = [line for line in result.lines if line.startswith("|")]
    notes = [line for line in result.lines if line.strip() and not line.startswith("|")]
    if result.returncode != 0:
        body = f"`dvc metrics diff {against}` failed:\n\n```\n" + "\n".join(notes) + "\n```"
    else:
        body = "\n".join(table) if table else "No metrics changed."
        if notes:
            body += "\n\n" + "\n".join(f"> {note}" for note in notes)
    markdown = f"# Metrics: workspace against `{against}`\n\n{body}\n"
    create_markdown_artifact(
        markdown=markdown,
        key=DIFF_KEY,
        description=f"dvc metrics diff {against}: this run's metrics against the commit",
    )
    if on_line is not None:
        for line in table:
            on_line(line)
    return markdown


def publish_plots(workspace: Path) -> list[str]:
    """Render ``dvc plots show`` and link to it and to each image plot of ``dvc.yaml``."""
    links: list[str] = []
    result = run_dvc(["plots", "show", "--out", PLOTS_DIR], workspace, check=False)
    index = workspace / PLOTS_DIR / "index.html"
    if result.returncode == 0 and index.is_file():
        links.append(index.as_uri())
        create_link_artifact(
            link=index.as_uri(),
            link_text="DVC plots (training curves, confusion matrix, ROC, precision-recall)",
            key=PLOTS_KEY,
            description=f"`dvc plots show` rendered in {workspace}; open it on this machine",
        )
    for path in image_plots(workspace):
        links.append(path.as_uri())
        relative = path.relative_to(workspace).as_posix()
        create_link_artifact(
            link=path.as_uri(),
            link_text=relative + ("/" if path.is_dir() else ""),
            key=artifact_key(f"agegap-plot-{Path(relative).with_suffix('')}"),
            description="An image plot of dvc.yaml, a local file: real faces stay on this machine",
        )
    return links


def image_plots(workspace: Path) -> list[Path]:
    """The image plots of ``dvc.yaml``: its top-level ``plots`` given as a path that exists.

    One link per entry (a folder of images is one link), not one per image, so the
    Artifacts page stays readable; the rendered ``dvc plots show`` page has them all.
    """
    spec = yaml.safe_load((workspace / "dvc.yaml").read_text(encoding="utf-8")) or {}
    paths = [workspace / entry for entry in spec.get("plots") or [] if isinstance(entry, str)]
    return [
        path
        for path in paths
        if path.is_dir() or (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
    ]
