"""`towerflow evaluate`: what the pipeline's ModelEvaluator measured on a run's test split.

    towerflow evaluate --output-dir runs/local

Reads the newest ModelEvaluator output (`ModelEvaluator.blessing` in the run's MLMD store) instead
of scoring the models again, so a run is evaluated once: the verdict and why, every baseline and
model on the headline metrics for all, warm and cold users, and each model against the best baseline
with its paired bootstrap 95% CI and p-value. Writes the evaluation JSON to --report.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from towerflow.cli.report_commands import latest_report_dir

METRICS = ("recall@100", "ndcg@10", "hit_rate@10")
SLICES = ("all", "warm", "cold")


def _cell(value) -> str:
    return f"{value:>12.4f}" if isinstance(value, float) and math.isfinite(value) else f"{'-':>12}"


def format_evaluation(result: dict) -> str:
    """The headline table (every baseline and model, all/warm/cold) and the comparisons with the best baseline."""
    lines = [f"Model {'BLESSED' if result['blessed'] else 'NOT blessed'}"]
    lines += [f"  {reason}" for reason in result["reasons"]]
    reports = {name: b for name, b in (result.get("baselines") or {}).items()}
    reports.update({name: r for name, r in result["reports"].items() if name not in reports})
    width = max(len(n) for n in reports) + 2
    lines.append("")
    lines.append(f"{'':<{width}}{'slice':<7}{'users':>6}" + "".join(f"{m:>12}" for m in METRICS))
    for name, report in reports.items():
        for slice_name in SLICES:
            values = report["metrics"].get(slice_name, {})
            n = report["n_users"].get(slice_name, "")
            lines.append(f"{name:<{width}}{slice_name:<7}{n!s:>6}" + "".join(_cell(values.get(m)) for m in METRICS))
    best = result.get("best_baseline")
    if best:
        lines.append("")
        lines.append(f"Against the best baseline, {best['describe']} (paired bootstrap 95% CI, permutation p):")
        for c in result.get("comparisons", []):
            if c["against"] != best["name"] or c.get("n", 0) == 0:
                continue
            lift = "" if c["lift"] is None else f" ({c['lift']:+.1%})"
            ci = "" if c["ci_low"] is None else f" [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]"
            p = "" if c["p_value"] is None else f" p={c['p_value']:.3g}"
            lines.append(f"  {c['model']:<16}{c['slice']:<6}{c['metric']:<13}{c['difference']:+.4f}{lift}{ci}{p}")
        if best.get("fallback_file"):
            lines.append(f"Not blessed: serve {best['describe']} from {best['fallback_file']} next to the evaluation.")
    return "\n".join(lines)


def _evaluate(args) -> None:
    from towerflow.components.evaluation.model_evaluator import EVALUATION_FILE, read_result

    out = Path(args.output_dir).resolve()
    evaluation_dir = latest_report_dir(str(out / "metadata.sqlite"))
    result = read_result(evaluation_dir)
    print(f"Evaluation of {result['models']['two_tower']} on {result['data']['test_users']} test users")
    print(format_evaluation(result))
    report_path = Path(args.report or out / "evaluation.json")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(evaluation_dir, EVALUATION_FILE), report_path)
    print(f"Full evaluation (every metric, K, slice, baseline and comparison): {report_path}")


def add_commands(commands) -> None:
    ev = commands.add_parser("evaluate", help="the ModelEvaluator's verdict, baselines and models on the test split")
    ev.add_argument("--output-dir", default="runs/local", help="the --output-dir of `towerflow run`")
    ev.add_argument(
        "--report", default=None, help="copy the evaluation JSON here (default: <output-dir>/evaluation.json)"
    )
    ev.set_defaults(func=_evaluate)
