"""The deletion ledger: which users asked to be forgotten, as salted hashes.

A ledger is a JSON-lines file; each line is {"user_hash", "algorithm",
"deleted_at"}. The hash is sha256 over a per-install random salt (the file
`salt` beside the ledger, created on the first delete, readable only by its
owner) followed by the user id, so the ledger names no one to a reader without
the salt. The Ingestion component reads the same file (components/ingestion/
deletions.py, which implements the reading side of the "sha256-salted-v1"
algorithm named in every line) and drops the users' rows from the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from pathlib import Path

ALGORITHM = "sha256-salted-v1"
SALT_FILE = "salt"


def user_hash(salt: bytes, user_id: str) -> str:
    return hashlib.sha256(salt + user_id.encode("utf-8")).hexdigest()


class DeletionLedger:
    """Append-only ledger at `path` with its salt beside it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def salt(self) -> bytes:
        salt_path = self.path.parent / SALT_FILE
        if not salt_path.is_file():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # O_EXCL: two processes deleting at once still agree on one salt.
            try:
                fd = os.open(salt_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_hex(32))
        return bytes.fromhex(salt_path.read_text().strip())

    def hashes(self) -> set[str]:
        if not self.path.is_file():
            return set()
        out = set()
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    out.add(json.loads(line)["user_hash"])
        return out

    def contains(self, user_id: str) -> bool:
        return self.path.is_file() and user_hash(self.salt(), user_id) in self.hashes()

    def excluder(self):
        """A predicate user_id -> True when the user is in the ledger (salt and hashes read once)."""
        hashes = self.hashes()
        if not hashes:
            return lambda user_id: False
        salt = self.salt()
        return lambda user_id: user_hash(salt, user_id) in hashes

    def append(self, user_id: str) -> str:
        """Records the user (once); returns the ledger's path."""
        hashed = user_hash(self.salt(), user_id)
        if hashed not in self.hashes():
            line = json.dumps({"user_hash": hashed, "algorithm": ALGORITHM, "deleted_at": int(time.time())})
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
        return str(self.path)
