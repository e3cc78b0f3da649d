"""Real redis-server processes for the feature-store tests: one standalone server and a 3-node Redis Cluster.

Both start once per session on free 127.0.0.1 ports (data in a temporary
directory) and are stopped at the end; every test gets an emptied server.
`backend` is parametrized, so each test that uses it runs against both.

`tiny` is a hand-made feature set whose features the tests compute by hand.
Day numbers are UTC days since the epoch; T0 is the start of day 100. u1 (30,
F) rates i1 and i2 in the same second, then i3 twenty days later; u2 (17, M)
rates i1 on day 101 and i2 after the cut-off; u3 has events but no users-table
row; one event names an item outside the catalog.
"""

import subprocess
import time
from types import SimpleNamespace

import pytest
import redis
from redis.cluster import RedisCluster

from towerflow.models import features
from towerflow.serving.feature_store import FeatureStore, StoreConfig
from towerflow.serving.feature_store.server import LocalRedis, LocalRedisConfig, connect

DAY = 86400
T0 = 100 * DAY
AS_OF = T0 + 25 * DAY

USERS = [
    {features.USER_ID: "u1", features.USER_AGE: 30, features.USER_GENDER: "F", features.USER_OCCUPATION: "writer",
     features.USER_ZIP: "12345"},
    {features.USER_ID: "u2", features.USER_AGE: 17, features.USER_GENDER: "M", features.USER_OCCUPATION: "student",
     features.USER_ZIP: "54321"},
]  # fmt: skip
ITEMS = [
    {features.ITEM_ID: "i1", features.ITEM_TITLE: "One", features.ITEM_GENRES: ["Drama"],
     features.ITEM_RELEASE_YEAR: 1990},
    {features.ITEM_ID: "i2", features.ITEM_TITLE: "Two", features.ITEM_GENRES: ["Comedy", "Drama"],
     features.ITEM_RELEASE_YEAR: 1995},
    {features.ITEM_ID: "i3", features.ITEM_TITLE: "Three", features.ITEM_GENRES: [], features.ITEM_RELEASE_YEAR: 0},
]  # fmt: skip
EVENTS = [
    ("u1", "i2", 3.0, T0 + 10, "d0"),
    ("u1", "i1", 5.0, T0 + 10, "d1"),
    ("u2", "i1", 4.0, T0 + DAY + 5, "d2"),
    ("u1", "i3", 1.0, T0 + 20 * DAY, "d3"),
    ("u3", "i1", 2.0, T0 + 20 * DAY + 100, "d4"),
    ("u2", "i2", 4.0, T0 + 30 * DAY, "d5"),  # at/after AS_OF: not materialized
    ("u1", "i9", 4.0, T0 + 11, "d6"),  # unknown item: dropped, as ingestion drops it
]


def load_tiny(client, source="test", as_of=AS_OF, tag=None, retire_after_seconds=0.0, **kwargs):
    """Materializes the tiny set; `tag` replaces every title and zip code (to tell versions apart)."""
    from towerflow.serving.feature_store.materialize import MaterializeConfig, materialize

    users = [dict(u, **({features.USER_ZIP: tag} if tag else {})) for u in USERS]
    items = [dict(i, **({features.ITEM_TITLE: tag} if tag else {})) for i in ITEMS]
    config = MaterializeConfig(source=source, as_of=as_of, retire_after_seconds=retire_after_seconds)
    return materialize(client, config, users, items, EVENTS, **kwargs)


@pytest.fixture
def tiny():
    return SimpleNamespace(DAY=DAY, T0=T0, AS_OF=AS_OF, USERS=USERS, ITEMS=ITEMS, EVENTS=EVENTS, load=load_tiny)


@pytest.fixture(scope="session")
def standalone_server(tmp_path_factory):
    # appendfsync everysec keeps the many small writes of the tests fast; the durability test runs its own
    # server with appendfsync always.
    server = LocalRedis(LocalRedisConfig(data_dir=str(tmp_path_factory.mktemp("redis")), appendfsync="everysec"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cluster_nodes(tmp_path_factory):
    """Three cluster-enabled redis-servers joined by `redis-cli --cluster create` (no replicas)."""
    root = tmp_path_factory.mktemp("redis_cluster")
    # appendfsync everysec: the cluster tests are about slots, the durability test uses the standalone server.
    servers = [
        LocalRedis(LocalRedisConfig(data_dir=str(root / f"node{i}"), cluster=True, appendfsync="everysec")).start()
        for i in range(3)
    ]
    try:
        addresses = [f"127.0.0.1:{s.port}" for s in servers]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while True:
            states = [redis.Redis(port=s.port).cluster("info")["cluster_state"] for s in servers]
            if all(state == "ok" for state in states):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster did not become ok: {states}")
            time.sleep(0.1)
        yield ",".join(addresses)
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(params=["standalone", "cluster"])
def backend(request):
    """(kind, redis-py client) on an emptied server; cluster clients reach all three nodes."""
    if request.param == "standalone":
        server = request.getfixturevalue("standalone_server")
        client = connect(redis_url=server.url)
        client.flushall()
    else:
        nodes = request.getfixturevalue("cluster_nodes")
        client = connect(redis_cluster=nodes)
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield request.param, client
    client.close()


@pytest.fixture
def store_config(tmp_path):
    return StoreConfig(events_dir=str(tmp_path / "events"), ledger_path=str(tmp_path / "privacy" / "ledger.jsonl"))


@pytest.fixture
def store(backend, store_config):
    return FeatureStore(backend[1], store_config)
