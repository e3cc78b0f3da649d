"""Differences with CIs and p-values, and PSI, against hand-computed or library values."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from towerflow.serving.experiments.stats import ScoreReference, bootstrap_difference, model_scores, two_proportion_ztest


def test_two_proportion_ztest_matches_the_textbook_formula():
    control = np.array([1] * 60 + [0] * 40)  # 0.60
    treatment = np.array([1] * 75 + [0] * 25)  # 0.75
    result = two_proportion_ztest("hit_rate@10", control, treatment)
    pooled = 135 / 200
    z = 0.15 / math.sqrt(pooled * (1 - pooled) * (2 / 100))
    assert result.difference == pytest.approx(0.15)
    assert result.p_value == pytest.approx(2 * scipy_stats.norm.sf(z))
    se = math.sqrt(0.6 * 0.4 / 100 + 0.75 * 0.25 / 100)
    assert result.ci_low == pytest.approx(0.15 - 1.959964 * se, abs=1e-5)
    assert result.significant and result.relative_lift == pytest.approx(0.25)


def test_bootstrap_finds_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(1)
    a = rng.beta(2, 5, size=400)
    b = rng.beta(2, 5, size=400) + 0.08
    real = bootstrap_difference("ndcg@10", a, b, seed=3)
    assert real.p_value < 0.01 and real.ci_low > 0
    assert real.ci_low < real.difference < real.ci_high
    null = bootstrap_difference("ndcg@10", a, rng.beta(2, 5, size=400), seed=3)
    assert null.p_value > 0.05 and null.ci_low < 0 < null.ci_high
    # close to Welch's t-test on this much data
    welch = scipy_stats.ttest_ind(a, b, equal_var=False).pvalue
    assert real.p_value == pytest.approx(max(welch, 1 / 10_001), abs=0.01)


def test_psi_is_zero_on_the_reference_and_large_on_a_shift():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=5000)
    reference = ScoreReference.from_scores(scores, bins=10)
    assert len(reference.fractions) == 10 and all(f == pytest.approx(0.1) for f in reference.fractions)
    assert reference.psi(scores) == pytest.approx(0.0, abs=1e-9)
    assert reference.psi(rng.normal(size=5000)) < 0.02
    assert reference.psi(rng.normal(1.0, 1.0, size=5000)) > 0.25
    assert ScoreReference.from_dict(reference.to_dict()) == reference


def test_bad_reference_is_refused():
    with pytest.raises(ValueError, match="sum to 1"):
        ScoreReference((0.0,), (0.2, 0.2))
    with pytest.raises(ValueError, match="at least 10"):
        ScoreReference.from_scores([1.0, 2.0])


def test_model_scores_are_the_final_stage_scores_of_the_models_own_picks():
    items = [
        {"item_id": "a", "score": 5.3, "stage_scores": {"retrieval": 4.0, "ranking": 2.0, "final": 4.5}},
        {"item_id": "b", "score": 4.9, "stage_scores": {"retrieval": 3.0, "final": 3.2}, "explored": True},
        {"item_id": "c", "score": 1.0},  # a fallback's item: no model score
        *({"item_id": str(i), "score": 0.0, "stage_scores": {"final": float(i)}} for i in range(20)),
    ]
    assert model_scores(items) == [4.5] + [float(i) for i in range(7)]  # re-ranking's +0.8 is not in it
    assert model_scores(items, k=1) == [4.5]
    assert model_scores([]) == []
    # the popularity term of two_tower+dcn+pop is data, not model: left out
    blended = {"item_id": "d", "stage_scores": {"retrieval": 2.0, "popularity": 3.0, "ranking": 1.0, "final": 5.25}}
    assert model_scores([blended]) == [2.25]
