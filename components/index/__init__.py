"""The retrieval index: ScaNN over the catalog's candidate-tower embeddings, its exports and its evaluation."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
