"""Hand-computed checks of the ranking and beyond-accuracy metrics."""

import math
import random

import numpy as np
import pytest

from towerflow.components.evaluation import metrics as M

REC = ["a", "b", "c", "d", "e"]
REL = {"b", "e", "x"}  # "x" is relevant but never recommended
L2 = 1.0 / math.log2(3)  # discount at rank 2 = 0.63093
L3 = 1.0 / math.log2(4)  # rank 3 = 0.5
L5 = 1.0 / math.log2(6)  # rank 5 = 0.38685
IDCG3 = 1.0 + L2 + L3  # 2.13093, ideal for 3 relevant items


def test_recall_and_hit_rate():
    assert M.recall_at_k(REC, REL, 1) == 0.0  # "a" misses
    assert M.recall_at_k(REC, REL, 3) == pytest.approx(1 / 3)  # {b}
    assert M.recall_at_k(REC, REL, 5) == pytest.approx(2 / 3)  # {b, e}
    assert M.hit_rate_at_k(REC, REL, 1) == 0.0
    assert M.hit_rate_at_k(REC, REL, 2) == 1.0


def test_ndcg():
    # @3: DCG = 1/log2(3) (hit at rank 2); IDCG over min(3, 3) = 3 ranks
    assert M.ndcg_at_k(REC, REL, 3) == pytest.approx(L2 / IDCG3)  # 0.29608
    # @5: DCG = 1/log2(3) + 1/log2(6) = 1.01778
    assert M.ndcg_at_k(REC, REL, 5) == pytest.approx((L2 + L5) / IDCG3)  # 0.47762
    # @2 : IDCG over min(3, 2) = 2 ranks = 1 + 1/log2(3)
    assert M.ndcg_at_k(REC, REL, 2) == pytest.approx(L2 / (1 + L2))
    assert M.ndcg_at_k(["b", "e"], {"b", "e"}, 2) == pytest.approx(1.0)


def test_map():
    # hits at rank 2 (P@2 = 1/2) and rank 5 (P@5 = 2/5); normaliser min(|rel|=3, K)
    assert M.map_at_k(REC, REL, 5) == pytest.approx((1 / 2 + 2 / 5) / 3)  # 0.3
    assert M.map_at_k(REC, REL, 3) == pytest.approx((1 / 2) / 3)  # 0.16667
    # K=1 and one hit at rank 1 with 3 relevant: normaliser min(3, 1) = 1
    assert M.map_at_k(["b"], REL, 1) == pytest.approx(1.0)


def test_k_larger_than_list_counts_missing_positions_as_misses():
    assert M.recall_at_k(REC, REL, 10) == pytest.approx(2 / 3)
    assert M.ndcg_at_k(REC, REL, 10) == pytest.approx((L2 + L5) / IDCG3)  # IDCG still over 3 ranks
    assert M.map_at_k(REC, REL, 10) == pytest.approx(0.3)
    assert M.ndcg_at_k(["a"], {"a"}, 10) == pytest.approx(1.0)
    assert M.map_at_k(["a"], {"a"}, 10) == pytest.approx(1.0)
    # a short list is not renormalised: 1 hit of 2 relevant in a 1-item list at K=10
    assert M.ndcg_at_k(["a"], {"a", "b"}, 10) == pytest.approx(1 / (1 + L2))


def test_order_among_irrelevant_items_does_not_matter_but_rank_of_hits_does():
    shuffled_misses = ["d", "b", "a", "c", "e"]  # irrelevant a, c, d permuted; b and e keep ranks 2 and 5
    for fn in (M.recall_at_k, M.hit_rate_at_k, M.ndcg_at_k, M.map_at_k):
        assert fn(shuffled_misses, REL, 5) == pytest.approx(fn(REC, REL, 5))
    hit_first = ["b", "a", "c", "d", "e"]
    assert M.recall_at_k(hit_first, REL, 5) == M.recall_at_k(REC, REL, 5)
    # DCG = 1 + 1/log2(6) > 1/log2(3) + 1/log2(6)
    assert M.ndcg_at_k(hit_first, REL, 5) == pytest.approx((1 + L5) / IDCG3)
    # AP = (1/1 + 2/5) / 3
    assert M.map_at_k(hit_first, REL, 5) == pytest.approx(1.4 / 3)


def test_empty_relevant_set_is_nan_and_excluded_from_means():
    for fn in (M.recall_at_k, M.hit_rate_at_k, M.ndcg_at_k, M.map_at_k):
        assert math.isnan(fn(REC, set(), 5))
    per_user = M.ranking_metrics_per_user([REC, REC], [REL, set()], [5])
    assert per_user["recall@5"][0] == pytest.approx(2 / 3)
    assert math.isnan(per_user["recall@5"][1])
    means = M.mean_ranking_metrics([REC, REC], [REL, set()], [5])
    assert means["n_users"] == 1
    assert means["recall@5"] == pytest.approx(2 / 3)  # not (2/3 + 0) / 2
    assert M.mean_recall_at_k([REC, ["z"]], [REL, {"z"}], 5) == pytest.approx((2 / 3 + 1) / 2)
    assert math.isnan(M.mean_ndcg_at_k([REC], [set()], 5))


def test_duplicates_raise():
    dup = ["a", "b", "a"]
    for fn in (M.recall_at_k, M.hit_rate_at_k, M.ndcg_at_k, M.map_at_k):
        with pytest.raises(ValueError, match="duplicate"):
            fn(dup, {"a"}, 2)  # checked on the whole list, not only the top K
    with pytest.raises(ValueError, match="duplicate"):
        M.ranking_metrics_per_user([["x"], dup], [{"a"}, {"a"}], [2])
    with pytest.raises(ValueError, match="duplicate"):
        M.catalog_coverage([dup], ["a", "b"])
    with pytest.raises(ValueError, match="duplicate"):
        M.intra_list_diversity(dup, {})


def test_invalid_k():
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            M.recall_at_k(REC, REL, k)


def test_batch_matches_per_list_functions():
    rng = random.Random(0)
    items = [f"i{j}" for j in range(40)]
    recs, rels = [], []
    for _ in range(200):
        recs.append(rng.sample(items, rng.randint(0, 25)))
        rels.append(set(rng.sample(items, rng.randint(1, 8))))
    per_user = M.ranking_metrics_per_user(recs, rels, [1, 5, 20, 30])
    fns = {"recall": M.recall_at_k, "hit_rate": M.hit_rate_at_k, "ndcg": M.ndcg_at_k, "map": M.map_at_k}
    for k in (1, 5, 20, 30):
        for name, fn in fns.items():
            expected = [fn(r, s, k) for r, s in zip(recs, rels)]
            np.testing.assert_allclose(per_user[f"{name}@{k}"], expected, rtol=1e-12)


def test_catalog_coverage():
    # distinct {a, b, c} of a catalog of 5
    assert M.catalog_coverage([["a", "b"], ["b", "c"]], list("abcde")) == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="not in the catalog"):
        M.catalog_coverage([["zzz"]], list("abc"))


def test_gini_of_exposure():
    # every catalog item shown once: perfectly even
    assert M.gini_of_exposure([["a"], ["b"], ["c"]], list("abc")) == pytest.approx(0.0)
    assert M.gini_of_exposure([["a", "b", "c"], ["c", "b", "a"]], list("abc")) == pytest.approx(0.0)
    # all exposure on one of 4 items: sorted x = [0, 0, 0, 3], weights 2i-n-1 = [-3, -1, 1, 3]
    # G = 3*3 / (4*3) = 0.75 = (n-1)/n
    assert M.gini_of_exposure([["a"]] * 3, list("abcd")) == pytest.approx(0.75)
    catalog = [f"i{j}" for j in range(100)]
    assert M.gini_of_exposure([["i7"]] * 50, catalog) == pytest.approx(0.99)  # near 1
    # zero-exposure catalog items count: x = [0, 1, 1] -> (-2*0 + 0*1 + 2*1) / (3*2) = 1/3
    assert M.gini_of_exposure([["a"], ["b"]], list("abc")) == pytest.approx(1 / 3)


def test_intra_list_diversity():
    genres = {"a": {"x", "y"}, "b": {"y"}, "c": set()}
    # pairs: a-b 1 - 1/2 = 0.5; a-c 1 - 0/2 = 1; b-c 1 - 0/1 = 1  -> mean 2.5/3
    assert M.intra_list_diversity(["a", "b", "c"], genres) == pytest.approx(2.5 / 3)
    assert M.intra_list_diversity(["c", "zz"], genres) == pytest.approx(0.0)  # two empty sets: J := 1
    assert math.isnan(M.intra_list_diversity(["a"], genres))
    # mean over lists with >= 2 items: (2.5/3 + 0.5) / 2; ["a"] is skipped
    lists = [["a", "b", "c"], ["a", "b"], ["a"]]
    assert M.mean_intra_list_diversity(lists, genres) == pytest.approx((2.5 / 3 + 0.5) / 2)
    # only 2-item lists: the pairwise-gather code path (3 genre sets > list length 2)
    assert M.mean_intra_list_diversity([["a", "b"], ["b", "c"]], genres) == pytest.approx((0.5 + 1.0) / 2)


def test_mean_intra_list_diversity_matches_per_list():
    rng = random.Random(1)
    genre_pool = list("ABCDEFG")
    genres = {f"i{j}": set(rng.sample(genre_pool, rng.randint(0, 3))) for j in range(60)}
    items = list(genres) + ["unknown"]
    for max_len in (4, 30):  # short lists -> gather path, long lists -> count-vector path
        lists = [rng.sample(items, rng.randint(0, max_len)) for _ in range(50)]
        values = [M.intra_list_diversity(lst, genres) for lst in lists]
        expected = np.nanmean([v for v in values if not math.isnan(v)])
        assert M.mean_intra_list_diversity(lists, genres) == pytest.approx(expected)


def test_average_popularity():
    pop = {"a": 10, "b": 2}
    # list means: (10 + 2)/2 = 6 and 0 ("c" unknown -> 0); the empty list is skipped -> (6 + 0)/2
    assert M.average_popularity([["a", "b"], ["c"], []], pop) == pytest.approx(3.0)
    assert math.isnan(M.average_popularity([[]], pop))


def test_vectorised_scale():
    import time

    rng = np.random.default_rng(0)
    n_users, n_items, k = 20_000, 5_000, 100
    items = np.array([f"item{j}" for j in range(n_items)], dtype=object)
    recs = [list(items[rng.choice(n_items, k, replace=False)]) for _ in range(n_users)]
    rels = [set(items[rng.choice(n_items, 5, replace=False)]) for _ in range(n_users)]
    start = time.perf_counter()
    M.mean_ranking_metrics(recs, rels, [10, 50, 100])
    M.gini_of_exposure(recs, items)
    assert time.perf_counter() - start < 20  # ~1 s here; minutes would mean a Python loop crept in
