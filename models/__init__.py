"""Feature contract, preprocessing and the TFRS models of towerflow.

TensorFlow Recommenders needs Keras 2, so the legacy-Keras switch is set here,
before any submodule imports TensorFlow.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
