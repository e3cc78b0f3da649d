"""`towerflow evaluate`: the offline protocol on a pipeline run's test split.

towerflow evaluate --output-dir runs/local
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def _evaluate(args) -> None:
    from towerflow.components.evaluation.offline import OfflineData, comparison_table, evaluate_models
    from towerflow.pipeline.mlmd import latest_artifacts

    out = Path(args.output_dir).resolve()
    artifacts = latest_artifacts(str(out / "metadata.sqlite"))
    missing = [k for k in ("Ingestion.examples", "Ingestion.item_catalog") if k not in artifacts]
    if missing:
        raise ValueError(f"the run in {out} has no {', '.join(missing)}; run `towerflow run` first")
    model_dirs = {
        name: os.path.join(artifacts[key], "Format-Serving") if key in artifacts else None
        for name, key in (("two_tower", "TwoTowerTrainer.model"), ("ranker", "RankingTrainer.model"))
    }
    print(f"Evaluating on the test split of {artifacts['Ingestion.examples']}")
    data = OfflineData.from_artifacts(artifacts["Ingestion.examples"], artifacts["Ingestion.item_catalog"])
    reports = evaluate_models(data, model_dirs["two_tower"], model_dirs["ranker"], rerank_depth=args.rerank_depth)
    print(comparison_table(reports))
    report_path = Path(args.report or out / "evaluation.json")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps({"models": model_dirs, **{k: r.to_dict() for k, r in reports.items()}}, indent=2))
    print(f"Full report (every metric, K and slice): {report_path}")


def add_commands(commands) -> None:
    ev = commands.add_parser("evaluate", help="score popularity, two-tower and two-tower+DCN on the test split")
    ev.add_argument("--output-dir", default="runs/local", help="the --output-dir of `towerflow run`")
    ev.add_argument("--rerank-depth", type=int, default=100, help="retrieved candidates the ranker re-orders")
    ev.add_argument("--report", default=None, help="JSON report path (default: <output-dir>/evaluation.json)")
    ev.set_defaults(func=_evaluate)
