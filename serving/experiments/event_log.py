"""Impression and event logs (JSONL, size-rotated) that let outcomes be joined to what was shown.

    <dir>/impressions.jsonl   one line per served (or shadow-computed) list
        {"kind": "impression", "ts": 1732990000.123, "request_id": "...", "user_id": "42",
         "experiment": "ranker-v4", "arm": "treatment", "source": "canary", "served": true,
         "model_versions": {"two_tower": 4, "ranker": 4}, "user_state": "warm", "fallback": null,
         "items": ["50", "181", ...], "scores": [3.2, 3.1, ...], "latency_ms": 7.9}
    <dir>/events.jsonl        one line per user event the service accepted
        {"kind": "event", "ts": ..., "user_id": "42", "item_id": "50", "event_type": "click",
         "request_id": "...", "assignments": {"ranker-v4": "treatment"}}

Rotation is the standard library's RotatingFileHandler (`impressions.jsonl.1`
... `.N`), which is thread-safe; a shadow list carries `"served": false`.
Join key: `request_id` (events name the request whose list they act on, when
the client passes it) or (`user_id`, `experiment`).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import threading
import time
import uuid
from pathlib import Path

from towerflow.serving.experiments.config import LogConfig

IMPRESSIONS_FILE = "impressions.jsonl"
EVENTS_FILE = "events.jsonl"


class _Line(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


class ExperimentLog:
    """Appends JSON lines to the impression and event files; safe to call from many threads."""

    def __init__(self, directory: str | Path, config: LogConfig | None = None):
        config = config or LogConfig()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._loggers = {}
        self._handlers = []
        tag = uuid.uuid4().hex[:8]  # one logger per instance: two logs in one process stay apart
        for kind, name in (("impression", IMPRESSIONS_FILE), ("event", EVENTS_FILE)):
            handler = logging.handlers.RotatingFileHandler(
                self.directory / name, maxBytes=config.max_bytes, backupCount=config.backup_count, encoding="utf-8"
            )
            handler.setFormatter(_Line())
            logger = logging.getLogger(f"towerflow.experiments.{kind}.{tag}")
            logger.setLevel(logging.INFO)
            logger.propagate = False
            logger.addHandler(handler)
            self._loggers[kind] = logger
            self._handlers.append(handler)
        self._closed = threading.Event()

    @property
    def impressions_path(self) -> Path:
        return self.directory / IMPRESSIONS_FILE

    @property
    def events_path(self) -> Path:
        return self.directory / EVENTS_FILE

    def _write(self, kind: str, record: dict) -> None:
        if self._closed.is_set():
            return
        line = {"kind": kind, "ts": round(time.time(), 3), **record}
        self._loggers[kind].info(json.dumps(line, separators=(",", ":"), default=str))

    def impression(
        self,
        *,
        request_id: str,
        user_id: str,
        experiment: str | None,
        arm: str | None,
        source: str,
        served: bool,
        response: dict,
        latency_ms: float | None = None,
    ) -> None:
        items = response.get("items") or []
        self._write(
            "impression",
            {
                "request_id": request_id,
                "user_id": user_id,
                "experiment": experiment,
                "arm": arm,
                "source": source,
                "served": served,
                "model_versions": response.get("model_versions"),
                "user_state": response.get("user_state"),
                "fallback": response.get("fallback"),
                "items": [item.get("item_id") for item in items],
                "scores": [item.get("score") for item in items],
                "latency_ms": None if latency_ms is None else round(latency_ms, 3),
            },
        )

    def event(self, *, user_id: str, item_id: str, event_type: str, assignments: dict, **extra) -> None:
        self._write(
            "event",
            {"user_id": user_id, "item_id": item_id, "event_type": event_type, "assignments": assignments, **extra},
        )

    def close(self) -> None:
        self._closed.set()
        for logger, handler in zip(self._loggers.values(), self._handlers):
            logger.removeHandler(handler)
            handler.close()


def read_lines(path: str | Path) -> list[dict]:
    """Every record of one log file and its rotated predecessors, oldest first."""
    path = Path(path)
    files = sorted(
        path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0
    )
    out = []
    for file in [*files, path]:
        if file.is_file():
            out.extend(json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line)
    return out
