"""Choosing the default re-ranking settings on the EVAL window, then reporting them on the test window.

    towerflow select-reranking --run-dir runs/local [--out FILE.md]     (cli/reranking_commands.py)

The goal (the service issue): with the default re-ranking (diversity and
freshness on) a replay costs at most 2% NDCG@10 against pure relevance order
while raising intra-list diversity and catalog coverage of the top 10.

Protocol, the e2e replay's (tests/serving/recommender/test_e2e.py) one window
earlier: the store materialized as of the EVAL cut-off, every eval-window user
asked for k = 100 with `context.timestamp` = that cut-off, exploration off,
retrieval top-N = the pushed evaluation's re-ranking depth, no cold-start
segment candidates (the popularity blend's candidates and term as served).
Each user's candidates go through the service's own features, retrieval and
ranking once (`Recommender.ranked`); every setting of the grid
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

import dataclasses
import itertools

import numpy as np

from towerflow.serving.recommender import reranking
from towerflow.serving.recommender.config import RerankingConfig
from towerflow.serving.recommender.replay import score_lists

# freshness_boost and novelty_weight are in units of each request's score scale (reranking.score_scale)
GRID = {
    "diversity_lambda": (0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
    "diversity_depth": (10, 20, 50),
    "freshness_boost": (0.05, 0.1, 0.2, 0.3),
    "novelty_weight": (0.0, 0.02, 0.05, 0.1, 0.2),
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


def qualifying(plain: dict, trials: list[Trial]) -> list[Trial]:
    """The settings the rule may choose from, best first (the first is `choose`'s pick)."""
    ok = [
        t
        for t in trials
        if t.settings["diversity_lambda"] < 1.0
        and t.settings["freshness_boost"] > 0
        and t.metrics[f"diversity@{TOP}"] > plain[f"diversity@{TOP}"]
        and t.metrics[f"coverage@{TOP}"] > plain[f"coverage@{TOP}"]
        and t.cost_upper <= MAX_COST
    ]
    return sorted(
        ok,
        key=lambda t: (
            round(t.gain(plain), 9),
            t.settings["diversity_lambda"],
            -t.settings["freshness_boost"],
            -t.settings["novelty_weight"],
            -t.settings["diversity_depth"],
        ),
        reverse=True,
    )


def choose(plain: dict, trials: list[Trial]) -> Trial | None:
    """The rule of the module docstring; None if no setting qualifies."""
    ok = qualifying(plain, trials)
    return ok[0] if ok else None
