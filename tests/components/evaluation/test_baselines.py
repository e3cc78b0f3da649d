"""Each baseline on a hand-made dataset with hand-computed top-K, and the eval-window settings rule."""

import numpy as np
import pandas as pd
import pytest

from towerflow.components.evaluation import baselines as B
from towerflow.models import features as F

DAY = B.SECONDS_PER_DAY
CATALOG = ("a", "b", "c", "d", "e")

# u1 and u2 are women aged 25-34, u3 a man aged 35-44; nobody has touched "e".
TRAIN = [("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 3), ("u2", "c", 9), ("u3", "b", 8), ("u3", "d", 9)]
USERS = pd.DataFrame(
    {F.USER_AGE: [25, 30, 40, 28, 60], F.USER_GENDER: ["F", "F", "M", "F", "M"]},
    index=pd.Index(["u1", "u2", "u3", "u4", "u5"], name=F.USER_ID),
)


def _fit(rows=TRAIN, as_of_day=10) -> B.FitInput:
    frame = pd.DataFrame([(u, i, d * DAY) for u, i, d in rows], columns=[F.USER_ID, F.ITEM_ID, F.TIMESTAMP])
    return B.FitInput(frame, USERS, CATALOG, as_of_day * DAY)


def test_all_time_popularity_breaks_ties_by_descending_id():
    # counts a 2, b 2, c 1, d 1, e 0
    rec = B.build(B.POPULARITY, _fit(), {})
    assert rec(["u4"], 5, [set()]) == [["b", "a", "d", "c", "e"]]
    assert rec(["u1"], 2, [{"a", "b"}]) == [["d", "c"]]


def test_recent_popularity_counts_the_window_and_ties_by_all_time_order():
    # last 3 days (t >= day 7): b 1, c 1, d 1; ties in all-time order b, a, d, c, e
    rec = B.RecentPopularity(_fit(), window_days=3)
    assert rec(["u4"], 5, [set()]) == [["b", "d", "c", "a", "e"]]
    # a 30-day window sees everything: all-time popularity
    assert B.RecentPopularity(_fit(), 30)(["u4"], 5, [set()]) == [["b", "a", "d", "c", "e"]]


def test_newcomer_popularity_counts_only_each_users_first_interactions_in_the_window():
    # first interactions: u1 a (day 1), u2 a (day 3), u3 b (day 8) -> a 2, b 1; the rest by all-time order
    assert B.NewcomerPopularity(_fit(), 30, first_n=1)(["u4"], 5, [set()]) == [["a", "b", "d", "c", "e"]]
    # a 3-day window (t >= day 7) holds only u3's first, b; then all-time order
    assert B.NewcomerPopularity(_fit(), 3, first_n=1)(["u4"], 5, [set()]) == [["b", "a", "d", "c", "e"]]
    # each user's first two within 3 days: u2 c (its 2nd), u3 b and d -> b, d, c by all-time order, then a, e
    rec = B.build(B.NEWCOMER_POPULARITY, _fit(), {"window_days": 3, "first_n": 2})
    assert rec(["u4"], 5, [set()]) == [["b", "d", "c", "a", "e"]]
    assert rec(["u3"], 2, [{"b", "d"}]) == [["c", "a"]]


def test_segment_popularity_counts_within_age_bucket_and_gender():
    rec = B.SegmentPopularity(_fit())
    # women 25-34 (u1, u2): a 2, b 1, c 1 -> a, then b/c by all-time order (b before c), then d, e
    assert rec(["u4"], 5, [set()]) == [["a", "b", "c", "d", "e"]]
    # men 35-44 (u3): b 1, d 1 -> b, d, then a, c, e in all-time order
    assert rec(["u3"], 3, [set()]) == [["b", "d", "a"]]
    # a segment with no interactions (men 56+) and an unknown user: all-time popularity
    assert rec(["u5", "nobody"], 5, [set(), set()]) == [["b", "a", "d", "c", "e"]] * 2


def test_item_knn_cosine_scores_and_neighbourhood_size():
    fit = _fit()
    fallback = B.RecentPopularity(fit, 3)  # b, d, c, a, e
    # co-occurrence: a-b (u1), a-c (u2), b-d (u3); |a| = |b| = 2, |c| = |d| = 1
    # cosine: sim(a, b) = 1/2, sim(a, c) = sim(b, d) = 1/sqrt(2)
    full = B.ItemKNN(fit, 0, fallback)
    assert full.weights[0, 1] == pytest.approx(0.5) and full.weights[0, 2] == pytest.approx(2**-0.5)
    # u1 (a, b): c = sim(a, c), d = sim(b, d), equal -> fallback order puts d first; e last
    assert full(["u1"], 3, [{"a", "b"}]) == [["d", "c", "e"]]
    # u3 (b, d): a = sim(b, a) = 1/2, then c and e by fallback order
    assert full(["u3"], 3, [{"b", "d"}]) == [["a", "c", "e"]]
    # one neighbour per item: column a keeps only c (1/sqrt(2) > 1/2), so u3 has no scores left
    assert B.ItemKNN(fit, 1, fallback)(["u3"], 3, [{"b", "d"}]) == [["c", "a", "e"]]
    # a cold user gets the fallback (recent popularity)
    assert full(["u4"], 5, [set()]) == [["b", "d", "c", "a", "e"]]


def test_ease_closed_form_weights_and_top_k():
    # X: u1 {a, b}, u2 {c, d}, u3 {a}; lambda 1
    # G + I on {a, b} = [[3, 1], [1, 2]], P = 1/5 [[2, -1], [-1, 3]]: B[a, b] = -P_ab / P_bb = 1/3,
    # B[b, a] = -P_ba / P_aa = 1/2; on {c, d}: [[2, 1], [1, 2]] -> B[c, d] = B[d, c] = 1/2
    fit = _fit(rows=[("u1", "a", 1), ("u1", "b", 2), ("u2", "c", 8), ("u2", "d", 9), ("u3", "a", 9)])
    fallback = B.RecentPopularity(fit, 3)  # d (day 9), a (day 9) and c (day 8) once each -> a, d, c, b, e
    assert fallback(["x"], 5, [set()]) == [["a", "d", "c", "b", "e"]]
    ease = B.Ease(fit, 1.0, fallback)
    expected = np.zeros((5, 5))
    expected[0, 1], expected[1, 0], expected[2, 3], expected[3, 2] = 1 / 3, 1 / 2, 1 / 2, 1 / 2
    np.testing.assert_allclose(ease.weights, expected, atol=1e-12)
    # u3 {a}: b scores 1/3, the rest 0 -> fallback order
    assert ease(["u3"], 4, [{"a"}]) == [["b", "d", "c", "e"]]
    # u2 {c, d}: nothing co-occurs with them outside the pair -> fallback order
    assert ease(["u2"], 3, [{"c", "d"}]) == [["a", "b", "e"]]


def test_fit_input_refuses_interactions_at_or_after_the_cutoff():
    with pytest.raises(ValueError, match="before its cut-off"):
        _fit(as_of_day=9)


def _split_frame() -> pd.DataFrame:
    """Train: everyone likes "a" early; "c" is what people pick lately. Eval and test: "c" and "d"."""
    rows = [(f"t{j}", "a", 1 + j, "train") for j in range(6)]
    rows += [(f"t{j}", "b", 2 + j, "train") for j in range(4)]
    rows += [("t0", "c", 19, "train"), ("t1", "c", 19.5, "train")]
    rows += [("v0", "c", 21, "eval"), ("v1", "c", 22, "eval"), ("v1", "d", 23, "eval")]
    rows += [("w0", "c", 31, "test"), ("w1", "d", 32, "test")]
    frame = pd.DataFrame(rows, columns=[F.USER_ID, F.ITEM_ID, F.TIMESTAMP, "split"])
    frame[F.TIMESTAMP] = (frame[F.TIMESTAMP] * DAY).astype(np.int64)
    return frame


def test_settings_are_chosen_on_the_eval_window_and_refit_on_train_and_eval():
    frame = _split_frame()
    grids = B.BaselineGrids(recent_days=(3, 30), knn_neighbors=(1, 0), ease_lambdas=(1, 100))
    fitted = B.select(frame, USERS, CATALOG, grids=grids)
    assert set(fitted) == set(B.BASELINES)
    recent = fitted[B.RECENT_POPULARITY]
    # on the eval window (train-only fit, cut-off day 21) the 3-day window ranks "c" first: NDCG@10 higher
    assert recent.settings == {"window_days": 3.0}
    assert recent.selection["3"] > recent.selection["30"]
    # refit on train+eval as of the test cut-off (day 31): eval-window "c" x2 and "d" x1 are outside 3 days,
    # so every count is 0 and the order is all-time popularity over train+eval: a 6, b 4, c 4, d 1, e 0
    assert recent.recommend(["new"], 5, [set()]) == [["a", "c", "b", "d", "e"]]
    assert fitted[B.ITEM_KNN].settings["fallback_window_days"] == 3.0
    newcomer = fitted[B.NEWCOMER_POPULARITY]
    assert newcomer.settings["window_days"] == 3.0 and set(newcomer.selection) == {"5", "10", "20", "50"}
    assert set(fitted[B.EASE].selection) == {"1", "100"}
    assert fitted[B.POPULARITY].selection == {} and fitted[B.POPULARITY].describe() == "popularity"


def test_serving_lists_refit_on_everything():
    frame = _split_frame()
    lists = B.serving_lists(B.POPULARITY, {}, frame, USERS, CATALOG, n=3)
    # every split counts now: a 6, c 5 (2 train, 2 eval, 1 test), b 4, d 2
    assert lists["default"] == ["a", "c", "b"]
    assert lists["users"]["w0"] == ["a", "b", "d"]  # w0's own "c" is left out
    assert lists["as_of"] == float(frame[F.TIMESTAMP].max()) + 1


def test_unknown_baseline_and_bad_grids():
    with pytest.raises(ValueError, match="unknown baselines"):
        B.select(_split_frame(), USERS, CATALOG, names=("popularity", "bpr"))
    with pytest.raises(ValueError, match="metric"):
        B.BaselineGrids(metric="ndcg")
    with pytest.raises(ValueError, match="ease_lambdas"):
        B.BaselineGrids(ease_lambdas=(0,))
    with pytest.raises(ValueError, match="newcomer_first"):
        B.BaselineGrids(newcomer_first=(0,))


def test_item_matrix_baselines_are_left_out_of_large_catalogs():
    with pytest.warns(UserWarning, match="item_knn and ease left out"):
        fitted = B.select(_split_frame(), USERS, CATALOG, grids=B.BaselineGrids(max_item_matrix=3))
    assert set(fitted) == {B.POPULARITY, B.RECENT_POPULARITY, B.SEGMENT_POPULARITY, B.NEWCOMER_POPULARITY}
