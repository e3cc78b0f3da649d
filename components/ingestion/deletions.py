"""The reading side of the deletion ledger: which users' rows ingestion must drop.

`towerflow users delete` and the recommend service append salted hashes of
user ids to `<run dir>/privacy/deletion_ledger.jsonl` (the writer is
serving/feature_store/privacy.py); the per-install salt is the file `salt`
beside it. The run directory is the parent of the pipeline root, as `towerflow
run --output-dir DIR` lays it out, so a pipeline run in DIR honours the deletes
made for DIR with no extra flag.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

ALGORITHM = "sha256-salted-v1"
PRIVACY_DIR = "privacy"
LEDGER_FILE = "deletion_ledger.jsonl"
SALT_FILE = "salt"


def ledger_for_pipeline_root(pipeline_root: str) -> str:
    """The ledger of the run directory that holds `pipeline_root` ("" for a remote root such as gs://)."""
    if "://" in pipeline_root:
        return ""
    return str(Path(pipeline_root).resolve().parent / PRIVACY_DIR / LEDGER_FILE)


@dataclass(frozen=True)
class DeletedUsers:
    """Salted hashes of deleted users; picklable, so Beam workers get it as part of a transform."""

    salt: bytes
    hashes: frozenset[str]

    def excluded(self, user_id: str) -> bool:
        return hashlib.sha256(self.salt + user_id.encode("utf-8")).hexdigest() in self.hashes


def load(ledger_path: str) -> DeletedUsers | None:
    """The ledger's users, or None when there is no ledger (nobody was deleted)."""
    path = Path(ledger_path) if ledger_path else None
    if path is None or not path.is_file():
        return None
    hashes = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        entry = json.loads(line)
        if entry.get("algorithm") != ALGORITHM:
            raise ValueError(f"{path} line {number}: unknown hashing algorithm {entry.get('algorithm')!r}")
        hashes.add(entry["user_hash"])
    if not hashes:
        return None
    salt = bytes.fromhex((path.parent / SALT_FILE).read_text().strip())
    return DeletedUsers(salt, frozenset(hashes))


def fingerprint(ledger_path: str) -> str:
    """Content hash of the ledger ("" when absent): a new delete re-runs Ingestion instead of using its cache."""
    path = Path(ledger_path) if ledger_path else None
    if path is None or not path.is_file():
        return ""
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
