"""agegap: tell old from young faces on the Large Age-Gap dataset, reproducibly.

The library that the DVC stages (``stages/``) and the Prefect flows (``flows/``) are built from.
"""

import os

# TensorFlow's C++ start-up chatter (and, on CPU machines, a scary "failed call to
# cuInit") would fill every stage's log; real errors still raise in Python.
# Set before anything imports TensorFlow; a user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
USER_ONEDNN_SETTING = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
"""The user's own ``TF_ENABLE_ONEDNN_OPTS`` (None: unset, so agegap turned oneDNN on):
the benchmarks give the blog's code TensorFlow's default back unless the user chose."""
# TensorFlow runs its convolutions on oneDNN's kernels only on CPUs it deems made for
# neural networks (AVX512_VNNI, bfloat16 or AMX); elsewhere (AVX2, AVX-512 without VNNI)
# it falls back to Eigen's, which train this network far slower (docs/performance.md).
# Read once, when TensorFlow loads: so it is set here, before anything imports it.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

CLASS_NAMES: tuple[str, str] = ("old", "young")
"""Label order: index 1 is ``young``, as ``flow_from_directory`` sorted them in the blog."""

DECISION_THRESHOLD = 0.5
"""P(young) at or above this is called young, everywhere a label is printed or scored."""

JPEG_QUALITIES: tuple[int, int] = (20, 95)
"""The lowest and highest quality of a training image saved again as JPEG (``augment_jpeg``)."""

__version__ = "0.1.0"
