"""The re-ranking selection's pieces: the bootstrap bound, the choice rule, re-ranking copies."""

import numpy as np

from towerflow.models import features
from towerflow.serving.recommender.config import RerankingConfig
from towerflow.serving.recommender.request import Request
from towerflow.serving.recommender.rerank_selection import Trial, choose, cost_bound, rerank_lists
from towerflow.serving.recommender.reranking import Candidate
from towerflow.serving.recommender.rules import Rules

PLAIN = {"diversity@10": 0.80, "coverage@10": 0.10}


def trial(lam, boost, div, cov, upper, novelty=0.0):
    settings = {"diversity_lambda": lam, "diversity_depth": 50, "freshness_boost": boost, "novelty_weight": novelty}
    return Trial(settings, {"diversity@10": div, "coverage@10": cov, "ndcg@10": 0.3}, upper / 2, upper)


def test_cost_bound_of_a_uniform_cost_is_that_cost():
    plain = np.full(50, 0.5)
    assert abs(cost_bound(plain, plain * 0.98) - 0.02) < 1e-12
    assert cost_bound(plain, plain) == 0.0


def test_cost_bound_widens_with_noisier_users():
    rng = np.random.default_rng(0)
    plain = rng.uniform(0.2, 0.6, 200)
    calm = plain * 0.99
    noisy = np.clip(plain * 0.99 + rng.normal(0, 0.1, 200), 0, 1)
    assert cost_bound(plain, noisy) > cost_bound(plain, calm)


def test_choose_keeps_the_rule():
    trials = [
        trial(1.0, 0.1, 0.90, 0.20, 0.0),  # diversity off: not a candidate
        trial(0.9, 0.0, 0.90, 0.20, 0.0),  # freshness off: not a candidate
        trial(0.8, 0.1, 0.95, 0.30, 0.021),  # the biggest gain, but the bound is over 2%
        trial(0.9, 0.1, 0.79, 0.30, 0.01),  # lowers diversity
        trial(0.9, 0.2, 0.84, 0.12, 0.015),  # gain 0.05 + 0.2
        trial(0.95, 0.1, 0.82, 0.11, 0.005),  # gain 0.025 + 0.1
    ]
    assert choose(PLAIN, trials) is trials[4]
    assert choose(PLAIN, trials[:4]) is None


def test_rerank_lists_leaves_the_candidates_as_they_were():
    cands = [Candidate(f"i{n}", 1.0 - n / 10, item={features.ITEM_GENRES: ["Drama"]}, stage_scores={"final": 1.0})
             for n in range(5)]  # fmt: skip
    request = Request.parse({"user_id": "u", "k": 3, "explore": False}, 100, 10)
    ranked = [(cands, {"i0"}, request)]
    config = RerankingConfig(diversity_lambda=0.5, freshness_boost=0.0, novelty_weight=0.0)
    lists = rerank_lists(ranked, config, Rules(), k=3)
    assert lists == [["i1", "i2", "i3"]]  # seen i0 dropped; one genre: MMR keeps the score order
    assert [c.score for c in cands] == [1.0, 0.9, 0.8, 0.7, 0.6] and "reranking" not in cands[1].stage_scores
