"""DVC stages, one module each, named after the stage in ``dvc.yaml``.

Each module exposes a plain function named after its stage (what the tests call)
and a ``main()`` that ``dvc.yaml`` runs as ``python -m stages.<name>``.
"""

import agegap  # noqa: F401  - sets TensorFlow's log level before any stage imports Keras
