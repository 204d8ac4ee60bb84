"""agegap: tell old from young faces on the Large Age-Gap dataset, reproducibly.

The library that the DVC stages (``stages/``) and the Prefect flows (``flows/``) are built from.
"""

import os

# TensorFlow's C++ start-up chatter (and, on CPU machines, a scary "failed call to
# cuInit") would fill every stage's log; real errors still raise in Python.
# Set before anything imports TensorFlow; a user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CLASS_NAMES: tuple[str, str] = ("old", "young")
"""Label order: index 1 is ``young``, as ``flow_from_directory`` sorted them in the blog."""

DECISION_THRESHOLD = 0.5
"""P(young) at or above this is called young, everywhere a label is printed or scored."""

JPEG_QUALITIES: tuple[int, int] = (20, 95)
"""The lowest and highest quality of a training image saved again as JPEG (``augment_jpeg``)."""

__version__ = "0.1.0"
