"""The evaluation protocol on tiny hand-made interaction logs."""

import math

import numpy as np
import pandas as pd
import pytest

from towerflow.components.evaluation.protocol import (
    EvalSet,
    ExcludedItemError,
    PopularityRecommender,
    assign_global_time_split,
    evaluate,
    global_time_cutoffs,
)


def test_global_time_cutoffs_linear_interpolation():
    # timestamps 1..10: q0.8 at position 0.8*9 = 7.2 -> 8 + 0.2*(9-8) = 8.2; q0.9 at 8.1 -> 9.1
    assert global_time_cutoffs(np.arange(1, 11)) == pytest.approx((8.2, 9.1))
    # 0..10 (11 ints): positions 8.0 and 9.0 -> integral values come back as ints
    cut = global_time_cutoffs(list(range(11)))
    assert cut == (8, 9) and all(isinstance(c, int) for c in cut)
    with pytest.raises(ValueError):
        global_time_cutoffs([1, 2, 3], fractions=(0.9, 0.8))


def test_split_boundaries_go_to_the_later_split():
    df = pd.DataFrame({"timestamp": [4.9, 5.0, 7.99, 8.0, 9.0]})
    labels = assign_global_time_split(df, (5.0, 8.0))
    # t < 5 train; 5 <= t < 8 eval; t >= 8 test: 5.0 -> eval and 8.0 -> test
    assert labels.tolist() == ["train", "eval", "eval", "test", "test"]
    assert labels.index.equals(df.index)


def _frame():
    rows = [
        # user, item, timestamp, split
        ("u1", "a", 1, "train"),
        ("u1", "b", 2, "train"),
        ("u2", "a", 3, "train"),
        ("u3", "a", 4, "eval"),
        ("u3", "c", 5, "eval"),
        ("u4", "c", 6, "eval"),
        ("u1", "c", 10, "test"),
        ("u1", "d", 11, "test"),
        ("u1", "a", 12, "test"),  # re-interaction with a seen item: not relevant (cannot be recommended)
        ("u5", "b", 13, "test"),  # cold user: no train/eval history
        ("u2", "a", 14, "test"),  # only a re-interaction -> relevant set empty -> u2 dropped
        ("u6", "e", 15, "train"),
    ]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "split"])


def test_eval_set_relevant_seen_warm_cold():
    es = EvalSet.from_frame(_frame())
    assert es.user_ids == ("u1", "u5")  # u3, u4, u6 have no test rows; u2 dropped
    assert es.n_dropped_users == 1
    assert es.relevant == (frozenset({"c", "d"}), frozenset({"b"}))
    assert es.seen == (frozenset({"a", "b"}), frozenset())
    assert es.is_warm.tolist() == [True, False]
    assert (es.n_warm, es.n_cold) == (1, 1)
    assert es.cutoff == 10.0  # earliest test timestamp
    assert es.catalog == ("a", "b", "c", "d", "e")
    assert es.item_popularity == {"a": 3, "b": 1, "c": 2, "e": 1}  # train+eval counts
    assert EvalSet.from_frame(_frame(), cutoff=9.5).cutoff == 9.5


def test_eval_set_ids_are_strings_and_catalog_must_cover_relevant():
    df = _frame().assign(user_id=lambda d: d.user_id.str[1:].astype(int))
    assert EvalSet.from_frame(df).user_ids == ("1", "5")
    with pytest.raises(ValueError, match="catalog"):
        EvalSet.from_frame(_frame(), catalog=["a", "b"])


def test_popularity_recommender_ranking_ties_and_exclusion():
    history = _frame().query("split != 'test'")
    # counts a:3, c:2, b:1, e:1 -> b/e tie broken by descending id: e before b
    pop = PopularityRecommender(history)
    assert pop.ranking == ["a", "c", "e", "b"]
    assert PopularityRecommender(history, tie_break="item_id_asc").ranking == ["a", "c", "b", "e"]
    assert PopularityRecommender(history, catalog=list("abcdef")).ranking == ["a", "c", "e", "b", "f", "d"]
    assert pop(["x", "y"], 2, [set(), {"a", "e"}]) == [["a", "c"], ["c", "b"]]
    with pytest.raises(ValueError, match="test"):
        PopularityRecommender(_frame())


def test_evaluate_by_hand():
    df = _frame()
    es = EvalSet.from_frame(df)
    pop = PopularityRecommender(df[df.split != "test"], catalog=es.catalog)  # a, c, e, b, d
    report = evaluate(pop, es, ks=(1, 2), slices={"u1": "F"})
    # u1 (warm): seen {a, b}, relevant {c, d}; list [c, e] -> @1 hit c: recall 1/2, ndcg 1/1
    #   @2: recall 1/2, ndcg = 1 / (1 + 1/log2 3) = 0.61315; AP@2 = (1/1) / min(2, 2) = 0.5
    # u5 (cold): seen {}, relevant {b}; list [a, c] -> all zeros
    ndcg2 = 1 / (1 + 1 / math.log2(3))
    assert report.n_users == {"all": 2, "warm": 1, "cold": 1, "F": 1}
    assert report.metric("recall", 1, "warm") == pytest.approx(0.5)
    assert report.metric("ndcg", 1, "warm") == pytest.approx(1.0)
    assert report.metric("ndcg", 2, "warm") == pytest.approx(ndcg2)
    assert report.metric("map", 2, "warm") == pytest.approx(0.5)
    assert report.metric("recall", 2, "cold") == 0.0
    assert report.metric("recall", 2) == pytest.approx(0.25)
    assert report.metric("hit_rate", 2) == pytest.approx(0.5)
    assert report.metric("ndcg", 2) == pytest.approx(ndcg2 / 2)
    assert report.metrics["F"] == report.metrics["warm"]
    # lists [c, e] and [a, c]: distinct {a, c, e} of 5 items; exposure [0, 0, 1, 1, 2] ->
    # gini = (-4*0 - 2*0 + 0*1 + 2*1 + 4*2) / (5 * 4) = 0.5; ARP = ((2+1)/2 + (3+2)/2) / 2 = 2.0
    assert report.beyond_accuracy == pytest.approx({"coverage@2": 0.6, "gini@2": 0.5, "avg_popularity@2": 2.0})
    genres = {"a": {"x"}, "c": {"x", "y"}, "e": {"z"}}
    # [c, e]: 1 - 0/3 = 1; [a, c]: 1 - 1/2 = 0.5 -> 0.75
    assert evaluate(pop, es, ks=(2,), item_genres=genres).beyond_accuracy["diversity@2"] == pytest.approx(0.75)
    table = report.format_table()
    assert "recall@2" in table and "warm" in table and "coverage@2" in table
    d = report.to_dict()
    assert d["metrics"]["cold"]["recall@2"] == 0.0 and d["ks"] == [1, 2]


def test_empty_slice_reports_nan_and_to_dict_none():
    df = _frame().query("user_id != 'u5'")
    report = evaluate(PopularityRecommender(df[df.split != "test"]), EvalSet.from_frame(df), ks=(2,))
    assert report.n_users["cold"] == 0
    assert math.isnan(report.metric("recall", 2, "cold"))
    assert report.to_dict()["metrics"]["cold"]["recall@2"] is None


def test_leaking_recommender_raises():
    es = EvalSet.from_frame(_frame())

    def leaky(user_ids, k, exclude):
        return [["a", "c"] for _ in user_ids]  # "a" is in u1's exclusions

    with pytest.raises(ExcludedItemError, match="'a'.*'u1'"):
        evaluate(leaky, es, ks=(2,))


def test_contract_violations_raise():
    es = EvalSet.from_frame(_frame())
    with pytest.raises(ValueError, match="> k=2"):
        evaluate(lambda u, k, ex: [["c", "d", "e"]] * len(u), es, ks=(2,))
    with pytest.raises(ValueError, match="catalog"):
        evaluate(lambda u, k, ex: [["zzz"]] * len(u), es, ks=(2,))
    with pytest.raises(ValueError, match="duplicate"):
        evaluate(lambda u, k, ex: [["c", "c"]] * len(u), es, ks=(2,))
    with pytest.raises(ValueError, match="lists for"):
        evaluate(lambda u, k, ex: [["c"]], es, ks=(2,))


def test_batched_recommend_calls_match_single_call():
    df = _frame()
    es = EvalSet.from_frame(df)
    pop = PopularityRecommender(df[df.split != "test"])
    assert evaluate(pop, es, batch_size=1).to_dict() == evaluate(pop, es).to_dict()
