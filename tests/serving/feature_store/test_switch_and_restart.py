"""The atomic switch under a concurrent reader, and a redis-server killed with SIGKILL mid-run."""

import threading
import time

import pytest

from towerflow.models import features
from towerflow.serving.feature_store import FeatureStore, FeatureStoreUnavailable, StoreConfig
from towerflow.serving.feature_store.server import LocalRedis, LocalRedisConfig, connect


def test_a_reader_never_sees_half_of_one_materialization_and_half_of_another(backend, tiny, store_config):
    _, client = backend
    tiny.load(client, tag="A")
    # A short reader cache and a retire delay longer than it: the settings the switch relies on.
    store_config.active_cache_seconds = 0.05
    reader = FeatureStore(client, store_config)
    seen, errors = [], []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                # one call, several keys: all must come from one version, none may be missing
                seen.append(frozenset(item[features.ITEM_TITLE] for item in reader.items(["i1", "i2", "i3"])))
                profile = reader.query_features("u1", tiny.AS_OF)
                seen.append(frozenset([profile[features.USER_ZIP]]))
                assert profile[features.USER_PRIOR_COUNT] == 3, profile
            except Exception as err:  # noqa: BLE001 - any failure of a read is what the test looks for
                errors.append(repr(err))

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        time.sleep(0.2)
        for tag in ("B", "C"):
            tiny.load(client, tag=tag, retire_after_seconds=0.5)
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive() and errors == []
    assert len(seen) > 20
    # every read saw exactly one version, whole; the reader moved A -> B -> C, never back
    assert all(len(versions) == 1 for versions in seen)
    order = [next(iter(versions)) for versions in seen]
    assert order[0] == "A" and order[-1] == "C" and order == sorted(order)
    assert reader.feature_set_id == "test-3"
    assert not list(client.scan_iter(match="tf:test-1:*")) and not list(client.scan_iter(match="tf:test-2:*"))


@pytest.fixture
def durable_server(tmp_path):
    """A standalone redis-server of its own (appendonly, appendfsync always) that the test may kill."""
    server = LocalRedis(LocalRedisConfig(data_dir=str(tmp_path / "redis"), appendfsync="always")).start()
    yield server
    server.kill()


def test_no_acknowledged_event_is_lost_when_redis_is_killed(durable_server, tiny, tmp_path):
    client = connect(redis_url=durable_server.url)
    tiny.load(client)
    store = FeatureStore(client, StoreConfig(events_dir=str(tmp_path / "events")))
    acknowledged, refused = [], []
    killed = threading.Event()

    def record(n):
        event_id = f"e{n}"
        try:
            store.record_event("u1", "i2", "rating", rating=4, timestamp=tiny.T0 + 30 * tiny.DAY + n, event_id=event_id)
            acknowledged.append(event_id)
        except FeatureStoreUnavailable:
            refused.append(event_id)

    def writer():
        n = 0
        while len(refused) < 20:
            record(n)
            n += 1
            if n == 150:
                killed.set()

    thread = threading.Thread(target=writer)
    thread.start()
    killed.wait(timeout=60)
    durable_server.kill()  # SIGKILL while the writer keeps going
    thread.join(timeout=60)
    assert len(acknowledged) >= 150 and len(refused) == 20  # events while down: a clear error each

    durable_server.start()  # same port and data directory: the server replays its append-only file
    client = connect(redis_url=durable_server.url)
    store = FeatureStore(client, StoreConfig(events_dir=str(tmp_path / "events")))
    after = tiny.T0 + 40 * tiny.DAY
    recorded = {e.timestamp - (tiny.T0 + 30 * tiny.DAY) for e in store.user_events("u1") if e.item_id == "i2"}
    assert {f"e{n}" for n in recorded} >= set(acknowledged)
    # the client retries what was refused: each event counted exactly once, even ones half-applied at the kill
    for event_id in refused:
        store.record_event("u1", "i2", "rating", rating=4, timestamp=tiny.T0 + 30 * tiny.DAY + int(event_id[1:]),
                           event_id=event_id)  # fmt: skip
    total = len(acknowledged) + len(refused)
    assert store.query_features("u1", after)[features.USER_PRIOR_COUNT] == 3 + total
    assert store.item_features_at(["i2"], after)[0][features.ITEM_PRIOR_COUNT] == 1 + total
    assert dict(store.popular_items(after, 3, window_days=11))["i2"] == total
