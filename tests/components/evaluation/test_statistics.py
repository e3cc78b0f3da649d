"""Paired bootstrap intervals and permutation p-values on cases with a known answer."""

import math

import numpy as np
import pytest

from towerflow.components.evaluation.statistics import (
    format_comparison,
    paired_comparison,
    run_level_comparison,
    significantly_worse,
)


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


# --- run_level_comparison: arms trained several times (seeds), users x runs ---------------------------


def _arms(rng, runs=3, users=166, run_sd=0.01, noise_sd=0.05, shift=0.0):
    """Two arms over the same users: a user's level, plus per run a shift of the whole run (seed noise)
    and each run's own noise on each user; `shift` is the real difference of the first arm."""
    level = rng.beta(2, 3, users)

    def arm(offset):
        return level + offset + rng.normal(0, run_sd, (runs, 1)) + rng.normal(0, noise_sd, (runs, users))

    return arm(shift), arm(0.0)


def _holds_zero(c):
    return c["ci_low"] <= 0.0 <= c["ci_high"]


def test_run_level_interval_holds_zero_at_the_nominal_rate_where_the_user_only_one_does_not():
    # Same distribution on both sides, 3 runs per arm (the e2e test's), run-to-run shifts (sd 0.01) larger
    # than what 166 users' noise puts on a mean (0.05 / sqrt(166 x 3) ~ 0.002): the paired interval over
    # seed-averaged users ignores the run shifts and calls the arms different about half the time.
    rng = np.random.default_rng(7)
    datasets = 200
    run_level = user_only = 0
    for i in range(datasets):
        a, b = _arms(rng)
        run_level += _holds_zero(run_level_comparison(a, b, n_resamples=1000, seed=i))
        user_only += _holds_zero(paired_comparison(a.mean(axis=0), b.mean(axis=0), n_resamples=200, seed=i))
    assert 0.90 <= run_level / datasets <= 0.99, run_level / datasets
    assert user_only / datasets < 0.70, user_only / datasets


def test_without_run_shifts_it_is_the_paired_user_bootstrap():
    # No run effect at all, only each run's noise on each user: nothing to add at the run level (the
    # run means vary only as much as the per-user noise says), so the interval is the user-level one.
    rng = np.random.default_rng(8)
    datasets = 200
    covered = 0
    widths = []
    for i in range(datasets):
        a, b = _arms(rng, runs=3, run_sd=0.0, noise_sd=0.1)
        c = run_level_comparison(a, b, n_resamples=1000, seed=i)
        covered += _holds_zero(c)
        widths.append((c["ci_high"] - c["ci_low"]) / (2 * 1.96 * (a.mean(0) - b.mean(0)).std(ddof=1) / math.sqrt(166)))
    assert 0.90 <= covered / datasets <= 0.99
    assert 0.95 < np.median(widths) < 1.10  # the normal-theory width of the user-level mean difference


def test_a_real_shift_larger_than_both_noises_is_found():
    rng = np.random.default_rng(9)
    a, b = _arms(rng, runs=3, run_sd=0.01, noise_sd=0.05, shift=0.08)
    c = run_level_comparison(a, b)
    assert c["ci_low"] > 0.03 and c["p_value"] < 0.01
    assert c["ci_low"] < c["difference"] < c["ci_high"]
    assert c["difference"] == pytest.approx(a.mean() - b.mean())
    worse = run_level_comparison(b, a)
    assert significantly_worse(worse) and worse["ci_high"] < -0.03
    # the run noise is seen: the estimated run component is of the simulated size (sd 0.01)
    assert 0.0 < c["run_variance"] < 0.03**2 and c["runs"] == c["reference_runs"] == 3
    assert "p=" in format_comparison(c)


def test_run_level_comparison_is_deterministic_on_a_seed_and_checks_its_input():
    rng = np.random.default_rng(10)
    a, b = _arms(rng, runs=4)
    first, again = run_level_comparison(a, b[:3], seed=3), run_level_comparison(a, b[:3], seed=3)
    assert first == again
    other = run_level_comparison(a, b[:3], seed=4)
    assert other["difference"] == first["difference"] and other["ci_low"] != first["ci_low"]
    same = run_level_comparison(a, a)
    assert same["difference"] == 0.0 and same["p_value"] == 1.0 and _holds_zero(same)
    with_nan = a.copy()
    with_nan[1, 5] = np.nan
    assert run_level_comparison(with_nan, b)["n"] == 165
    with pytest.raises(ValueError, match="at least 2 runs"):
        run_level_comparison(a[:1], b)
    with pytest.raises(ValueError, match="same users"):
        run_level_comparison(a, b[:, :10])


def test_few_users_get_the_exact_sign_flip_p_value():
    # differences 0.1, 0.2, 0.3: of the 8 sign flips only the identity reaches the observed mean 0.2 and
    # only its mirror -0.2, so the two-sided p is 2 x 1/8
    c = paired_comparison([0.1, 0.2, 0.3], [0.0, 0.0, 0.0])
    assert c["p_value"] == pytest.approx(0.25)
    assert 0.1 - 1e-12 <= c["ci_low"] <= c["ci_high"] <= 0.3 + 1e-12


def test_both_intervals_come_from_the_same_resampled_users():
    rng = np.random.default_rng(3)
    b = rng.random(500) + 0.5
    a = b * 1.1  # every user exactly 10% better: the lift of every resample is 10%, the difference varies
    c = paired_comparison(a, b, n_resamples=500)
    assert c["lift_ci_low"] == pytest.approx(0.1) and c["lift_ci_high"] == pytest.approx(0.1)
    assert c["ci_low"] < c["difference"] < c["ci_high"]
    assert paired_comparison(a, b, n_resamples=500, seed=1)["ci_low"] != c["ci_low"]
