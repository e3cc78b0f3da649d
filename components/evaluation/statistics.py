"""Paired comparisons of two recommenders scored on the same test users.

The protocol keeps every user's metric value (`EvalReport.per_user`), so two recommenders are
compared user by user: the difference of their means, a paired bootstrap 95% confidence interval
of that difference and of the relative lift (users resampled with replacement, the same users for
both recommenders; percentile intervals), and a two-sided paired permutation p-value (each user's
two values swapped at random -- a sign flip of the per-user difference -- under the null
hypothesis that the recommenders are exchangeable). Both come from scipy.stats.

Users of different rolling-origin folds are different test cases, so folds are pooled by
concatenating their per-user vectors (`paired_comparison` on the concatenation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

DEFAULT_RESAMPLES = 2000
CONFIDENCE = 0.95
# Score distributions (the canary's drift check) take the first 10 scores of each recommended list.
SCORED_ITEMS = 10


def _mean_difference(a, b, axis=-1):
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def _relative_lift(a, b, axis=-1):
    base = np.mean(b, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(base > 0, np.mean(a, axis=axis) / np.where(base > 0, base, 1.0) - 1.0, np.nan)


def paired_comparison(
    values: Sequence[float] | np.ndarray,
    reference: Sequence[float] | np.ndarray,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict:
    """`values` (a model's per-user metric) against `reference` (another's, same users, same order).

    Users with a nan on either side are left out. Returns n, mean, reference_mean, difference,
    ci_low / ci_high (of the difference), lift (difference / reference mean) with lift_ci_low /
    lift_ci_high, and p_value. With fewer than 2 users the interval and p-value are nan.
    """
    a = np.asarray(values, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two per-user vectors of the same length, got shapes {a.shape} and {b.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    n = len(a)
    mean_a = float(a.mean()) if n else math.nan
    mean_b = float(b.mean()) if n else math.nan
    out = dict(
        n=n,
        mean=mean_a,
        reference_mean=mean_b,
        difference=mean_a - mean_b,
        lift=(mean_a / mean_b - 1.0) if n and mean_b > 0 else math.nan,
        ci_low=math.nan,
        ci_high=math.nan,
        lift_ci_low=math.nan,
        lift_ci_high=math.nan,
        p_value=math.nan,
        confidence=confidence,
        n_resamples=n_resamples,
    )
    if n < 2:
        return out
    if np.all(a == b):  # no difference anywhere: every resample and every permutation gives 0
        out.update(ci_low=0.0, ci_high=0.0, p_value=1.0)
        if mean_b > 0:
            out.update(lift_ci_low=0.0, lift_ci_high=0.0)
        return out
    common = dict(paired=True, vectorized=True, n_resamples=n_resamples, confidence_level=confidence)
    # the same seed makes both intervals resample the same users
    diff_ci = stats.bootstrap((a, b), _mean_difference, method="percentile", random_state=seed, **common)
    out.update(ci_low=float(diff_ci.confidence_interval.low), ci_high=float(diff_ci.confidence_interval.high))
    if mean_b > 0:
        lift_ci = stats.bootstrap((a, b), _relative_lift, method="percentile", random_state=seed, **common)
        out.update(
            lift_ci_low=float(lift_ci.confidence_interval.low), lift_ci_high=float(lift_ci.confidence_interval.high)
        )
    with np.errstate(over="ignore"):  # scipy counts the possible permutations (2^n) in a float
        test = stats.permutation_test(
            (a, b),
            _mean_difference,
            permutation_type="samples",
            vectorized=True,
            n_resamples=n_resamples,
            alternative="two-sided",
            random_state=seed,
        )
    out["p_value"] = float(test.pvalue)
    return out


def quantile_bins(scores, bins: int = 10) -> tuple[list[float], list[float]]:
    """(inner edges, shares) of `scores` on their own quantile bins: with `bins` = 10, each decile
    holds a tenth of the finite scores (fewer bins where quantiles coincide). Bins are (-inf, e0],
    (e0, e1], ..., (e_last, inf) -- the form a population stability index compares against."""
    values = np.asarray(scores, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < bins:
        raise ValueError(f"need at least {bins} finite scores for {bins} bins, got {values.size}")
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return [float(e) for e in edges], [float(c) for c in counts / counts.sum()]


def significantly_worse(comparison: Mapping, alpha: float = 1 - CONFIDENCE) -> bool:
    """The whole confidence interval of the difference is below 0 (and the p-value below `alpha`)."""
    high, p = comparison.get("ci_high"), comparison.get("p_value")
    if high is None or p is None or math.isnan(high) or math.isnan(p):
        return False
    return high < 0 and p < alpha


def format_comparison(c: Mapping, digits: int = 3) -> str:
    """ "0.361 vs 0.352: +0.009 [-0.004, +0.022], +2.6% [-1.1%, +6.4%], p=0.19 (n=166)" """
    if not c.get("n"):
        return "no users"
    lift = "" if c["lift"] is None or math.isnan(c["lift"]) else f", {c['lift']:+.1%}"
    if lift and not math.isnan(c["lift_ci_low"]):
        lift += f" [{c['lift_ci_low']:+.1%}, {c['lift_ci_high']:+.1%}]"
    ci = "" if math.isnan(c["ci_low"]) else f" [{c['ci_low']:+.{digits}f}, {c['ci_high']:+.{digits}f}]"
    p = "" if math.isnan(c["p_value"]) else f", p={c['p_value']:.3g}"
    return (
        f"{c['mean']:.{digits}f} vs {c['reference_mean']:.{digits}f}: "
        f"{c['difference']:+.{digits}f}{ci}{lift}{p} (n={c['n']})"
    )
