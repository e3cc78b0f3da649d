"""Re-ranking, exploration and explanations: what happens to the ranked candidates before they are shown.

* `rerank`: drops seen, excluded and rule-blocked or unavailable items, adds
  business-rule boosts, a freshness boost (items first interacted with less
  than `freshness_days` ago) and a novelty term (- weight x log(1 + interactions
  so far)), then orders by maximal marginal relevance over
  genres: each next item maximises  lambda x relevance - (1 - lambda) x its
  highest genre (Jaccard) similarity to the items already picked. lambda = 1 is
  pure relevance order.
  The freshness boost, the novelty weight and MMR's relevance are in units of the
  request's own score scale: the spread of its best `diversity_depth` scores
  (`score_scale`). Retrieval logits, the ranker and the popularity term give scores
  whose spread differs several times between models and users; in these units the
  same settings move every list alike, and MMR treats k = 10 and k = 100 alike
  (relevance = (score - best) / scale, whatever the pool's lowest score).
  Rule boosts stay in score units (the rules file's numbers are added as they are).
* `explore`: epsilon-greedy slots. epsilon = epsilon0 / sqrt(1 + events) shrinks
  as the user engages; a slot (after the protected top ones) is replaced with
  probability epsilon by a draw from the least-exposed candidates whose score
  is above the quality-floor quantile. The random stream is seeded from
  (request_id, seed), so the same request explores the same way.
* `explain`: "because you watched <title>" (the history item nearest by item
  embedding), "popular this week" ("popular": all-time, no events in the recent
  window), "new", "exploring".
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from towerflow.models import features
from towerflow.serving.recommender.config import ExplorationConfig, RerankingConfig
from towerflow.serving.recommender.rules import Rules

RETRIEVAL = "retrieval"
POPULARITY = "popularity"


@dataclass(slots=True)
class Candidate:
    """One item on its way through the stages."""

    item_id: str
    score: float  # the current ordering score
    source: str = RETRIEVAL  # retrieval | popularity
    stage_scores: dict[str, float] = field(default_factory=dict)
    item: dict = field(default_factory=dict)  # raw item features (title, genres, year)
    pit: dict = field(default_factory=dict)  # point-in-time item features (prior/recent counts, age)
    fresh: bool = False
    explored: bool = False
    explanation: str = ""

    @property
    def genres(self) -> frozenset[str]:
        return frozenset(self.item.get(features.ITEM_GENRES) or ())


def score_scale(scores: Sequence[float], depth: int) -> float:
    """The unit of a request's re-ranking terms: best minus `depth`-th best of `scores` (1.0 if that is 0)."""
    if not scores:
        return 1.0
    top = heapq.nlargest(max(1, depth), scores)
    spread = float(top[0] - top[-1])
    return spread if spread > 0 and math.isfinite(spread) else 1.0


def mmr(
    candidates: Sequence[Candidate], k: int, diversity_lambda: float, depth: int, scale: float | None = None
) -> list[Candidate]:
    """Greedy MMR over genre sets among the best `max(k, depth)` (input sorted by score, best first).

    relevance = (score - best score) / scale, `scale` defaulting to `score_scale` of the input's scores.
    Vectorised: the pool's genre sets are one boolean matrix, so each pick updates every remaining item's
    highest genre Jaccard similarity in one step (two empty genre sets count as similarity 1).
    """
    if diversity_lambda >= 1.0 or len(candidates) <= 1:
        return list(candidates)
    pool = list(candidates[: max(k, depth)])
    rest = list(candidates[len(pool) :])
    scores = np.array([c.score for c in pool], dtype=np.float64)
    if scale is None:
        scale = score_scale(scores[:depth].tolist(), depth)
    relevance = (scores - scores.max()) / scale
    genre_sets = [c.genres for c in pool]
    vocabulary = {g: i for i, g in enumerate(sorted(set().union(*genre_sets)))}
    matrix = np.zeros((len(pool), max(1, len(vocabulary))), dtype=bool)
    for row, genres in enumerate(genre_sets):
        matrix[row, [vocabulary[g] for g in genres]] = True
    sizes = matrix.sum(axis=1)
    max_sim = np.zeros(len(pool))
    left = np.ones(len(pool), dtype=bool)
    chosen: list[int] = []
    while left.any() and len(chosen) < k:
        gains = np.where(left, diversity_lambda * relevance - (1 - diversity_lambda) * max_sim, -np.inf)
        best = int(np.argmax(gains))  # argmax takes the first on ties: the higher-scored item
        chosen.append(best)
        left[best] = False
        inter = (matrix & matrix[best]).sum(axis=1)
        union = sizes + sizes[best] - inter
        sim = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        max_sim = np.maximum(max_sim, sim)
    picked = [pool[i] for i in chosen]
    return picked + [pool[i] for i in np.flatnonzero(left)] + rest


def rerank(
    candidates: Sequence[Candidate],
    k: int,
    *,
    seen: Collection[str],
    exclude: Collection[str],
    rules: Rules,
    context: Mapping,
    config: RerankingConfig,
) -> list[Candidate]:
    """Filtered, boosted and MMR-ordered candidates (all of them; the caller cuts to k after exploring)."""
    # rules with nothing to block, restrict or boost (the usual case) need no per-item look-ups
    plain = not (rules.blocked or rules.available_in or rules.boosts)
    kept = [
        c
        for c in candidates
        if c.item_id not in seen and c.item_id not in exclude and (plain or rules.allowed(c.item_id, context))
    ]
    scale = score_scale([c.score for c in kept], config.diversity_depth)
    freshness_days, freshness_boost = config.freshness_days, scale * config.freshness_boost
    novelty_weight, log1p = scale * config.novelty_weight, math.log1p
    for c in kept:
        item_id = c.item_id
        pit = c.pit
        days = pit.get(features.ITEM_DAYS_SINCE_FIRST)
        prior = pit.get(features.ITEM_PRIOR_COUNT)
        c.fresh = bool(prior) and days is not None and days < freshness_days
        novelty = novelty_weight * log1p(prior or 0)
        boost = 0.0 if plain else rules.boost(item_id)
        c.score = c.score + boost + (freshness_boost if c.fresh else 0.0) - novelty
        c.stage_scores["reranking"] = float(c.score)
    kept.sort(key=lambda c: -c.score)  # stable: ties keep the ranking order
    return mmr(kept, k, config.diversity_lambda, config.diversity_depth, scale)


def request_rng(request_id: str, seed: int) -> np.random.Generator:
    """The exploration random stream of one request: the same (request_id, seed) -> the same draws."""
    digest = hashlib.sha256(f"{request_id}\0{seed}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def epsilon(config: ExplorationConfig, events: int) -> float:
    return config.epsilon0 / math.sqrt(1 + max(0, events))


def explore(
    ranked: Sequence[Candidate], k: int, events: int, request_id: str, config: ExplorationConfig
) -> tuple[list[Candidate], float]:
    """The top k with some slots replaced by exploration picks (marked `explored`); returns (list, epsilon)."""
    eps = epsilon(config, events)
    top, rest = list(ranked[:k]), list(ranked[k:])
    if eps <= 0 or not rest or len(top) <= config.protected_top:
        return top, eps
    floor = float(np.quantile([c.score for c in ranked], config.quality_floor))
    # under-exposed = fewest interactions so far; ties by id so the pool is deterministic
    pool = sorted(
        (c for c in rest if c.score >= floor),
        key=lambda c: (c.pit.get(features.ITEM_PRIOR_COUNT, 0), c.item_id),
    )[: config.pool_size]
    rng = request_rng(request_id, config.seed)
    for slot in range(config.protected_top, len(top)):
        if not pool:
            break
        if rng.random() < eps:
            pick = pool.pop(int(rng.integers(len(pool))))
            pick.explored = True
            top[slot] = pick
    return top, eps


def explain(
    candidates: Sequence[Candidate],
    history: Sequence[str],
    index,
    titles: Mapping[str, str],
    min_similarity: float = 0.2,
) -> None:
    """Sets each candidate's `explanation` (see the module docstring)."""
    hist_rows = [(item, index.row_of(item)) for item in history]
    hist_rows = [(item, row) for item, row in hist_rows if row is not None]
    hist_matrix = index.embeddings[[row for _, row in hist_rows]] if hist_rows else None
    for c in candidates:
        if c.explored:
            c.explanation = "exploring"
        elif c.source == POPULARITY:
            # an item with no events in the recent window came from the all-time list
            recent = (c.pit or {}).get(features.ITEM_RECENT_COUNT)
            c.explanation = "popular" if recent == 0 else "popular this week"
        elif c.fresh:
            c.explanation = "new"
        else:
            c.explanation = "recommended for you"
            row = index.row_of(c.item_id) if hist_matrix is not None else None
            if row is not None:
                sims = hist_matrix @ index.embeddings[row]
                best = int(np.argmax(sims))
                if sims[best] >= min_similarity:
                    item = hist_rows[best][0]
                    c.explanation = f"because you watched {titles.get(item) or item}"
