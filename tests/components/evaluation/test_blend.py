"""The state-aware blend: newcomer counts, the per-state weights, the fast metrics and the eval-window choice."""

import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from index_fakes import _raw_specs

from towerflow.components.evaluation.blend import (
    BlendWeights,
    StateBlend,
    StateBlendedRecommender,
    _Table,
    is_cold,
    newcomer_counts,
    newcomer_order,
    per_user_metrics,
    rank_columns,
    tune_state_blend,
    tune_state_blend_windows,
)
from towerflow.components.evaluation.offline import BlendedRecommender, TwoTowerRecommender
from towerflow.components.evaluation.protocol import evaluate
from towerflow.models import features as F
from towerflow.models.run_fns import RANKER_FEATURES

AS_OF = 10_000
DAY = F.SECONDS_PER_DAY
ZERO = BlendWeights(0.0, 0.0, 0.0)


# --------------------------------------------------------------------------- counts and states


def test_newcomer_counts_count_recent_interactions_made_within_the_users_first_n():
    t = 100 * DAY
    frame = pd.DataFrame(
        [
            # user a: events 1, 2, 3 at days 90, 95, 99 -> with first_n 2 only x (day 90, outside a 7-day window) and y
            ("a", "x", 90 * DAY, "train"),
            ("a", "y", 95 * DAY, "train"),
            ("a", "z", 99 * DAY, "eval"),
            # user b: first event y at day 96, second x at day 97, third z at day 98
            ("b", "y", 96 * DAY, "train"),
            ("b", "x", 97 * DAY, "train"),
            ("b", "z", 98 * DAY, "train"),
            # never counted: a test row and a row at the cut-off
            ("c", "z", 94 * DAY, "test"),
            ("c", "x", t, "eval"),
        ],
        columns=[F.USER_ID, F.ITEM_ID, F.TIMESTAMP, "split"],
    )
    items = ["x", "y", "z", "w"]
    # first_n 2, window 7 days ([93, 100)): a's y (2nd); b's y (1st), x (2nd) -> x 1, y 2, z 0
    assert newcomer_counts(frame, items, t, 7, 2).tolist() == [1, 2, 0, 0]
    # first_n 3: also a's z and b's z
    assert newcomer_counts(frame, items, t, 7, 3).tolist() == [1, 2, 2, 0]
    # first_n 1, window 30 days: a's x and b's y
    assert newcomer_counts(frame, items, t, 30, 1).tolist() == [1, 1, 0, 0]


def test_newcomer_order_drops_items_without_newcomers_and_breaks_ties_by_item_id():
    assert newcomer_order(["c", "a", "b", "d"], np.array([2, 2, 5, 0])) == ["b", "a", "c"]


def test_cold_is_fewer_than_min_events():
    assert is_cold(np.array([0, 4, 5, 7])).tolist() == [True, True, False, False]
    assert is_cold(np.array([0, 1, 2]), min_events=1).tolist() == [True, False, False]


# --------------------------------------------------------------------------- scoring a candidate table

OPTION = (14.0, 10)
OTHER = (30.0, 5)


def _table() -> _Table:
    """Two users over 4 candidate columns (user 0 cold with 1 event, user 1 warm with 6); column 3 of user 0
    is only in OTHER's newcomer list, column 3 of user 1 is padding."""
    return _Table(
        items=[["a", "b", "c", "d"], ["a", "b", "c"]],
        logit=np.array([[3.0, 2.0, 1.0, 9.0], [1.0, 2.0, 3.0, 0.0]]),
        interaction=np.array([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]),
        log_pop=np.array([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]),
        base=np.array([[True, True, False, False], [True, True, False, False]]),
        log_newcomer={
            OPTION: np.array([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0]]),
            OTHER: np.zeros((2, 4)),
        },
        newcomer={
            OPTION: np.array([[False, False, True, False], [False, False, True, False]]),
            OTHER: np.array([[False, False, False, True], [False, False, False, False]]),
        },
        prior_count=np.array([1, 6]),
    )


def test_each_state_is_scored_with_its_own_weights_over_its_blends_candidates():
    table = _table()
    # cold: score = logit + 2 x log_pop + 4 x newcomer -> a 3, b 4, c 5 (d is not this option's): c, b, a
    # warm: score = logit + 3 x interaction             -> a 4, b 2, c 3: a, c, b
    blend = StateBlend(*OPTION, cold=BlendWeights(5.0, 2.0, 4.0), warm=BlendWeights(3.0, 0.0, 0.0))
    columns, valid = rank_columns(table, blend, 4)
    assert [cols[ok].tolist() for cols, ok in zip(columns, valid)] == [[2, 1, 0], [0, 2, 1]]
    # the other option brings d (logit 9) in and leaves c out
    other = StateBlend(*OTHER, cold=ZERO, warm=ZERO)
    columns, valid = rank_columns(table, other, 2)
    assert [cols[ok].tolist() for cols, ok in zip(columns, valid)] == [[3, 0], [1, 0]]


def test_per_user_metrics_are_the_protocols_ndcg_and_recall():
    table = _table()
    blend = StateBlend(*OPTION, cold=BlendWeights(0.0, 2.0, 4.0), warm=BlendWeights(3.0, 0.0, 0.0))
    # lists: user 0 c, b, a; user 1 a, c, b. Relevant: user 0 {b, z} (z never a candidate), user 1 {a, b}
    relevant = [frozenset({"b", "z"}), frozenset({"a", "b"})]
    values = per_user_metrics(table, blend, table.relevance(relevant), np.array([2, 2]), ks=(2, 3))
    ideal = 1 + 1 / np.log2(3)
    # user 0: b at rank 2 -> dcg 1/log2(3); recall@3 = 1/2.  user 1: a at rank 1 -> dcg 1; b at rank 3: recall 1
    np.testing.assert_allclose(values["ndcg@2"], [1 / np.log2(3) / ideal, 1 / ideal])
    np.testing.assert_allclose(values["recall@3"], [0.5, 1.0])


# --------------------------------------------------------------------------- on the toy world


class RecentCountRanker(tf.Module):
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


# the toy world's test users have 3 events (2 train, 1 eval) or none; its whole history lies inside 14 days
FIRST = (14.0, 1)


def test_without_weights_the_blend_is_retrieval(world, retrieval, ranker_dir):
    users, seen = _users_and_seen(world)
    blend = StateBlend(*FIRST, cold=ZERO, warm=ZERO, min_events=3)
    recommender = StateBlendedRecommender(retrieval, ranker_dir, world, AS_OF, blend, depth=30)
    assert recommender(users, 10, seen) == retrieval(users, 10, seen)


def test_a_dominant_cold_newcomer_weight_serves_cold_users_the_newcomer_list_and_leaves_warm_users_alone(
    world, retrieval, ranker_dir
):
    users, seen = _users_and_seen(world)
    counts = dict(zip(world.catalog.index, newcomer_counts(world.frame, world.catalog.index, AS_OF, *FIRST)))
    blend = StateBlend(*FIRST, cold=BlendWeights(0.0, 0.0, 1e4), warm=ZERO, min_events=3)
    recommender = StateBlendedRecommender(retrieval, ranker_dir, world, AS_OF, blend, depth=30)
    lists = recommender(users, 10, seen)
    plain = retrieval(users, 10, seen)
    cold_users = 0
    for user, got, exclude, expected in zip(users, lists, seen, plain):
        if int(user[1:]) % 4 == 3:  # no history: cold
            cold_users += 1
            assert not exclude
            best = sorted((counts[i] for i in world.catalog.index if counts[i] > 0), reverse=True)[:10]
            assert [counts[i] for i in got] == best
        else:  # 3 events: warm at min_events 3
            assert got == expected
    assert cold_users == 3


def test_fast_metrics_equal_the_protocol_and_tuning_chooses_the_best_per_state(world, model_dirs, ranker_dir):
    # tune_state_blend scores the view's "test" split (in use: the eval window of `validation_view`); the
    # toy world's test users have 3 events (warm at min_events 3) or none (cold), so both states are there
    tower = os.path.join(model_dirs["good"], "Format-Serving")
    eval_set = world.eval_set()
    as_of = int(np.ceil(eval_set.cutoff))
    grid = (0.0, 1.0)
    blend, report = tune_state_blend(
        world,
        [tower],
        [ranker_dir],
        depth=30,
        windows=(14.0,),
        first_ns=(1, 5),
        rerank_grid=grid,
        popularity_grid=grid,
        newcomer_grid=grid,
        min_events=3,
    )
    assert set(report) == {"window=14,first_n=1", "window=14,first_n=5"}
    chosen = report[f"window={blend.window_days:g},first_n={blend.first_n}"]
    assert chosen["all"]["objective"] == max(r["all"]["objective"] for r in report.values())
    for state in ("cold", "warm"):
        weights = BlendWeights(chosen[state]["rerank"], chosen[state]["popularity"], chosen[state]["newcomer"])
        assert weights == getattr(blend, state)
    assert (chosen["cold"]["users"], chosen["warm"]["users"]) == (eval_set.n_cold, eval_set.n_warm) != (0, 0)
    retrieval = TwoTowerRecommender(tower, world, as_of)
    recommender = StateBlendedRecommender(retrieval, ranker_dir, world, as_of, blend, depth=30)
    got = evaluate(recommender, eval_set, (10, 100))
    assert chosen["all"]["ndcg@10"] == pytest.approx(got.metric("ndcg", 10))
    assert chosen["all"]["recall@100"] == pytest.approx(got.metric("recall", 100))
    assert chosen["all"]["objective"] == pytest.approx(got.metric("ndcg", 10) + got.metric("recall", 100))

    # through the protocol: no other weights of the grid do better for either state's users
    def objective(recommend, state):
        r = evaluate(recommend, eval_set, (10, 100))
        return r.metric("ndcg", 10, state) + r.metric("recall", 100, state)

    best = {state: objective(recommender, state) for state in ("cold", "warm")}
    for w in grid:
        for beta in grid:
            for gamma in grid:
                other = BlendWeights(w, beta, gamma)
                for state in ("cold", "warm"):
                    weights = {"cold": blend.cold, "warm": blend.warm, state: other}
                    alternative = StateBlend(blend.window_days, blend.first_n, min_events=3, **weights)
                    assert objective(recommender.with_blend(alternative), state) <= best[state] + 1e-12


def test_base_lists_are_two_tower_dcn_pops_lists(world, retrieval, ranker_dir):
    users, seen = _users_and_seen(world)
    blend = StateBlend(*FIRST, cold=BlendWeights(0.0, 0.0, 1e4), warm=BlendWeights(0.0, 0.0, 1e4), min_events=3)
    recommender = StateBlendedRecommender(retrieval, ranker_dir, world, AS_OF, blend, depth=30)
    for w, beta in ((0.5, 2.0), (0.0, 1e3)):
        old = BlendedRecommender(retrieval, ranker_dir, world, AS_OF, depth=30, rerank_weight=w, popularity_weight=beta)
        assert recommender.base_lists(users, 10, seen, w, beta) == old(users, 10, seen)


def test_tuning_over_several_windows_pools_their_users(world, model_dirs, ranker_dir):
    tower = os.path.join(model_dirs["good"], "Format-Serving")
    grids = dict(
        depth=30,
        windows=(14.0,),
        first_ns=(1, 5),
        rerank_grid=(0.0, 1.0),
        popularity_grid=(0.0, 1.0),
        newcomer_grid=(0.0, 1.0),
        min_events=3,
    )
    one, report = tune_state_blend(world, [tower], [ranker_dir], **grids)
    # the same window twice: every user counted twice, the same means, so the same choice
    two, pooled = tune_state_blend_windows([(world, [tower], [ranker_dir])] * 2, **grids)
    assert two == one
    for key, entry in report.items():
        assert pooled[key]["cold"]["users"] == 2 * entry["cold"]["users"]
        assert pooled[key]["all"]["objective"] == pytest.approx(entry["all"]["objective"])


def test_the_full_pipeline_factory_serves_the_default_blend(world, retrieval, ranker_dir):
    from towerflow.components.evaluation.blend import DEFAULT_STATE_BLEND, full_pipeline
    from towerflow.components.evaluation.model_evaluator import load_factory

    factory = load_factory("towerflow.components.evaluation.blend.full_pipeline")
    assert factory is full_pipeline
    users, seen = _users_and_seen(world)
    got = factory(world, retrieval, ranker_dir, AS_OF)(users, 10, seen)
    expected = StateBlendedRecommender(retrieval, ranker_dir, world, AS_OF, DEFAULT_STATE_BLEND)(users, 10, seen)
    assert got == expected
    assert all(not set(g) & s for g, s in zip(got, seen))
