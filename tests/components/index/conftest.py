"""Fixtures for the index tests: a fake two-tower SavedModel, a catalog and examples (see index_fakes.py)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # index_fakes, importable by the test modules

from index_fakes import catalog_examples, query_examples, save_fake_two_tower, write_records  # noqa: E402


@pytest.fixture(scope="session")
def tower_dir(tmp_path_factory) -> str:
    return save_fake_two_tower(str(tmp_path_factory.mktemp("two_tower") / "Format-Serving"))


@pytest.fixture(scope="session")
def catalog_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("item_catalog")
    write_records(str(path / "items-00000-of-00001.tfrecord.gz"), catalog_examples())
    return str(path)


@pytest.fixture(scope="session")
def examples_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("examples")
    for split, seed in (("train", 1), ("eval", 2), ("test", 3)):
        write_records(str(path / f"Split-{split}" / "data_tfrecord-00000-of-00001.gz"), query_examples(seed=seed))
    return str(path)
