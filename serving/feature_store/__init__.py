"""The online feature store on Redis: profiles, histories, item state and popularity for the live recommender.

    with open_store(run_dir="runs/local") as store:       # embedded redis-server, data in runs/local/feature_store
        store.query_features("42", as_of=now)
        store.record_event("42", "50", "rating", rating=5.0)

`open_store(redis_url=...)` reaches an external Redis, `open_store(redis_cluster="h:p,h:p")` a Redis Cluster;
the key layout (keys.py) is the same on both. The service reads nothing else of the pipeline's files.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from towerflow.serving.feature_store.errors import FeatureStoreUnavailable, InvalidEvent, NotMaterialized
from towerflow.serving.feature_store.server import LocalRedis, LocalRedisConfig, connect, store_dir
from towerflow.serving.feature_store.store import FeatureStore, StoreConfig
from towerflow.serving.feature_store.writes import EVENT_TYPES

__all__ = [
    "EVENT_TYPES",
    "FeatureStore",
    "FeatureStoreUnavailable",
    "InvalidEvent",
    "NotMaterialized",
    "StoreConfig",
    "events_dir",
    "ledger_path",
    "open_client",
    "open_store",
]

EVENTS_DIR = "events"
PRIVACY_DIR = "privacy"
LEDGER_FILE = "deletion_ledger.jsonl"


def events_dir(serving_root: str | os.PathLike) -> Path:
    """Where acknowledged events are logged: <serving_root>/events/."""
    return Path(serving_root) / EVENTS_DIR


def ledger_path(run_dir: str | os.PathLike) -> Path:
    """The deletion ledger of a run directory: <run_dir>/privacy/deletion_ledger.jsonl."""
    return Path(run_dir) / PRIVACY_DIR / LEDGER_FILE


@contextlib.contextmanager
def open_client(run_dir: str | None = None, redis_url: str | None = None, redis_cluster: str | None = None):
    """A Redis client: the given URL or cluster, else a local redis-server on <run_dir>/feature_store/
    started here and stopped on exit."""
    if redis_url or redis_cluster:
        client = connect(redis_url, redis_cluster)
        try:
            yield client
        finally:
            client.close()
        return
    if run_dir is None:
        raise ValueError("the embedded feature store needs a run directory (or give a Redis URL / cluster)")
    server = LocalRedis(LocalRedisConfig(data_dir=str(store_dir(run_dir)))).start()
    client = connect(server.url)
    try:
        yield client
    finally:
        client.close()
        server.stop()


@contextlib.contextmanager
def open_store(
    run_dir: str | None = None,
    redis_url: str | None = None,
    redis_cluster: str | None = None,
    serving_root: str | None = None,
    config: StoreConfig | None = None,
) -> Iterator[FeatureStore]:
    """The feature store of a run directory.

    No url/cluster: starts a real local redis-server with RDB+AOF under <run_dir>/feature_store/ on a free
    127.0.0.1 port and stops it on exit. With a run directory, events are logged under
    <serving_root>/events/ (serving_root defaults to <run_dir>/serving) and deletions go to
    <run_dir>/privacy/deletion_ledger.jsonl, the ledger the next Ingestion run of that directory reads.
    """
    if config is None:
        config = StoreConfig()
        if run_dir is not None:
            config.events_dir = str(events_dir(serving_root or Path(run_dir) / "serving"))
            config.ledger_path = str(ledger_path(run_dir))
    with open_client(run_dir, redis_url, redis_cluster) as client:
        yield FeatureStore(client, config)
