"""Model quality on the DESIGN.md protocol, mean over seeds, from an existing pipeline run.

Re-trains the two-tower and DCN models with the pipeline's own run_fns on the
run's Transform output (so only training varies between seeds), exports them,
and scores popularity, two-tower and two-tower + DCN re-ranking of the top 100
on the test split with `components.evaluation.offline`.

    .venv/bin/python benchmarks/model_quality.py --output-dir runs/local --seeds 0 1 2 --tune-weight

Prints per-seed and mean tables and writes <output-dir>/quality/quality.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from tfx.components.trainer.fn_args_utils import FnArgs  # noqa: E402

from towerflow.components.evaluation.offline import (  # noqa: E402
    DEFAULT_RERANK_SCORE,
    DEFAULT_RERANK_WEIGHT,
    HEADLINE_METRICS,
    OfflineData,
    comparison_table,
    evaluate_models,
    tune_rerank_weight,
)
from towerflow.models import run_fns  # noqa: E402
from towerflow.pipeline.config import PipelineConfig  # noqa: E402
from towerflow.pipeline.mlmd import latest_artifacts  # noqa: E402

SLICES = ("all", "warm", "cold")


def _fn_args(
    transform_uri: str, examples_uri: str, out: Path, key: str, config: dict, seed: int, train_splits=("train",)
) -> FnArgs:
    return FnArgs(
        train_files=[os.path.join(examples_uri, f"Split-{split}", "*.gz") for split in train_splits],
        eval_files=[os.path.join(examples_uri, "Split-eval", "*.gz")],
        transform_output=transform_uri,
        transform_graph_path=transform_uri,
        serving_model_dir=str(out / "serving"),
        model_run_dir=str(out / "logs"),
        custom_config={key: config, "seed": seed},
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="runs/local")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--two-tower", default="{}", help="JSON TwoTowerConfig overrides")
    parser.add_argument("--ranking", default="{}", help="JSON RankingConfig overrides")
    parser.add_argument(
        "--train-splits",
        nargs="+",
        default=list(PipelineConfig.train_splits),
        help="splits the models fit on (default: the pipeline's, train eval); use 'train' to choose settings",
    )
    parser.add_argument(
        "--window",
        choices=("test", "eval"),
        default="test",
        help="score on the test window, or on the eval window (for choosing settings without the test)",
    )
    parser.add_argument("--rerank-depth", type=int, default=100)
    parser.add_argument("--skip-ranking", action="store_true", help="train and score retrieval only")
    parser.add_argument(
        "--tune-weight", action="store_true", help="choose the re-ranking weight on the eval window per seed"
    )
    parser.add_argument(
        "--rerank-scores",
        nargs="+",
        default=[DEFAULT_RERANK_SCORE],
        help="ranker outputs or combinations to order by; the first is the one reported as two_tower+dcn",
    )
    args = parser.parse_args(argv)

    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    artifacts = latest_artifacts(os.path.join(args.output_dir, "metadata.sqlite"))
    transform_uri = artifacts["Transform.transform_graph"]
    transformed = artifacts["Transform.transformed_examples"]
    data = OfflineData.from_artifacts(artifacts["Ingestion.examples"], artifacts["Ingestion.item_catalog"])
    if "eval" in args.train_splits and (args.tune_weight or args.window == "eval"):
        parser.error("--tune-weight and --window eval choose settings on the eval window: use --train-splits train")
    if args.window == "eval":
        if args.tune_weight:
            parser.error("--tune-weight already uses the eval window; it cannot be combined with --window eval")
        data = data.validation_view()
        print("scoring the EVAL window (test rows dropped)")
    two_tower_cfg, ranking_cfg = json.loads(args.two_tower), json.loads(args.ranking)
    root = Path(args.output_dir) / "quality"
    per_seed, tuned = [], []
    for seed in args.seeds:
        started = time.time()
        out = root / f"seed{seed}"
        splits = args.train_splits
        tt = _fn_args(transform_uri, transformed, out / "two_tower", "two_tower", two_tower_cfg, seed, splits)
        rk = _fn_args(transform_uri, transformed, out / "ranking", "ranking", ranking_cfg, seed, splits)
        run_fns.run_two_tower(tt)
        ranker_dir = None
        if not args.skip_ranking:
            run_fns.run_ranking(rk)
            ranker_dir = rk.serving_model_dir
        weight = DEFAULT_RERANK_WEIGHT
        if args.tune_weight and ranker_dir:
            weight, by_weight = tune_rerank_weight(data, tt.serving_model_dir, ranker_dir, score=args.rerank_scores[0])
            shown = ", ".join(f"{w:g}: {v:.4f}" for w, v in by_weight.items())
            print(f"seed {seed}: eval-window NDCG@10 by re-ranking weight {{{shown}}} -> {weight:g}")
            tuned.append(weight)
        reports = evaluate_models(
            data,
            tt.serving_model_dir,
            ranker_dir,
            rerank_depth=args.rerank_depth,
            rerank_scores=args.rerank_scores,
            weight=weight,
        )
        print(f"\nseed {seed} ({time.time() - started:.0f}s)\n{comparison_table(reports)}")
        per_seed.append({name: r.to_dict() for name, r in reports.items()})

    models = list(per_seed[0])
    print(f"\nmean over seeds {args.seeds}")
    print(f"{'model':<16}{'slice':<7}" + "".join(f"{m:>13}" for m in HEADLINE_METRICS))
    mean = {}
    for model in models:
        for slice_name in SLICES:
            values = [np.mean([s[model]["metrics"][slice_name][m] for s in per_seed]) for m in HEADLINE_METRICS]
            mean.setdefault(model, {})[slice_name] = dict(zip(HEADLINE_METRICS, values))
            print(f"{model:<16}{slice_name:<7}" + "".join(f"{v:>13.3f}" for v in values))
    base = mean["popularity"]
    for model in models[1:]:
        lifts = {s: {m: mean[model][s][m] / base[s][m] - 1 for m in ("recall@100", "ndcg@10")} for s in SLICES}
        shown = "; ".join(f"{s}: R@100 {v['recall@100']:+.1%}, NDCG@10 {v['ndcg@10']:+.1%}" for s, v in lifts.items())
        print(f"{model} vs popularity: {shown}")
    root.mkdir(parents=True, exist_ok=True)
    result = {
        "seeds": args.seeds,
        "rerank_scores": args.rerank_scores,
        "tuned_weights": tuned,
        "two_tower": two_tower_cfg,
        "ranking": ranking_cfg,
        "mean": mean,
        "per_seed": per_seed,
    }
    (root / "quality.json").write_text(json.dumps(result, indent=2))
    print(f"\nwrote {root / 'quality.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
