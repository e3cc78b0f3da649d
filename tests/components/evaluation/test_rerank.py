"""Re-ranking retrieval's candidates with a ranker: the point-in-time item features it is given and
how the combined scores order the candidates."""

import os

import numpy as np
import pytest
import tensorflow as tf
from index_fakes import _raw_specs

from towerflow.components.evaluation.offline import (
    RETRIEVAL_PLUS_INTERACTION,
    RerankedRecommender,
    TwoTowerRecommender,
    item_popularity_features,
)
from towerflow.models import features as F
from towerflow.models.run_fns import RANKER_FEATURES

AS_OF = 10_000


class RecentCountRanker(tf.Module):
    """Scores an item by its recent interaction count, the feature the real ranker learns from."""

    def score(self, raw):
        recent = tf.cast(raw[F.ITEM_RECENT_COUNT], tf.float32)
        return {"interaction_score": recent, "liked_probability": tf.sigmoid(recent - 2.0), "rating": recent}


@pytest.fixture(scope="module")
def ranker_dir(tmp_path_factory):
    module = RecentCountRanker()
    signature = tf.function(module.score, input_signature=[_raw_specs(RANKER_FEATURES)]).get_concrete_function()
    path = str(tmp_path_factory.mktemp("ranker") / "recent")
    tf.saved_model.save(module, path, signatures={"ranker": signature})
    return path


@pytest.fixture(scope="module")
def retrieval(world, model_dirs):
    return TwoTowerRecommender(os.path.join(model_dirs["good"], "Format-Serving"), world, AS_OF)


def _users_and_seen(world, n=12):
    users = [f"u{u}" for u in range(n)]
    past = world.frame[world.frame["split"] != "test"]
    return users, [set(past.loc[past[F.USER_ID] == u, F.ITEM_ID]) for u in users]


def test_item_popularity_is_counted_from_earlier_train_and_eval_rows(world):
    items = ["i0", "i3", "i20", "i149", "not-in-catalog"]
    past = world.frame[world.frame["split"] != "test"]
    for as_of in (4_000, AS_OF):
        out = item_popularity_features(world, items, as_of)
        for i, item in enumerate(items):
            times = np.sort(past.loc[(past[F.ITEM_ID] == item) & (past[F.TIMESTAMP] < as_of), F.TIMESTAMP].to_numpy())
            assert out[F.ITEM_PRIOR_COUNT][i] == len(times)
            assert out[F.ITEM_RECENT_COUNT][i] == len(times)  # the whole toy world lies inside the window
            first = (as_of - times[0]) / F.SECONDS_PER_DAY if len(times) else 0.0
            assert out[F.ITEM_DAYS_SINCE_FIRST][i] == pytest.approx(first, rel=1e-6)


def test_weight_zero_keeps_retrieval_order(world, retrieval, ranker_dir):
    users, seen = _users_and_seen(world)
    reranked = RerankedRecommender(retrieval, ranker_dir, world, AS_OF, depth=30, weight=0.0)
    assert reranked(users, 10, seen) == retrieval(users, 10, seen)


@pytest.mark.parametrize("score, weight", [(RETRIEVAL_PLUS_INTERACTION, 1e3), ("interaction_score", 1.0)])
def test_a_dominant_ranker_score_orders_the_retrieved_candidates(world, retrieval, ranker_dir, score, weight):
    users, seen = _users_and_seen(world)
    depth = 30
    candidates = retrieval(users, depth, seen)
    reranked = RerankedRecommender(retrieval, ranker_dir, world, AS_OF, depth=depth, score=score, weight=weight)
    lists = reranked(users, 10, seen)
    recent = dict(
        zip(world.catalog.index, item_popularity_features(world, world.catalog.index, AS_OF)[F.ITEM_RECENT_COUNT])
    )
    moved = 0
    for got, cands in zip(lists, candidates):
        assert set(got) <= set(cands)  # re-ranking never brings in new items
        expected = sorted(cands, key=lambda item: -recent[item])[:10]  # stable: ties keep retrieval order
        assert got == expected
        moved += got != cands[:10]
    assert moved  # the ranker did change some lists
