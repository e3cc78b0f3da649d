"""The model-quality benchmark's comparisons: list overlap, the best baseline on each metric, the goal lines."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import model_quality as Q  # noqa: E402

from towerflow.components.evaluation.blend import STATE_BLENDED  # noqa: E402


def test_the_state_blends_name_is_the_one_the_blend_module_reports():
    assert Q.STATE_BLENDED == STATE_BLENDED


def test_list_overlap_is_shared_items_of_the_first_k_over_k():
    lists = [["a", "b", "c", "d"], ["a"]]
    others = [["d", "c", "x", "a"], ["b"]]
    np.testing.assert_allclose(Q.list_overlap(lists, others, 2), [0.0, 0.0])
    np.testing.assert_allclose(Q.list_overlap(lists, others, 4), [0.75, 0.0])


def _entry(recall, ndcg):
    n = len(recall)
    values = {"recall@100": np.array(recall, float), "ndcg@10": np.array(ndcg, float), "hit_rate@10": np.ones(n)}
    masks = {"all": np.ones(n, bool), "warm": np.arange(n) < 2, "cold": np.arange(n) >= 2}
    return {"values": values, "masks": masks}


def test_models_are_compared_with_the_best_baseline_on_each_metric():
    entries = {
        "recent": _entry([0.2, 0.2, 0.2, 0.2], [0.5, 0.5, 0.5, 0.5]),  # best on NDCG@10
        "newcomer": _entry([0.4, 0.4, 0.4, 0.4], [0.4, 0.4, 0.4, 0.4]),  # best on Recall@100
        "model": _entry([0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]),
    }
    best = Q.best_by_metric(entries, ["recent", "newcomer"])
    assert best["recall@100"] == "newcomer" and best["ndcg@10"] == "recent"
    out = Q._compare_by_metric(entries, best, ["model"], resamples=50)["model"]
    assert out["all:recall@100"]["lift"] == 0.25  # 0.5 vs newcomer's 0.4, not +150% vs recent's 0.2
    assert out["all:ndcg@10"]["lift"] == 0.0
    pooled = {"best": "recent", "best_by_metric": best, "by_metric": {"model": out}}
    lines = Q.goal_check(pooled, "model", by_metric=True)
    assert lines[1].startswith("model all recall@100: +25.0%") and "vs newcomer" in lines[1]
    assert "vs recent" in lines[0] and "NOT met" in lines[0]  # +0% NDCG@10 misses the +10% goal


def test_the_state_blend_is_compared_head_to_head_with_the_previous_blend():
    entries = {
        Q.BLENDED: _entry([0.4, 0.4, 0.2, 0.2], [0.5] * 4),
        Q.STATE_BLENDED: _entry([0.5, 0.5, 0.2, 0.2], [0.5] * 4),
    }
    out = Q.head_to_head({"entries": entries}, resamples=50)
    assert out["warm:recall@100"]["lift"] == 0.25  # 0.5 vs 0.4
    assert out["cold:recall@100"]["lift"] == 0.0
    assert out["all:recall@100"]["difference"] == pytest.approx(0.05)
    assert Q.head_to_head({"entries": {Q.BLENDED: entries[Q.BLENDED]}}, resamples=50) == {}
    table = Q.head_to_head_table({"head_to_head": out})
    assert "| warm | " in table and "+25.0%" in table
