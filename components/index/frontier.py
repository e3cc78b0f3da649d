"""The ANN recall-vs-latency frontier of a retrieval index: which ScaNN query settings are worth serving.

One ScaNN index (tree + asymmetric hashing + exact re-ordering) is built over the embeddings with
the search-time maxima, then searched with every combination of leaves searched x re-order pool
from a grid; each point records recall@k against the exact top-k and the single-query latency
p50/p99, and `frontier` lists the Pareto-optimal points (no other point is both faster and more
accurate). The IndexEvaluator records it for the served index; the ModelEvaluator's report shows it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from towerflow.components.index.scann_index import (
    TREE_AH,
    ScannIndex,
    ScannParams,
    brute_force_top_k,
    latency_ms,
    numpy_single_query,
    recall_at_k,
)


def _grid(values: Sequence[float], upper: int) -> list[int]:
    return sorted({max(1, min(upper, int(math.ceil(v)))) for v in values})


def ann_frontier(
    ids: Sequence[str],
    embeddings: np.ndarray,
    queries: np.ndarray,
    k: int = 10,
    latency_queries: int = 100,
    served=None,
) -> dict:
    """Recall@k vs single-query latency of ScaNN (tree + AH + re-ordering) over a grid of
    leaves searched x re-order pool, all from one index built with the search-time maxima.

    `served` (a ScannIndex, e.g. the IndexBuilder's) adds its own operating point on its own
    embeddings. `frontier` lists the indices of the Pareto-optimal points.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.float32)
    n = len(ids)
    k = max(1, min(k, n))
    num_leaves = max(2, min(round(math.sqrt(n)), n // 10 or 2))
    leaves_grid = _grid(
        [1, 2, num_leaves * 0.05, num_leaves * 0.1, num_leaves * 0.25, num_leaves * 0.5, num_leaves], num_leaves
    )
    reorder_grid = _grid([k, 2.5 * k, 5 * k, 10 * k, 25 * k], n)
    params = ScannParams(
        mode=TREE_AH,
        num_neighbors=k,
        num_leaves=num_leaves,
        num_leaves_to_search=num_leaves,
        training_sample_size=n,
        reorder_num_neighbors=max(reorder_grid),
    )
    index = ScannIndex.build(list(ids), embeddings, params)
    exact, _ = brute_force_top_k(queries, embeddings, k)
    sample = queries[:latency_queries]
    points = []
    for leaves in leaves_grid:
        for pool in reorder_grid:
            approx, _ = index.search(queries, k, leaves_to_search=leaves, pre_reorder_num_neighbors=pool)

            def one(q, leaves=leaves, pool=pool):
                return index.search_one(q, k, leaves_to_search=leaves, pre_reorder_num_neighbors=pool)

            lat = latency_ms(one, sample)
            points.append(
                dict(
                    leaves_to_search=leaves,
                    reorder=pool,
                    recall=recall_at_k(approx, exact, k),
                    p50_ms=lat["p50"],
                    p99_ms=lat["p99"],
                )
            )
    brute = latency_ms(numpy_single_query(embeddings, k), sample)
    frontier, best = [], -1.0
    for i in sorted(range(len(points)), key=lambda i: (points[i]["p50_ms"], -points[i]["recall"])):
        if points[i]["recall"] > best:
            frontier.append(i)
            best = points[i]["recall"]
    result = dict(
        k=k,
        num_items=n,
        num_queries=len(queries),
        num_leaves=num_leaves,
        points=points,
        frontier=frontier,
        brute_force=dict(p50_ms=brute["p50"], p99_ms=brute["p99"]),
        served=None,
    )
    if served is not None:
        served_exact, _ = served.exact(queries, k)
        served_approx, _ = served.search(queries, k)
        lat = latency_ms(lambda q: served.search_one(q, k), sample)
        result["served"] = dict(
            recall=recall_at_k(served_approx, served_exact, k),
            p50_ms=lat["p50"],
            p99_ms=lat["p99"],
            mode=served.params.mode,
            params=served.params.to_dict(),
        )
    return result
