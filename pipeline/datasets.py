"""Fetch MovieLens datasets into a local directory.

`fetch("ml-100k", "data")` puts the dataset under ``data/ml-100k/``:

1. If the directory already holds the complete data (its MANIFEST.json lists
   files that are all there with the recorded sizes, or the required files are
   there without a manifest) nothing is downloaded.
2. Otherwise the GroupLens archive
   ``https://files.grouplens.org/datasets/movielens/<name>.zip`` is downloaded
   (connection attempts are bounded by `timeout` seconds, so an unreachable
   host fails fast instead of hanging) and only the needed files are extracted.
3. For ml-100k, when GroupLens is unreachable, the RecBole atomic files of
   MovieLens-100K are taken from the PyPI wheel ``recbole==1.2.1``
   (``pip download --no-deps``; RecBole is not installed), checked against the
   wheel's RECORD hashes.

A MANIFEST.json with the SHA-256 and size of every file is written last, so a
directory with a manifest is complete. Command line:
``python -m towerflow.pipeline.datasets ml-100k --data-dir data``.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/{name}.zip"
RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_WHEEL_DIR = "recbole/dataset_example/ml-100k"
RECBOLE_FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")
MANIFEST = "MANIFEST.json"

# dataset -> (reader format, files needed from the GroupLens archive, optional files kept for the license)
DATASETS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "ml-100k": ("ml-100k", ("u.data", "u.user", "u.item"), ("README",)),
    "ml-1m": ("ml-1m", ("ratings.dat", "users.dat", "movies.dat"), ("README",)),
    "ml-20m": ("ml-20m", ("ratings.csv", "movies.csv"), ("README.txt",)),
    "ml-25m": ("ml-25m", ("ratings.csv", "movies.csv"), ("README.txt",)),
}
PIP_DOWNLOAD_TIMEOUT = 600.0  # seconds for the whole `pip download` of the RecBole wheel


class DatasetUnavailableError(RuntimeError):
    """The dataset could not be obtained (source unreachable, bad archive, ...)."""


class _UnreachableError(OSError):
    pass


@dataclass(frozen=True)
class FetchResult:
    path: Path  # <data_dir>/<dataset>
    format: str  # a key of components.ingestion.readers.FORMATS
    source: str  # "grouplens" or "recbole-wheel"
    files: tuple[str, ...]  # data file names inside `path` (MANIFEST.json excluded)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(target: Path, dataset: str, fmt: str, source: str, origin: str, files: list[str]) -> None:
    manifest = {
        "dataset": dataset,
        "format": fmt,
        "source": source,
        "origin": origin,
        "fetched_at": _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
        "files": {name: {"sha256": _sha256(target / name), "bytes": (target / name).stat().st_size} for name in files},
    }
    tmp = target / (MANIFEST + ".part")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, target / MANIFEST)


def _present(dataset: str, target: Path, progress: Callable[[str], None]) -> FetchResult | None:
    """The FetchResult of complete data already in `target`, else None."""
    if not target.is_dir():
        return None
    manifest_path = target / MANIFEST
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            files = manifest["files"]
            complete = bool(files) and all(
                (target / name).is_file() and (target / name).stat().st_size == meta["bytes"]
                for name, meta in files.items()
            )
        except (ValueError, KeyError, TypeError, OSError):
            complete = False
        if complete:
            return FetchResult(target, manifest["format"], manifest["source"], tuple(files))
        progress(f"{dataset}: {target} is incomplete or changed since {MANIFEST} was written; fetching again")
        return None
    fmt, needed, _ = DATASETS[dataset]
    candidates = [(fmt, "grouplens", needed)]
    if dataset == "ml-100k":
        candidates.append(("recbole", "recbole-wheel", RECBOLE_FILES))
    for fmt, source, files in candidates:
        if all((target / name).is_file() for name in files):
            progress(f"{dataset}: files found in {target} without {MANIFEST}; recording their hashes")
            _write_manifest(target, dataset, fmt, source, "found on disk", list(files))
            return FetchResult(target, fmt, source, tuple(files))
    return None


def _open_url(url: str, timeout: float):
    """urlopen() whose connection phase (DNS included) gives up after `timeout` seconds."""
    box: dict = {}
    abandoned = threading.Event()

    def run() -> None:
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
        except BaseException as exc:  # reported to the caller
            box["error"] = exc
            return
        if abandoned.is_set():
            response.close()
        else:
            box["response"] = response

    thread = threading.Thread(target=run, name="towerflow-fetch-connect", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        abandoned.set()
        raise _UnreachableError(f"no answer within {timeout:g}s")
    if "error" in box:
        raise _UnreachableError(str(box["error"]))
    return box["response"]


def _download(url: str, dest: Path, progress: Callable[[str], None], timeout: float) -> None:
    response = _open_url(url, timeout)
    try:
        total = int(response.headers.get("Content-Length") or 0)
        done, last_report = 0, time.monotonic()
        progress(f"downloading {url}" + (f" ({total / 1e6:.1f} MB)" if total else ""))
        with open(dest, "wb") as out:
            while True:
                try:
                    block = response.read(1 << 20)  # each read is bounded by the socket timeout
                except OSError as exc:
                    raise _UnreachableError(f"download interrupted: {exc}") from exc
                if not block:
                    break
                out.write(block)
                done += len(block)
                if time.monotonic() - last_report >= 2.0:
                    last_report = time.monotonic()
                    share = f" ({100 * done / total:.0f}%)" if total else ""
                    progress(f"  {done / 1e6:.1f} MB{share}")
        if total and done != total:
            raise _UnreachableError(f"download truncated: {done} of {total} bytes")
        progress(f"  downloaded {done / 1e6:.1f} MB")
    finally:
        response.close()


def _extract(archive: zipfile.ZipFile, member: str, dest: Path) -> None:
    part = dest.with_name(dest.name + ".part")
    with archive.open(member) as src, open(part, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    os.replace(part, dest)


def _fetch_grouplens(dataset: str, target: Path, progress: Callable[[str], None], timeout: float) -> list[str]:
    _, needed, optional = DATASETS[dataset]
    url = GROUPLENS_URL.format(name=dataset)
    with tempfile.TemporaryDirectory(dir=target, prefix=".download-") as tmp:
        archive_path = Path(tmp) / f"{dataset}.zip"
        _download(url, archive_path, progress, timeout)
        try:
            with zipfile.ZipFile(archive_path) as archive:
                members = {Path(n).name: n for n in archive.namelist() if Path(n).parent.name in ("", dataset)}
                missing = [name for name in needed if name not in members]
                if missing:
                    raise DatasetUnavailableError(f"{url} does not contain {', '.join(missing)}")
                files = [name for name in needed + optional if name in members]
                for name in files:
                    progress(f"  extracting {name}")
                    _extract(archive, members[name], target / name)
        except zipfile.BadZipFile as exc:
            raise DatasetUnavailableError(f"{url} is not a valid zip archive: {exc}") from exc
    return files


def _wheel_record(archive: zipfile.ZipFile) -> dict[str, str]:
    """path -> 'sha256=<urlsafe b64>' from the wheel's RECORD."""
    record = next((n for n in archive.namelist() if n.endswith(".dist-info/RECORD")), None)
    if record is None:
        return {}
    out = {}
    for line in archive.read(record).decode("utf-8").splitlines():
        parts = line.rsplit(",", 2)
        if len(parts) == 3 and parts[1]:
            out[parts[0]] = parts[1]
    return out


def _fetch_recbole(target: Path, progress: Callable[[str], None], timeout: float) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="towerflow-recbole-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--no-input",
            "--timeout",
            str(max(timeout, 1.0)),
            RECBOLE_REQUIREMENT,
            "-d",
            tmp,
        ]
        progress(f"downloading the {RECBOLE_REQUIREMENT} wheel with pip (not installed; only its ml-100k files used)")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_DOWNLOAD_TIMEOUT, check=False)
        except subprocess.TimeoutExpired as exc:
            msg = f"`pip download {RECBOLE_REQUIREMENT}` took over {PIP_DOWNLOAD_TIMEOUT:g}s"
            raise DatasetUnavailableError(msg) from exc
        wheels = sorted(Path(tmp).glob("recbole-*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-5:])
            msg = f"`pip download {RECBOLE_REQUIREMENT}` failed (exit {proc.returncode}):\n{tail}"
            raise DatasetUnavailableError(msg)
        progress(f"  got {wheels[0].name}")
        with zipfile.ZipFile(wheels[0]) as archive:
            record = _wheel_record(archive)
            for name in RECBOLE_FILES:
                member = f"{RECBOLE_WHEEL_DIR}/{name}"
                try:
                    info = archive.getinfo(member)
                except KeyError:
                    raise DatasetUnavailableError(f"{wheels[0].name} does not contain {member}") from None
                progress(f"  extracting {name} ({info.file_size / 1e6:.1f} MB)")
                _extract(archive, member, target / name)
                expected = record.get(member)
                if expected and expected.startswith("sha256="):
                    digest = hashlib.sha256((target / name).read_bytes()).digest()
                    actual = "sha256=" + base64.urlsafe_b64encode(digest).decode().rstrip("=")
                    if actual != expected:
                        (target / name).unlink()
                        raise DatasetUnavailableError(f"{member} does not match the hash in the wheel's RECORD")
    return list(RECBOLE_FILES)


def _fetch_into(
    dataset: str, target: Path, progress: Callable[[str], None], timeout: float
) -> tuple[list[str], str, str, str]:
    """Download into `target`: (files, source, origin, format)."""
    url = GROUPLENS_URL.format(name=dataset)
    progress(f"{dataset}: fetching from GroupLens into {target}")
    try:
        files = _fetch_grouplens(dataset, target, progress, timeout)
        return files, "grouplens", url, DATASETS[dataset][0]
    except (OSError, DatasetUnavailableError) as exc:
        if dataset != "ml-100k":
            _, needed, _ = DATASETS[dataset]
            raise DatasetUnavailableError(
                f"GroupLens is unreachable or failed ({url}: {exc}); only ml-100k has an offline fallback "
                f"(the RecBole wheel from PyPI). Download {url} elsewhere and unzip "
                f"{', '.join(needed)} into {target}, then run again."
            ) from exc
        progress(f"{dataset}: GroupLens failed ({exc}); falling back to the {RECBOLE_REQUIREMENT} wheel")
    files = _fetch_recbole(target, progress, timeout)
    return files, "recbole-wheel", f"{RECBOLE_REQUIREMENT} (PyPI) {RECBOLE_WHEEL_DIR}", "recbole"


def fetch(
    dataset: str,
    data_dir: str | Path,
    progress: Callable[[str], None] = print,
    timeout: float = 15.0,
) -> FetchResult:
    """Make `dataset` available under `<data_dir>/<dataset>/` and describe what is there.

    Raises ValueError for an unknown dataset name and DatasetUnavailableError when
    the data cannot be obtained (GroupLens unreachable for a dataset other than
    ml-100k, failing pip download, bad archive).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; supported: {', '.join(DATASETS)}")
    target = Path(data_dir) / dataset
    present = _present(dataset, target, progress)
    if present is not None:
        progress(f"{dataset}: already present in {target} ({present.source}, {len(present.files)} files)")
        return present

    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    try:
        files, source, origin, fmt = _fetch_into(dataset, target, progress, timeout)
    except BaseException:
        if created and not any(target.iterdir()):
            target.rmdir()  # leave no empty directory behind
        raise
    _write_manifest(target, dataset, fmt, source, origin, files)
    progress(f"{dataset}: {len(files)} files ready in {target} (format {fmt}, source {source}); wrote {MANIFEST}")
    return FetchResult(target, fmt, source, tuple(files))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m towerflow.pipeline.datasets", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--timeout", type=float, default=15.0)
    args = parser.parse_args(argv)
    try:
        result = fetch(args.dataset, args.data_dir, timeout=args.timeout)
    except DatasetUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{result.path} format={result.format} source={result.source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
