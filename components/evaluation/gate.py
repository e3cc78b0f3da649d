"""The blessing gate: when the ModelEvaluator blesses a model.

A model is blessed only if every check passes, for each gated model that was evaluated
(two_tower, two_tower+dcn and two_tower+dcn+pop by default):

1. floor: each guarded metric (default recall@100, ndcg@10) is above all-time popularity x
   (1 + `min_lift`);
2. no regression: each guarded metric is at least the last blessed model's x (1 - `tolerance`),
   AND the model is not significantly worse than it (paired bootstrap CI of the per-user
   difference entirely below 0 and permutation p < `alpha`), both re-measured on this run's users;
3. strongest baseline: the SERVED model's `baseline_metric` (default NDCG@10 over all users) is at
   least the best baseline's x (1 + `baseline_min_lift`, default 0). The served model is the first
   evaluated of full_pipeline, two_tower+dcn+pop, two_tower+dcn, two_tower among the gated ones
   (`served_model`): what the recommend service answers with (two_tower+dcn+pop when the evaluation
   has a popularity weight), so it is the one a baseline could replace; the towers' own scores are
   not served alone. The best baseline is the one with the highest `baseline_metric` on this run's
   test window among those evaluated (components/evaluation/baselines.py).

Checks 1 and the relative part of 2 are `checks`; the statistical comparisons of 2 and 3 are
`comparisons` (each with its CI and p-value, see statistics.paired_comparison), built by
`compare_to_baselines` / `compare_to_last_blessed` from the per-user metric vectors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from towerflow.components.evaluation import metrics as M
from towerflow.components.evaluation.protocol import EvalReport
from towerflow.components.evaluation.statistics import (
    CONFIDENCE,
    DEFAULT_RESAMPLES,
    format_comparison,
    paired_comparison,
    significantly_worse,
)

POPULARITY = "popularity"
TWO_TOWER = "two_tower"
TWO_TOWER_DCN = "two_tower+dcn"
# retrieval + DCN + the item's recent popularity (offline.BlendedRecommender): the pipeline's final score
TWO_TOWER_DCN_POP = "two_tower+dcn+pop"
FULL_PIPELINE = "full_pipeline"
# What the recommend service answers with, most complete first (the strongest-baseline check applies to it)
SERVED_PREFERENCE = (FULL_PIPELINE, TWO_TOWER_DCN_POP, TWO_TOWER_DCN, TWO_TOWER)
BEST_BASELINE = "best_baseline"
LAST_BLESSED = "last_blessed"


def parse_metric(spec: str) -> tuple[str, str]:
    """ "recall@100" -> ("all", "recall@100"); "warm:ndcg@10" -> ("warm", "ndcg@10")."""
    slice_name, _, metric = spec.strip().rpartition(":")
    name, sep, k = metric.partition("@")
    if not sep or name not in M.METRIC_NAMES or not k.isdigit() or int(k) < 1:
        raise ValueError(
            f"bad guarded metric {spec!r}: expected [slice:]name@K with name in {M.METRIC_NAMES}, e.g. 'recall@100'"
        )
    return slice_name or "all", f"{name}@{int(k)}"


def split_list(text: str | Sequence[str]) -> tuple[str, ...]:
    items = text.split(",") if isinstance(text, str) else text
    return tuple(s.strip() for s in items if s and s.strip())


@dataclass
class GateConfig:
    """When a model is blessed (see the module docstring)."""

    guarded_metrics: tuple[str, ...] = ("recall@100", "ndcg@10")
    tolerance: float = 0.02
    min_lift: float = 0.0
    gated_models: tuple[str, ...] = (TWO_TOWER, TWO_TOWER_DCN, TWO_TOWER_DCN_POP)
    baseline_metric: str = "ndcg@10"
    baseline_min_lift: float = 0.0
    alpha: float = 1 - CONFIDENCE

    def __post_init__(self):
        self.guarded_metrics = split_list(self.guarded_metrics)
        self.gated_models = split_list(self.gated_models)
        if not self.guarded_metrics:
            raise ValueError("guarded_metrics must name at least one metric, e.g. 'recall@100,ndcg@10'")
        for spec in (*self.guarded_metrics, self.baseline_metric):
            parse_metric(spec)
        if not self.gated_models:
            raise ValueError(f"gated_models must name at least one of {TWO_TOWER}, {TWO_TOWER_DCN}, {FULL_PIPELINE}")
        if POPULARITY in self.gated_models:
            raise ValueError("popularity is the reference, it cannot be gated")
        if not (math.isfinite(self.tolerance) and 0.0 <= self.tolerance < 1.0):
            raise ValueError(f"tolerance must be in [0, 1), got {self.tolerance}")
        for name in ("min_lift", "baseline_min_lift"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > -1.0):
                raise ValueError(f"{name} must be > -1, got {value}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")

    def describe(self) -> str:
        return (
            f"Blessed only if, for each of {', '.join(self.gated_models)} that was evaluated, every guarded metric "
            f"({', '.join(self.guarded_metrics)}) is above popularity x (1 + {self.min_lift:g}) and at least "
            f"baseline x (1 - {self.tolerance:g}) and it is not significantly worse than the last blessed model "
            f"(paired bootstrap, alpha {self.alpha:g}); and the served model's (the first evaluated of "
            f"{', '.join(m for m in SERVED_PREFERENCE if m in self.gated_models)}) {self.baseline_metric} is at "
            f"least the best baseline's x (1 + {self.baseline_min_lift:g})."
        )


def served_model(reports: Mapping, gate: GateConfig) -> str | None:
    """The gated model the service answers with: the first of SERVED_PREFERENCE that was evaluated."""
    for model in SERVED_PREFERENCE:
        if model in gate.gated_models and model in reports:
            return model
    return None


def _value(report: Mapping, spec: str) -> float:
    slice_name, metric = parse_metric(spec)
    value = report["metrics"].get(slice_name, {}).get(metric)
    return float("nan") if value is None else float(value)


def best_baseline(baselines: Mapping[str, Mapping], spec: str) -> str | None:
    """The baseline with the highest `spec` (report dicts keyed by name); None if there is none."""
    scored = {name: _value(report, spec) for name, report in baselines.items()}
    scored = {name: v for name, v in scored.items() if not math.isnan(v)}
    return max(scored, key=lambda n: scored[n]) if scored else None


def _paired(model: EvalReport, reference: EvalReport, spec: str, n_resamples: int, seed: int) -> dict:
    slice_name, metric = parse_metric(spec)
    if model.user_ids != reference.user_ids:
        raise ValueError("paired comparisons need both reports scored on the same test users")
    mask = model.masks.get(slice_name, np.zeros(len(model.user_ids), dtype=bool))
    return paired_comparison(model.per_user[metric][mask], reference.per_user[metric][mask], n_resamples, seed=seed)


def compare_to_baselines(
    reports: Mapping[str, EvalReport],
    baselines: Mapping[str, EvalReport],
    gate: GateConfig,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> list[dict]:
    """The strongest-baseline comparison of the served model (kind "best_baseline"; see `served_model`)."""
    best = best_baseline({name: r.to_dict() for name, r in baselines.items()}, gate.baseline_metric)
    served = served_model(reports, gate)
    if best is None or served is None:
        return []
    out = []
    for model in (served,):
        stats = _paired(reports[model], baselines[best], gate.baseline_metric, n_resamples, seed)
        bound = stats["reference_mean"] * (1 + gate.baseline_min_lift)
        passed = bool(stats["mean"] >= bound)  # NaN compares False
        out.append(
            dict(
                model=model,
                metric=gate.baseline_metric,
                kind=BEST_BASELINE,
                against=best,
                bound=bound,
                passed=passed,
                **stats,
            )
        )
    return out


def compare_to_last_blessed(
    reports: Mapping[str, EvalReport],
    last_blessed: Mapping[str, EvalReport],
    gate: GateConfig,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> list[dict]:
    """Is each gated model significantly worse than the last blessed one on a guarded metric (kind "last_blessed")."""
    out = []
    for model in (m for m in gate.gated_models if m in reports and m in last_blessed):
        for spec in gate.guarded_metrics:
            stats = _paired(reports[model], last_blessed[model], spec, n_resamples, seed)
            passed = not significantly_worse(stats, gate.alpha)
            out.append(dict(model=model, metric=spec, kind=LAST_BLESSED, against=LAST_BLESSED, passed=passed, **stats))
    return out


def _comparison_reason(c: Mapping, gate: GateConfig) -> str:
    if c["kind"] == BEST_BASELINE:
        return (
            f"{c['model']} {c['metric']} = {c['mean']:.4f} is below the best baseline {c['against']} "
            f"({c['reference_mean']:.4f}) x (1 + {gate.baseline_min_lift:g}) [{format_comparison(c, 4)}]"
        )
    return f"{c['model']} {c['metric']} is significantly worse than the last blessed model [{format_comparison(c, 4)}]"


def decide_blessing(
    reports: Mapping[str, Mapping],
    baseline_reports: Mapping[str, Mapping] | None,
    gate: GateConfig,
    comparisons: Sequence[Mapping] = (),
) -> tuple[bool, list[str], list[dict]]:
    """(blessed, reasons, checks) from report dicts (`EvalReport.to_dict()`), keyed by model name.

    `reports` must hold "popularity". A missing or NaN value fails its check. `comparisons`
    (from `compare_to_baselines` / `compare_to_last_blessed`) must all pass too.
    """
    if POPULARITY not in reports:
        raise ValueError("the popularity report is required: it is the floor every model must beat")
    checks: list[dict] = []
    gated = [m for m in gate.gated_models if m in reports]
    for model in gated:
        for spec in gate.guarded_metrics:
            value = _value(reports[model], spec)
            pop = _value(reports[POPULARITY], spec)
            bound = pop * (1 + gate.min_lift)
            checks.append(
                dict(
                    model=model,
                    metric=spec,
                    against=POPULARITY,
                    value=value,
                    reference=pop,
                    op=">",
                    bound=bound,
                    passed=bool(value > bound),
                )
            )
            if baseline_reports and model in baseline_reports:
                base = _value(baseline_reports[model], spec)
                bound = base * (1 - gate.tolerance)
                checks.append(
                    dict(
                        model=model,
                        metric=spec,
                        against="baseline",
                        value=value,
                        reference=base,
                        op=">=",
                        bound=bound,
                        passed=bool(value >= bound),
                    )
                )  # NaN compares False
    reasons = []
    if not gated:
        reasons.append(f"none of the gated models ({', '.join(gate.gated_models)}) was evaluated")
    for c in checks:
        if not c["passed"]:
            if c["against"] == POPULARITY:
                reasons.append(
                    f"{c['model']} {c['metric']} = {c['value']:.4f} does not beat popularity {c['reference']:.4f} "
                    f"by the required lift {gate.min_lift:g} (needs > {c['bound']:.4f})"
                )
            else:
                reasons.append(
                    f"{c['model']} {c['metric']} = {c['value']:.4f} regresses more than {gate.tolerance:.1%} "
                    f"vs the last blessed model's {c['reference']:.4f} (needs >= {c['bound']:.4f})"
                )
    reasons += [_comparison_reason(c, gate) for c in comparisons if not c["passed"]]
    blessed = not reasons
    if blessed:
        compared = "and the last blessed model" if baseline_reports else "(no blessed baseline yet)"
        reasons.append(
            f"{', '.join(gated)} beat popularity {compared} on {', '.join(gate.guarded_metrics)} "
            f"(tolerance {gate.tolerance:.1%}, min lift {gate.min_lift:g})"
        )
        reasons += [
            f"{c['model']} {c['metric']} {c['mean']:.4f} is not below the best baseline {c['against']} "
            f"{c['reference_mean']:.4f} (min lift {gate.baseline_min_lift:g}; {format_comparison(c, 4)})"
            for c in comparisons
            if c["kind"] == BEST_BASELINE
        ]
    return blessed, reasons, checks
