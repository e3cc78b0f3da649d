"""Re-ranking retrieval's candidates with a ranker: the point-in-time item features it is given and
how the combined scores order the candidates."""

import os

import numpy as np
import pytest
import tensorflow as tf
from index_fakes import _raw_specs

from towerflow.components.evaluation.offline import (
    RETRIEVAL_PLUS_INTERACTION,
    BlendedRecommender,
    RerankedRecommender,
    TwoTowerRecommender,
    item_popularity_features,
    tune_blend,
)
from towerflow.components.evaluation.protocol import evaluate
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
    if score == "interaction_score":  # the kept scores: each list's first 10 items' scores, in list order
        for user, got in zip(users, lists):
            assert reranked.top_scores[user].tolist() == [recent[item] for item in got]


# --------------------------------------------------------------------------- the recency-aware blend


def _recent(world, as_of=AS_OF):
    counts = item_popularity_features(world, world.catalog.index, as_of)[F.ITEM_RECENT_COUNT]
    return dict(zip(world.catalog.index, counts))


def test_blend_without_popularity_or_ranker_weight_is_retrieval(world, retrieval, ranker_dir):
    users, seen = _users_and_seen(world)
    blended = BlendedRecommender(retrieval, ranker_dir, world, AS_OF, depth=30, rerank_weight=0.0, popularity_weight=0)
    assert blended(users, 10, seen) == retrieval(users, 10, seen)


def test_a_dominant_popularity_weight_serves_the_most_recently_popular_unseen_items(world, retrieval):
    users, seen = _users_and_seen(world)
    recent = _recent(world)
    blended = BlendedRecommender(retrieval, None, world, AS_OF, depth=30, popularity_weight=1e4)
    lists = blended(users, 10, seen)
    retrieved = retrieval(users, 30, seen)
    brought_in = 0
    for got, exclude, cands in zip(lists, seen, retrieved):
        assert not set(got) & exclude
        unseen = sorted((recent[i] for i in world.catalog.index if i not in exclude), reverse=True)
        assert [recent[i] for i in got] == unseen[:10]  # popular candidates join retrieval's
        brought_in += bool(set(got) - set(cands))
    assert brought_in  # some came from the popularity list, not from retrieval


def test_blend_adds_the_weighted_log_recent_count_to_the_scores(world, retrieval, ranker_dir):
    users, seen = _users_and_seen(world, n=4)
    recent = _recent(world)
    blended = BlendedRecommender(retrieval, ranker_dir, world, AS_OF, depth=30, rerank_weight=0.5, popularity_weight=2)
    for entry, got in zip(blended.components(users, 10, seen), blended(users, 10, seen)):
        # RecentCountRanker's interaction score is the recent count itself
        np.testing.assert_allclose(entry["interaction"], [recent[i] for i in entry["items"]])
        np.testing.assert_allclose(entry["log_pop"], np.log1p([recent[i] for i in entry["items"]]))
        score = entry["logit"] + 0.5 * entry["interaction"] + 2 * entry["log_pop"]
        assert got == [entry["items"][j] for j in np.argsort(-score, kind="stable")[:10]]


def test_tune_blend_chooses_the_best_eval_window_score_and_scores_like_the_protocol(world, model_dirs, ranker_dir):
    validation = world.validation_view()
    tower = os.path.join(model_dirs["good"], "Format-Serving")
    best, scores = tune_blend(validation, [tower], [ranker_dir], popularity_grid=(0.0, 1.0, 100.0), rerank_grid=(0, 1))
    assert len(scores) == 6
    assert scores[f"w={best[0]:g},pop={best[1]:g}"] == max(scores.values())
    eval_set = validation.eval_set()
    as_of = int(np.ceil(eval_set.cutoff))
    plain = TwoTowerRecommender(tower, validation, as_of)
    assert scores["w=0,pop=0"] == pytest.approx(evaluate(plain, eval_set, (10, 100)).metric("ndcg", 10))
    _, no_ranker = tune_blend(validation, [tower], [None], popularity_grid=(0.0, 1.0))
    assert set(no_ranker) == {"w=0,pop=0", "w=0,pop=1"}  # no ranker: no re-ranking weight


def test_blend_popular_candidates_follow_the_feature_stores_order_and_scores_are_kept(world, retrieval):
    # recent count, ties by item id; then the items without recent events by all-time count, ties by id
    # (what FeatureStore.popular_items gives for the recent window, then for all time)
    blended = BlendedRecommender(retrieval, None, world, AS_OF, depth=30, popularity_weight=1.0)
    counts = item_popularity_features(world, world.catalog.index, AS_OF)
    recent = dict(zip(world.catalog.index, counts[F.ITEM_RECENT_COUNT]))
    prior = dict(zip(world.catalog.index, counts[F.ITEM_PRIOR_COUNT]))
    with_recent = sorted((i for i in recent if recent[i] > 0), key=lambda i: (-recent[i], str(i)))
    without = sorted((i for i in recent if recent[i] == 0), key=lambda i: (-prior[i], str(i)))
    assert with_recent and without  # the world has both kinds
    expected = with_recent + without
    assert blended.popular(len(expected), set()) == expected
    seen = set(expected[:3])
    assert blended.popular(5, seen) == expected[3:8]
    users, exclude = _users_and_seen(world, n=4)
    lists = blended(users, 10, exclude)
    for user, got, entry in zip(users, lists, blended.components(users, 10, exclude)):
        score = dict(zip(entry["items"], entry["logit"] + entry["log_pop"]))
        assert got == sorted(got, key=lambda i: -score[i])
        # the kept scores are the models' part (here the retrieval logit), the popularity term left out
        logit = dict(zip(entry["items"], entry["logit"]))
        np.testing.assert_allclose(blended.top_scores[user], [logit[i] for i in got], rtol=1e-6)
