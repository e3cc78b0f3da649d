"""Replaying the offline protocol's test users through the live service, scored like the offline evaluation.

    eval_set = OfflineData.from_artifacts(examples_uri, catalog_uri).eval_set()
    result = replay(lambda body: httpx.post(url + "/v1/recommend", json=body).json(), eval_set, as_of)
    result.metrics   # {"recall@100": ..., "ndcg@10": ..., "diversity@10": ..., "coverage@10": ...}

Each test user is asked for `k` items with `context.timestamp` = the cut-off
and `explore: false`, with the store materialized as of the test cut-off
(`towerflow features materialize --as-of test-cutoff`): the service then sees
exactly the train+eval history the offline evaluation uses, so its Recall@K and
NDCG@K are comparable one to one. Diversity (intra-list genre diversity) and
catalog coverage are measured on the top 10, the part a user sees.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from towerflow.components.evaluation import metrics


@dataclass
class ReplayResult:
    metrics: dict[str, float]
    lists: list[list[str]]
    fallbacks: int
    user_states: dict[str, int] = field(default_factory=dict)


def score_lists(
    lists: list[list[str]], eval_set, item_genres: Mapping[str, list] | None, k: int = 100, top: int = 10
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(Recall@k, NDCG@10, coverage@top and diversity@top of the lists, the per-user metrics)."""
    per_user = metrics.ranking_metrics_per_user(lists, list(eval_set.relevant), (10, k))
    values = {f"recall@{k}": float(per_user[f"recall@{k}"].mean()), "ndcg@10": float(per_user["ndcg@10"].mean())}
    heads = [items[:top] for items in lists]
    values[f"coverage@{top}"] = metrics.catalog_coverage(heads, eval_set.catalog)
    if item_genres is not None:
        values[f"diversity@{top}"] = metrics.mean_intra_list_diversity(heads, item_genres)
    return values, per_user


def replay(
    recommend: Callable[[dict], Mapping],
    eval_set,
    as_of: int,
    item_genres: Mapping[str, list] | None = None,
    k: int = 100,
    concurrency: int = 4,
    top: int = 10,
) -> ReplayResult:
    """Asks `recommend(body)` (HTTP or in-process) for every test user and scores the lists."""

    def one(user_id: str) -> Mapping:
        return recommend({"user_id": user_id, "k": k, "context": {"timestamp": int(as_of)}, "explore": False})

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        responses = list(pool.map(one, eval_set.user_ids))
    lists = [[item["item_id"] for item in r["items"]] for r in responses]
    values, _ = score_lists(lists, eval_set, item_genres, k, top)
    states: dict[str, int] = {}
    for r in responses:
        states[r["user_state"]] = states.get(r["user_state"], 0) + 1
    return ReplayResult(values, lists, sum(1 for r in responses if r.get("fallback")), states)
