"""Shared test set-up: legacy Keras before TensorFlow, quiet logs, the ml-100k location."""

import os
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The MovieLens-100K copy `make data` fetches; tests needing it skip with a reason if absent."""
    path = Path(os.environ.get("TOWERFLOW_ML100K_DIR", REPO_ROOT / "data" / "ml-100k"))
    if not path.is_dir():
        pytest.skip(f"MovieLens-100K not found at {path}; run `make data`")
    return path
