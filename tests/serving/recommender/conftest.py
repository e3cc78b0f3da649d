"""A tiny world for the service's unit tests: a REAL redis-server feature store, a stand-in model client.

Catalog: 40 items "i0".."i39", genres cycling over four genres; item embeddings
are fixed random unit vectors (dim 8), the index over them a ScaNN index.
Users: "warm" (12 events), "light" (2 events: cold), "fresh" (profile, no
events); "nobody" is unknown. Events are at DAY0 + n hours.

The model client is the stand-in: query embedding = a fixed vector per user,
interaction score = -0.1 x item number (so the ranker prefers low item numbers),
and it can be switched to fail like a stopped model server.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from towerflow.components.index.scann_index import ScannIndex
from towerflow.models import features
from towerflow.serving.feature_store import FeatureStore, StoreConfig
from towerflow.serving.feature_store.materialize import MaterializeConfig, materialize
from towerflow.serving.feature_store.server import LocalRedis, LocalRedisConfig, connect
from towerflow.serving.recommender.config import BudgetsConfig, ServiceConfig
from towerflow.serving.recommender.metrics import ServiceMetrics
from towerflow.serving.recommender.recommender import Recommender
from towerflow.serving.recommender.served import ModelUnavailableError, ServedVersion

DAY0 = 880_000_000  # 1997-11-20
HOUR = 3600
GENRES = ("Action", "Comedy", "Drama", "Horror")
N_ITEMS, DIM = 40, 8
AS_OF = DAY0 + 30 * 86400


def item_rows():
    return [
        {
            features.ITEM_ID: f"i{n}",
            features.ITEM_TITLE: f"Movie {n}",
            features.ITEM_GENRES: [GENRES[n % 4]] + ([GENRES[(n + 1) % 4]] if n % 3 == 0 else []),
            features.ITEM_RELEASE_YEAR: 1990 + n % 8,
        }
        for n in range(N_ITEMS)
    ]


def user_rows():
    return [
        {features.USER_ID: u, features.USER_AGE: age, features.USER_GENDER: g, features.USER_OCCUPATION: "writer",
         features.USER_ZIP: "12345"}
        for u, age, g in (("warm", 30, "F"), ("light", 22, "M"), ("fresh", 31, "F"), ("other", 30, "F"))
    ]  # fmt: skip


def event_rows():
    rows = [("warm", f"i{n}", 4.0, DAY0 + n * HOUR, f"w{n}") for n in range(20, 32)]
    rows += [("light", "i1", 5.0, DAY0 + HOUR, "l1"), ("light", "i2", 3.0, DAY0 + 2 * HOUR, "l2")]
    # "other" makes items 5..9 the recent favourites of women aged 25-34
    rows += [("other", f"i{n}", 4.0, AS_OF - 86400 + n, f"o{n}") for n in range(5, 10)]
    return rows


def make_index() -> ScannIndex:
    rng = np.random.default_rng(7)
    emb = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return ScannIndex.build([f"i{n}" for n in range(N_ITEMS)], emb)


class StandInModels:
    """The ModelClient interface without a model server; `down = True` behaves like a stopped server."""

    def __init__(self, dim: int = DIM):
        self.dim, self.down, self.calls = dim, False, {"query": 0, "rank": 0}

    def _check(self):
        if self.down:
            raise ModelUnavailableError("two_tower v1 query_tower: UNAVAILABLE: failed to connect")

    def query_embedding(self, query, version, timeout):
        self._check()
        self.calls["query"] += 1
        rng = np.random.default_rng(abs(hash(query[features.USER_ID])) % 2**32)
        v = rng.normal(size=self.dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def rank(self, query, candidates, version, timeout):
        self._check()
        self.calls["rank"] += 1
        ids = [c[features.ITEM_ID] for c in candidates]
        return {"interaction_score": np.array([-0.1 * int(i[1:]) for i in ids], dtype=np.float32)}

    def available_versions(self, model, timeout=2.0):
        self._check()
        return {1}


class StandInWatcher:
    def __init__(self, served, client):
        self.current, self.client, self.last_error = served, client, None

    def start(self, poll_seconds):
        pass

    def stop(self):
        pass


def start_world_redis(data_dir: str, appendfsync: str = "no") -> LocalRedis:
    """A redis-server holding the tiny world, materialized."""
    server = LocalRedis(LocalRedisConfig(data_dir=data_dir, appendfsync=appendfsync)).start()
    client = connect(server.url)
    materialize(client, MaterializeConfig(source="unit"), user_rows(), item_rows(), event_rows())
    client.close()
    return server


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = start_world_redis(str(tmp_path_factory.mktemp("redis")))
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test only (to kill): (LocalRedis, FeatureStore)."""
    server = start_world_redis(str(tmp_path / "redis"), appendfsync="always")
    client = connect(server.url, None)
    yield server, FeatureStore(client, StoreConfig())
    client.close()
    server.stop()


@pytest.fixture
def store(redis_server):
    client = connect(redis_server.url)
    yield FeatureStore(client, StoreConfig())
    client.close()


@pytest.fixture(scope="module")
def index():
    return make_index()


@pytest.fixture
def make_recommender(store, index):
    """make_recommender(config=None, weight=0.5, evaluation=None) -> (Recommender, StandInModels); `evaluation`
    is the served version's pushed evaluation.json (e.g. its popularity_weight)."""
    made = []

    def make(
        config: ServiceConfig | None = None,
        weight: float = 0.5,
        served: bool = True,
        on_store=None,
        evaluation: dict | None = None,
    ):
        models = StandInModels()
        watcher = StandInWatcher(ServedVersion(1, 1, index, weight, evaluation or {}) if served else None, models)
        config = config or ServiceConfig()
        if config.budgets_ms == BudgetsConfig():
            # tests not about budgets get generous ones: a loaded machine must not turn them into fallback tests
            config = dataclasses.replace(config, budgets_ms=BudgetsConfig(*[2000.0] * 5))
        recommender = Recommender(on_store or store, watcher, config, ServiceMetrics())
        recommender.refresh_popular()
        made.append(recommender)
        return recommender, models

    yield make
    for r in made:
        r.close()


@pytest.fixture(scope="session")
def world():
    """The tiny world's constants, for the tests."""
    import types

    return types.SimpleNamespace(AS_OF=AS_OF, DAY0=DAY0, HOUR=HOUR, N_ITEMS=N_ITEMS, GENRES=GENRES)
