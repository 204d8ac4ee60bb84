"""DVC stages, one module each, named after its stage in ``dvc.yaml`` (``python -m stages.<name>``).

Each holds a plain function named after the stage, which the tests call, and a ``main()``.
"""

import agegap  # noqa: F401  - sets TensorFlow's log level and oneDNN before any stage imports Keras
