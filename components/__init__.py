"""Custom TFX components of towerflow (ingestion, index building, evaluation, push)."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
