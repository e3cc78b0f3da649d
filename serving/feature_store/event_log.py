"""The on-disk event log: every event the store acknowledged, as JSON lines the next pipeline run can ingest.

Files are `<events_dir>/events-YYYYMMDD.jsonl` (UTC day the event was
recorded). Readers get each event once (a retried event id is skipped) and
never the events of a user in the deletion ledger. `towerflow features
export-events` turns the log plus the ingested data into a dataset in the
towerflow format for the next `towerflow run`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path


class EventLog:
    """Appends acknowledged events to the day's JSONL file (one line per event, flushed at once)."""

    def __init__(self, directory: str | os.PathLike, fsync: bool = False):
        self.directory = Path(directory)
        self.fsync = fsync
        self._lock = threading.Lock()

    def path_for(self, when: dt.datetime) -> Path:
        return self.directory / f"events-{when:%Y%m%d}.jsonl"

    def append(self, event: dict) -> None:
        now = dt.datetime.now(dt.UTC)
        line = json.dumps({**event, "recorded_at": now.isoformat(timespec="milliseconds")}, sort_keys=True)
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._write(self.path_for(now), line)

    def _write(self, path: Path, line: str) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())


def read_events(directory: str | os.PathLike, excluded: Callable[[str], bool] = lambda _: False) -> Iterator[dict]:
    """Every logged event in recording order, once per event id, without users `excluded` says are deleted."""
    seen: set[str] = set()
    for path in sorted(Path(directory).glob("events-*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a crash mid-write: the event was not acknowledged
                if event["event_id"] in seen or excluded(event["user_id"]):
                    continue
                seen.add(event["event_id"])
                yield event
