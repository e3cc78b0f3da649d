"""Tests of pipeline/datasets.py: the offline RecBole fallback for real, GroupLens via a local server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest

from towerflow.components.ingestion.readers import load_dataset
from towerflow.pipeline import datasets
from towerflow.pipeline.datasets import DatasetUnavailableError, FetchResult, fetch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CLOSED_PORT_URL = "http://127.0.0.1:9/{name}.zip"  # discard port: connection refused at once


@pytest.fixture(scope="module")
def recbole_ml100k(tmp_path_factory):
    """fetch('ml-100k') with GroupLens unreachable: runs the real `pip download recbole==1.2.1`."""
    data_dir = tmp_path_factory.mktemp("data")
    messages: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets, "GROUPLENS_URL", CLOSED_PORT_URL)
        result = fetch("ml-100k", data_dir, progress=messages.append, timeout=5.0)
    return data_dir, result, messages


def test_recbole_fallback(recbole_ml100k):
    data_dir, result, messages = recbole_ml100k
    assert isinstance(result, FetchResult)
    assert result.path == data_dir / "ml-100k"
    assert result.format == "recbole" and result.source == "recbole-wheel"
    assert result.files == ("ml-100k.inter", "ml-100k.user", "ml-100k.item")
    assert sorted(p.name for p in result.path.iterdir()) == sorted(result.files + ("MANIFEST.json",))
    assert any("falling back" in m for m in messages)

    ds = load_dataset(result.path)
    assert ds.format == "recbole"
    assert len(ds.interactions) == 100_000
    assert len(ds.users) == 943
    assert len(ds.items) == 1682
    assert ds.malformed == []
    assert ds.interactions["rating"].between(1, 5).all()


def test_manifest_has_sha256_of_each_file(recbole_ml100k):
    _, result, _ = recbole_ml100k
    manifest = json.loads((result.path / "MANIFEST.json").read_text())
    assert manifest["source"] == "recbole-wheel" and manifest["format"] == "recbole"
    assert set(manifest["files"]) == set(result.files)
    for name, meta in manifest["files"].items():
        data = (result.path / name).read_bytes()
        assert meta["sha256"] == hashlib.sha256(data).hexdigest()
        assert meta["bytes"] == len(data)


def test_already_present_does_not_download(recbole_ml100k, monkeypatch):
    data_dir, first, _ = recbole_ml100k

    def forbidden(*args, **kwargs):
        raise AssertionError("no download expected")

    monkeypatch.setattr(datasets, "_download", forbidden)
    monkeypatch.setattr(subprocess, "run", forbidden)
    messages: list[str] = []
    again = fetch("ml-100k", data_dir, progress=messages.append)
    assert again == first
    assert any("already present" in m for m in messages)


def test_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'ml-7m'.*ml-100k, ml-1m, ml-20m, ml-25m"):
        fetch("ml-7m", tmp_path)


def test_unreachable_grouplens_without_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "GROUPLENS_URL", CLOSED_PORT_URL)
    start = time.monotonic()
    with pytest.raises(DatasetUnavailableError, match="GroupLens is unreachable.*only ml-100k has an offline fallback"):
        fetch("ml-1m", tmp_path, progress=lambda m: None, timeout=2.0)
    assert time.monotonic() - start < 2.0
    assert not (tmp_path / "ml-1m").exists()  # no empty directory left behind


def test_hanging_connection_is_cut_at_the_timeout(tmp_path, monkeypatch):
    release = threading.Event()

    def hang(url, timeout=None):  # a DNS lookup or connect that never answers
        release.wait(60)
        raise OSError("released")

    monkeypatch.setattr(datasets.urllib.request, "urlopen", hang)
    start = time.monotonic()
    try:
        with pytest.raises(DatasetUnavailableError, match="no answer within 0.5s"):
            fetch("ml-20m", tmp_path, progress=lambda m: None, timeout=0.5)
        assert time.monotonic() - start < 2.0
    finally:
        release.set()


@pytest.fixture
def grouplens_server(tmp_path):
    """A local HTTP server serving ml-1m.zip built from the fixture files (archive layout: ml-1m/<file>)."""
    root = tmp_path / "www"
    root.mkdir()
    with zipfile.ZipFile(root / "ml-1m.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted((FIXTURES / "ml-1m").iterdir()):
            archive.write(path, f"ml-1m/{path.name}")
        archive.writestr("ml-1m/README", "MovieLens 1M (test copy)\n")
        archive.writestr("ml-1m/unneeded.txt", "not extracted\n")

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{{name}}.zip"
    finally:
        server.shutdown()
        server.server_close()


def test_grouplens_download_and_extract(tmp_path, monkeypatch, grouplens_server):
    monkeypatch.setattr(datasets, "GROUPLENS_URL", grouplens_server)
    messages: list[str] = []
    result = fetch("ml-1m", tmp_path / "data", progress=messages.append, timeout=5.0)
    assert result.source == "grouplens" and result.format == "ml-1m"
    assert result.files == ("ratings.dat", "users.dat", "movies.dat", "README")
    assert sorted(p.name for p in result.path.iterdir()) == sorted(result.files + ("MANIFEST.json",))
    for name in ("ratings.dat", "users.dat", "movies.dat"):
        assert (result.path / name).read_bytes() == (FIXTURES / "ml-1m" / name).read_bytes()
    assert any("downloading" in m for m in messages)
    ds = load_dataset(result.path)
    assert len(ds.interactions) == 6 and len(ds.users) == 3 and len(ds.items) == 3

    # A changed file makes the manifest stale: fetched again.
    (result.path / "ratings.dat").write_bytes(b"1::1::5::1\n")
    messages.clear()
    again = fetch("ml-1m", tmp_path / "data", progress=messages.append, timeout=5.0)
    assert any("fetching again" in m for m in messages)
    assert (again.path / "ratings.dat").read_bytes() == (FIXTURES / "ml-1m" / "ratings.dat").read_bytes()


def test_files_without_manifest_count_as_present(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "GROUPLENS_URL", CLOSED_PORT_URL)
    target = tmp_path / "ml-20m"
    target.mkdir()
    for name in ("ratings.csv", "movies.csv"):
        (target / name).write_bytes((FIXTURES / "ml-20m" / name).read_bytes())
    result = fetch("ml-20m", tmp_path, progress=lambda m: None)
    assert (result.format, result.source, result.files) == ("ml-20m", "grouplens", ("ratings.csv", "movies.csv"))
    assert (target / "MANIFEST.json").exists()
