"""Choosing the default re-ranking settings on the EVAL window, then reporting them on the test window.

    python -m towerflow.serving.recommender.rerank_selection --run-dir runs/local [--out FILE.md]

The goal (the service issue): with the default re-ranking (diversity and
freshness on) a replay costs at most 2% NDCG@10 against pure relevance order
while raising intra-list diversity and catalog coverage of the top 10.

Protocol, the e2e replay's (tests/serving/recommender/test_e2e.py) one window
earlier: the store materialized as of the EVAL cut-off, every eval-window user
asked for k = 100 with `context.timestamp` = that cut-off, exploration off,
retrieval top-N = the pushed evaluation's re-ranking depth, no popularity
candidates. Each user's candidates go through the service's own features,
retrieval and ranking once (`Recommender.ranked`); every setting of the grid
then re-ranks them with the service's `reranking.rerank`, scored like the
replay (`replay.score_lists`).

Rule, fixed before any test number was seen: among settings with diversity
AND freshness on (lambda < 1, boost > 0) that raise both diversity@10 and
coverage@10 on eval, keep those whose NDCG@10 cost is at most 2% at the upper
end of a 95% paired bootstrap interval over eval users (the eval-to-test
difference is mostly which users are drawn, so the bound leaves room for
it), and take the one with the largest summed relative gain in diversity and
coverage. Ties: the smaller change (higher lambda, lower boost/novelty).

Then the chosen and the plain settings are replayed the same way on the TEST
window (store as of the test cut-off, test users) and all four numbers are
reported; the test window chooses nothing. config.py's defaults state the
chosen values.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from towerflow.serving.recommender import reranking
from towerflow.serving.recommender.config import RerankingConfig, ServiceConfig
from towerflow.serving.recommender.replay import score_lists

GRID = {
    "diversity_lambda": (0.8, 0.85, 0.9, 0.95, 0.98),
    "diversity_depth": (20, 50),
    "freshness_boost": (0.05, 0.1, 0.2, 0.3),
    "novelty_weight": (0.0, 0.05, 0.1, 0.2),
}
MAX_COST = 0.02  # the bound on the NDCG@10 cost
CONFIDENCE = 0.95
BOOTSTRAP = 2000
K, TOP = 100, 10


def rerank_lists(ranked: list, config: RerankingConfig, rules, k: int = K) -> list[list[str]]:
    """The top k of every user's candidates re-ranked with `config`, as the service's re-ranking stage does."""
    lists = []
    for candidates, seen, request in ranked:
        copies = [dataclasses.replace(c, stage_scores=dict(c.stage_scores)) for c in candidates]
        out = reranking.rerank(
            copies, k, seen=seen, exclude=set(request.exclude), rules=rules, context=request.context, config=config
        )
        lists.append([c.item_id for c in out[:k]])
    return lists


def cost_bound(plain: np.ndarray, other: np.ndarray, confidence: float = CONFIDENCE, seed: int = 0) -> float:
    """Upper `confidence` quantile of 1 - mean(other)/mean(plain) over users resampled with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(plain), size=(BOOTSTRAP, len(plain)))
    p, o = plain[idx].mean(axis=1), other[idx].mean(axis=1)
    costs = 1.0 - o / np.where(p > 0, p, np.nan)
    return float(np.nanquantile(costs, confidence))


@dataclasses.dataclass
class Trial:
    settings: dict
    metrics: dict
    cost: float
    cost_upper: float

    def gain(self, plain: dict) -> float:
        return (self.metrics[f"diversity@{TOP}"] / plain[f"diversity@{TOP}"] - 1) + (
            self.metrics[f"coverage@{TOP}"] / plain[f"coverage@{TOP}"] - 1
        )


def evaluate_grid(ranked, eval_set, genres, rules, base: RerankingConfig, grid=GRID):
    """(plain metrics, plain per-user NDCG@10, trials): every grid setting against pure relevance order."""
    plain_config = dataclasses.replace(base, diversity_lambda=1.0, freshness_boost=0.0, novelty_weight=0.0)
    plain, plain_users = score_lists(rerank_lists(ranked, plain_config, rules), eval_set, genres, K, TOP)
    trials = []
    names = list(grid)
    for values in itertools.product(*(grid[n] for n in names)):
        settings = dict(zip(names, values))
        config = dataclasses.replace(base, **settings)
        got, users = score_lists(rerank_lists(ranked, config, rules), eval_set, genres, K, TOP)
        cost = 1.0 - got["ndcg@10"] / plain["ndcg@10"]
        bound = cost_bound(plain_users["ndcg@10"], users["ndcg@10"])
        trials.append(Trial(settings, got, cost, bound))
    return plain, trials


def choose(plain: dict, trials: list[Trial]) -> Trial | None:
    """The rule of the module docstring; None if no setting qualifies."""
    ok = [
        t
        for t in trials
        if t.settings["diversity_lambda"] < 1.0
        and t.settings["freshness_boost"] > 0
        and t.metrics[f"diversity@{TOP}"] > plain[f"diversity@{TOP}"]
        and t.metrics[f"coverage@{TOP}"] > plain[f"coverage@{TOP}"]
        and t.cost_upper <= MAX_COST
    ]
    if not ok:
        return None
    return max(
        ok,
        key=lambda t: (
            round(t.gain(plain), 9),
            t.settings["diversity_lambda"],
            -t.settings["freshness_boost"],
            -t.settings["novelty_weight"],
            -t.settings["diversity_depth"],
        ),
    )


# --------------------------------------------------------------------------- the run


def _materialize(run_dir: Path, redis_url: str, as_of: str) -> None:
    # the CLI's materialize (a command above this layer: run as a process, not imported)
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="a pipeline run with pushed models (<run-dir>/serving)")
    parser.add_argument("--out", help="also write the report (Markdown) here")
    args = parser.parse_args(argv)
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
         f"depth), k {K}, exploration off, no popularity candidates; eval users {len(windows['eval'])}, "
         f"test users {len(windows['test'])}.")  # fmt: skip
    emit(f"Grid ({len(trials)} settings): {json.dumps(GRID)}")
    emit(f"Rule: lambda < 1 and freshness boost > 0, diversity@{TOP} and coverage@{TOP} above plain, NDCG@10 cost "
         f"<= {MAX_COST:.0%} at the upper {CONFIDENCE:.0%} bootstrap bound; then the largest summed relative "
         f"gain in diversity and coverage.")  # fmt: skip
    emit()
    header = (f"| order | NDCG@10 | Recall@{K} | diversity@{TOP} | coverage@{TOP} | NDCG@10 cost | "
              f"cost, upper {CONFIDENCE:.0%} bound |")  # fmt: skip
    emit("## Eval window (chooses)")
    emit()
    emit(header)
    emit("|---|---:|---:|---:|---:|---:|---:|")
    emit(_row("pure relevance (lambda 1, no boosts)", plain))
    best = sorted(trials, key=lambda t: -t.gain(plain) if t.cost_upper <= MAX_COST else math.inf)[:5]
    for t in best:
        emit(_row(json.dumps(t.settings), t.metrics, t.cost, t.cost_upper))
    current = next((t for t in trials if all(getattr(base, n) == v for n, v in t.settings.items())), None)
    if current is not None:
        emit(_row(f"config.py defaults before this run: {json.dumps(current.settings)}", current.metrics,
                  current.cost, current.cost_upper))  # fmt: skip
    emit()
    if chosen is None:
        emit("No setting of the grid qualifies on the eval window: diversity and freshness cannot both be on within "
             "the 2% bound here.")  # fmt: skip
        return 1
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
