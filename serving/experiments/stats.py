"""The statistics behind experiment verdicts: differences with 95% CIs and p-values, and score drift (PSI).

- Hit rate (a proportion per user): two-proportion z-test (pooled standard
  error for the p-value, unpooled Wald interval for the difference).
- NDCG, recall (bounded means per user): bootstrap over users. The interval is
  the percentile interval of resampled differences; the p-value comes from
  resampling both arms after shifting them to the pooled mean, i.e. under the
  null of equal means (Efron & Tibshirani, ch. 16).
- Population stability index between a reference score distribution (the
  offline evaluation's) and live scores, on the reference's quantile bins:
  PSI = sum (live - ref) * ln(live / ref); < 0.1 stable, > 0.25 a real shift.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from towerflow.components.evaluation.statistics import SCORED_ITEMS, quantile_bins

PSI_FLOOR = 1e-4  # an empty bin would make ln() infinite; this is the usual floor


@dataclass(frozen=True)
class Comparison:
    """Treatment minus control for one metric."""

    metric: str
    control: float
    treatment: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str
    n_control: int
    n_treatment: int

    @property
    def relative_lift(self) -> float:
        return self.difference / self.control if self.control else math.nan

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05

    def to_dict(self) -> dict:
        return {**asdict(self), "relative_lift": self.relative_lift, "significant": self.significant}


def two_proportion_ztest(metric: str, control: np.ndarray, treatment: np.ndarray, alpha: float = 0.05) -> Comparison:
    """Per-user 0/1 outcomes of two independent arms -> difference, Wald CI and pooled z-test p-value."""
    a, b = np.asarray(control, dtype=float), np.asarray(treatment, dtype=float)
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        raise ValueError(f"{metric}: both arms need users (got {n1} and {n2})")
    p1, p2 = a.mean(), b.mean()
    pooled = (a.sum() + b.sum()) / (n1 + n2)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    diff = p2 - p1
    p_value = 1.0 if se0 == 0 else float(2 * stats.norm.sf(abs(diff) / se0))
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    z = stats.norm.ppf(1 - alpha / 2)
    return Comparison(metric, p1, p2, diff, diff - z * se, diff + z * se, p_value, "two-proportion z-test", n1, n2)


def bootstrap_difference(
    metric: str,
    control: np.ndarray,
    treatment: np.ndarray,
    n_resamples: int = 10_000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Comparison:
    """Difference of means of two independent arms with a bootstrap percentile CI and a null-shifted p-value."""
    a, b = np.asarray(control, dtype=float), np.asarray(treatment, dtype=float)
    if len(a) == 0 or len(b) == 0:
        raise ValueError(f"{metric}: both arms need users (got {len(a)} and {len(b)})")
    rng = np.random.default_rng(seed)
    diff = b.mean() - a.mean()

    def resampled_diffs(x, y):
        xs = x[rng.integers(0, len(x), size=(n_resamples, len(x)))].mean(axis=1)
        ys = y[rng.integers(0, len(y), size=(n_resamples, len(y)))].mean(axis=1)
        return ys - xs

    boot = resampled_diffs(a, b)
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    pooled = np.concatenate([a, b]).mean()
    null = resampled_diffs(a - a.mean() + pooled, b - b.mean() + pooled)
    # (count + 1) / (n + 1): a resampling p-value is never exactly 0
    p_value = float((np.sum(np.abs(null) >= abs(diff) - 1e-12) + 1) / (n_resamples + 1))
    return Comparison(metric, a.mean(), b.mean(), diff, float(low), float(high), p_value, "bootstrap", len(a), len(b))


def model_scores(items, k: int = SCORED_ITEMS) -> list[float]:
    """The models' own scores of a response's first `k` items, as the canary's PSI compares them.

    That is each item's "final" stage score less its "popularity" term (i.e. retrieval logit + w x
    ranker, before re-ranking adds boosts, freshness and novelty; the popularity term is data, the
    same for every model version), which the offline evaluation scores too; exploration's picks are
    left out (their slot is not the models' choice). Items without a final score (a fallback's) give none.
    """
    out = []
    for item in list(items)[:k]:
        stages = item.get("stage_scores") or {}
        final = stages.get("final")
        if final is not None and not item.get("explored"):
            out.append(float(final) - float(stages.get("popularity", 0.0)))
    return out


@dataclass(frozen=True)
class ScoreReference:
    """A score distribution to compare live scores with: inner bin edges and each bin's share."""

    edges: tuple[float, ...]  # ascending inner edges; bins are (-inf, e0], (e0, e1], ..., (e_last, inf)
    fractions: tuple[float, ...]
    source: str = ""

    def __post_init__(self):
        if len(self.fractions) != len(self.edges) + 1:
            raise ValueError(f"need len(edges) + 1 fractions, got {len(self.edges)} edges, {len(self.fractions)}")
        if any(b < a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError("score reference edges must be ascending")
        total = sum(self.fractions)
        if not math.isclose(total, 1.0, abs_tol=1e-6) or min(self.fractions) < 0:
            raise ValueError(f"score reference fractions must be >= 0 and sum to 1, got sum {total}")

    @classmethod
    def from_scores(cls, scores, bins: int = 10, source: str = "") -> ScoreReference:
        """Decile (by default) bins of `scores`: every bin holds the same share of the reference."""
        edges, fractions = quantile_bins(scores, bins)
        return cls(tuple(edges), tuple(fractions), source)

    def shares(self, scores) -> np.ndarray:
        values = np.asarray(scores, dtype=float)
        values = values[np.isfinite(values)]
        counts = np.bincount(
            np.searchsorted(np.asarray(self.edges), values, side="left"), minlength=len(self.edges) + 1
        )
        return counts / max(counts.sum(), 1)

    def psi(self, scores) -> float:
        """Population stability index of `scores` against this reference."""
        live = np.maximum(self.shares(scores), PSI_FLOOR)
        ref = np.maximum(np.asarray(self.fractions), PSI_FLOOR)
        return float(np.sum((live - ref) * np.log(live / ref)))

    def to_dict(self) -> dict:
        return {"edges": list(self.edges), "fractions": list(self.fractions), "source": self.source}

    @classmethod
    def from_dict(cls, values: dict) -> ScoreReference:
        try:
            return cls(tuple(values["edges"]), tuple(values["fractions"]), values.get("source", ""))
        except (KeyError, TypeError) as err:
            raise ValueError(f"a score reference needs 'edges' and 'fractions' lists: {err}") from None
