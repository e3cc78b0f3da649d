"""Paired bootstrap intervals and permutation p-values on cases with a known answer."""

import math

import numpy as np
import pytest

from towerflow.components.evaluation.statistics import format_comparison, paired_comparison, significantly_worse


def test_constant_difference_has_a_zero_width_interval():
    base = np.linspace(0.1, 0.5, 50)
    c = paired_comparison(base + 0.1, base)
    assert c["difference"] == pytest.approx(0.1)
    assert c["ci_low"] == pytest.approx(0.1) and c["ci_high"] == pytest.approx(0.1)
    assert c["lift"] == pytest.approx(0.1 / 0.3)
    # every user better: only the identity flip and its mirror reach |mean difference| 0.1, so p is tiny
    assert c["p_value"] < 0.01


def test_interval_matches_the_normal_theory_answer_for_a_large_sample():
    rng = np.random.default_rng(1)
    base = rng.random(2000)
    diff = rng.normal(0.05, 0.3, 2000)
    c = paired_comparison(base + diff, base, n_resamples=4000)
    half_width = 1.96 * diff.std(ddof=1) / math.sqrt(len(diff))  # CLT: the bootstrap must agree
    assert c["ci_low"] == pytest.approx(diff.mean() - half_width, abs=0.002)
    assert c["ci_high"] == pytest.approx(diff.mean() + half_width, abs=0.002)
    assert c["p_value"] < 0.001
    assert not significantly_worse(c)
    assert significantly_worse(paired_comparison(base, base + diff, n_resamples=4000))


def test_no_difference_is_not_significant():
    rng = np.random.default_rng(2)
    a = rng.random(300)
    b = a.copy()
    b[:150], b[150:] = a[:150] + 0.1, a[150:] - 0.1  # equal and opposite: mean difference exactly 0
    c = paired_comparison(a, b)
    assert c["difference"] == pytest.approx(0.0, abs=1e-12)
    assert c["ci_low"] < 0 < c["ci_high"]
    assert c["p_value"] > 0.9
    same = paired_comparison(a, a)
    assert same["p_value"] == 1.0 and same["ci_low"] == same["ci_high"] == 0.0
    assert not significantly_worse(same)


def test_nan_users_are_dropped_and_bad_input_refused():
    c = paired_comparison([1.0, np.nan, 0.0, 1.0], [0.0, 1.0, np.nan, 0.0])
    assert c["n"] == 2 and c["difference"] == 1.0
    assert math.isnan(paired_comparison([1.0], [0.0])["p_value"])
    with pytest.raises(ValueError, match="same length"):
        paired_comparison([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_comparison([1.0, 2.0], [1.0, 2.0], confidence=1.5)
    assert "p=" in format_comparison(paired_comparison(np.arange(10.0), np.arange(10.0) / 2))
