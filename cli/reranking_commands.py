"""`towerflow select-reranking`: choose the service's default re-ranking settings on the EVAL window of a
pipeline run, then report them on the test window (the protocol and rule:
serving/recommender/rerank_selection.py).

    towerflow select-reranking --run-dir runs/local [--out FILE.md]

The run needs pushed models (<run-dir>/serving); a redis-server and the
embedded model server are started on loopback for the replay and stopped at
the end. Prints the tables; --out also writes them as Markdown.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from towerflow.serving.recommender.config import ServiceConfig
from towerflow.serving.recommender.replay import score_lists
from towerflow.serving.recommender.rerank_selection import (
    CONFIDENCE,
    GRID,
    MAX_COST,
    TOP,
    K,
    choose,
    evaluate_grid,
    qualifying,
    rerank_lists,
)


def add_commands(subparsers) -> None:
    command = subparsers.add_parser(
        "select-reranking",
        help="choose the re-ranking defaults on a run's eval window and report them on its test window",
    )
    command.add_argument("--run-dir", required=True, help="a pipeline run with pushed models (<run-dir>/serving)")
    command.add_argument("--out", help="also write the report (Markdown) here")
    command.set_defaults(func=select_reranking)


def _materialize(run_dir: Path, redis_url: str, as_of: str) -> None:
    # `towerflow features materialize` in its own process: its Beam/TF start-up stays out of this one
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "towerflow.cli.main", "features", "materialize", "--run-dir", str(run_dir),
               "--as-of", as_of, "--redis-url", redis_url]  # fmt: skip
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)


def _ranked_for(recommender, eval_set, as_of: int) -> list:
    return [
        recommender.ranked({"user_id": u, "k": K, "context": {"timestamp": as_of}, "explore": False})
        for u in eval_set.user_ids
    ]


def _row(name: str, m: dict, cost: float | None = None, bound: float | None = None) -> str:
    cells = [f"{m['ndcg@10']:.4f}", f"{m[f'recall@{K}']:.4f}", f"{m[f'diversity@{TOP}']:.4f}",
             f"{m[f'coverage@{TOP}']:.4f}", "" if cost is None else f"{cost:+.2%}",
             "" if bound is None else f"{bound:.2%}"]  # fmt: skip
    return f"| {name} | " + " | ".join(cells) + " |"


def select_reranking(args) -> None:
    run_dir = Path(args.run_dir).resolve()

    from towerflow.components.evaluation.offline import OfflineData
    from towerflow.components.pusher import model_repository
    from towerflow.pipeline import mlmd
    from towerflow.serving.feature_store import FeatureStore, StoreConfig
    from towerflow.serving.feature_store.server import LocalRedis, LocalRedisConfig, connect
    from towerflow.serving.model_server import ModelServer, ServerOptions
    from towerflow.serving.recommender.runner import build_recommender
    from towerflow.serving.recommender.served import read_evaluation

    serving_root = run_dir / "serving"
    artifacts = mlmd.latest_artifacts(str(run_dir / "metadata.sqlite"))
    data = OfflineData.from_artifacts(artifacts["Ingestion.examples"], artifacts["Ingestion.item_catalog"])
    genres = {item: list(g) for item, g in data.catalog["item_genres"].items()}
    state = model_repository.model_state(serving_root, "ranker")
    evaluation = read_evaluation(Path(state.base_path) / str(state.default_version))
    depth = int(evaluation.get("rerank_depth", 100))
    generous = {s: 60_000 for s in ("features", "retrieval", "ranking", "reranking", "exploration")}
    config = ServiceConfig.from_dict(
        {"retrieval": {"top_n": depth}, "cold_start": {"popularity_candidates": 0}, "budgets_ms": generous}
    )
    windows = {"eval": data.validation_view().eval_set(), "test": data.eval_set()}
    lines: list[str] = []

    def emit(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    with tempfile.TemporaryDirectory(prefix="rerank-selection-") as tmp:
        redis_server = LocalRedis(LocalRedisConfig(data_dir=tmp, appendfsync="no")).start()
        options = ServerOptions(model_config_file=str(serving_root / model_repository.CONFIG_FILE), port=0,
                                rest_api_port=0)  # fmt: skip
        client = connect(redis_server.url)
        try:
            with ModelServer(options) as server:
                ranked = {}
                for window, as_of_name in (("eval", "eval-cutoff"), ("test", "test-cutoff")):
                    _materialize(run_dir, redis_server.url, as_of_name)
                    store = FeatureStore(client, StoreConfig())
                    recommender = build_recommender(store, serving_root, server.grpc_target, None, config)
                    try:
                        as_of = math.ceil(windows[window].cutoff)
                        ranked[window] = (_ranked_for(recommender, windows[window], as_of), recommender.rules.rules)
                    finally:
                        recommender.close()
        finally:
            client.close()
            redis_server.stop()

    base = ServiceConfig().reranking
    eval_ranked, rules = ranked["eval"]
    plain, trials = evaluate_grid(eval_ranked, windows["eval"], genres, rules, base)
    chosen = choose(plain, trials)
    emit("# Re-ranking defaults: chosen on the eval window, reported on the test window")
    emit()
    emit(f"Run: {run_dir.name}; two_tower / ranker as pushed; retrieval top-N {depth} (the pushed re-ranking "
         f"depth), k {K}, exploration off, no cold-start segment candidates (the popularity blend as served); "
         f"eval users {len(windows['eval'])}, test users {len(windows['test'])}.")  # fmt: skip
    emit(f"Grid ({len(trials)} settings): {json.dumps(GRID)}")
    emit(f"Rule: lambda < 1 and freshness boost > 0, diversity@{TOP} and coverage@{TOP} above plain, NDCG@10 cost "
         f"<= {MAX_COST:.0%} at the upper {CONFIDENCE:.0%} bootstrap bound; then the largest summed relative "
         f"gain in diversity and coverage.")  # fmt: skip
    emit()
    header = (f"| order | NDCG@10 | Recall@{K} | diversity@{TOP} | coverage@{TOP} | NDCG@10 cost | "
              f"cost, upper {CONFIDENCE:.0%} bound |")  # fmt: skip
    best = qualifying(plain, trials)
    emit("## Eval window (chooses)")
    emit()
    emit(f"Qualifying settings: {len(best)} of {len(trials)}; below, the {min(5, len(best))} with the largest gain "
         f"(the first is chosen) and the defaults config.py had before.")  # fmt: skip
    emit()
    emit(header)
    emit("|---|---:|---:|---:|---:|---:|---:|")
    emit(_row("pure relevance (lambda 1, no boosts)", plain))
    for t in best[:5]:
        emit(_row(json.dumps(t.settings), t.metrics, t.cost, t.cost_upper))
    current = next((t for t in trials if all(getattr(base, n) == v for n, v in t.settings.items())), None)
    if current is not None:
        emit(_row(f"config.py defaults before this run: {json.dumps(current.settings)}", current.metrics,
                  current.cost, current.cost_upper))  # fmt: skip
    emit()
    if chosen is None:
        emit("No setting of the grid qualifies on the eval window: diversity and freshness cannot both be on within "
             "the 2% bound here.")  # fmt: skip
        raise ValueError("no re-ranking setting qualifies on the eval window (see the table above)")
    emit(f"Chosen: {json.dumps(chosen.settings)}")
    emit()
    test_ranked, rules = ranked["test"]
    test_plain, _ = score_lists(
        rerank_lists(test_ranked, dataclasses.replace(base, diversity_lambda=1.0, freshness_boost=0.0,
                                                      novelty_weight=0.0), rules),
        windows["test"], genres, K, TOP,
    )  # fmt: skip
    test_chosen, _ = score_lists(
        rerank_lists(test_ranked, dataclasses.replace(base, **chosen.settings), rules), windows["test"], genres, K, TOP
    )
    cost = 1.0 - test_chosen["ndcg@10"] / test_plain["ndcg@10"]
    emit("## Test window (reports only)")
    emit()
    emit(header)
    emit("|---|---:|---:|---:|---:|---:|---:|")
    emit(_row("pure relevance", test_plain))
    emit(_row(f"chosen {json.dumps(chosen.settings)}", test_chosen, cost))
    emit()
    verdict = "MET" if cost <= MAX_COST else f"MISSED by {cost - MAX_COST:.2%}"
    emit(f"Test: NDCG@10 cost {cost:.2%} (goal <= {MAX_COST:.0%}): {verdict}; diversity@{TOP} "
         f"{test_plain[f'diversity@{TOP}']:.4f} -> {test_chosen[f'diversity@{TOP}']:.4f}, coverage@{TOP} "
         f"{test_plain[f'coverage@{TOP}']:.4f} -> {test_chosen[f'coverage@{TOP}']:.4f}.")  # fmt: skip
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
        print(f"wrote {args.out}")
