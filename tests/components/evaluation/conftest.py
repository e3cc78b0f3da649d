"""Session fixtures for the ModelEvaluator tests: fake models, a tiny world and its artifacts (eval_fakes.py)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # eval_fakes, importable by the test modules

import eval_fakes as E  # noqa: E402


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, str]:
    """Model artifact URIs (each holds a Format-Serving SavedModel): good, broken two-towers and a ranker."""
    root = tmp_path_factory.mktemp("models")
    E.save_fake_two_tower(str(root / "good" / "Format-Serving"))
    E.save_broken_two_tower(str(root / "broken" / "Format-Serving"))
    E.save_fake_ranker(str(root / "ranker" / "Format-Serving"))
    return {name: str(root / name) for name in ("good", "broken", "ranker")}


@pytest.fixture(scope="session")
def world(model_dirs):
    return E.make_world(os.path.join(model_dirs["good"], "Format-Serving"))


@pytest.fixture(scope="session")
def artifact_dirs(world, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("artifacts")
    dirs = {"examples": str(root / "examples"), "catalog": str(root / "item_catalog")}
    E.write_artifacts(world, dirs["examples"], dirs["catalog"])
    return dirs
