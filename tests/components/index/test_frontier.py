"""The ANN recall-vs-latency frontier (the IndexEvaluator records it; see test_component.py)."""

import numpy as np

from towerflow.components.index.frontier import ann_frontier


def test_sweep_covers_the_grid_and_the_frontier_is_pareto_optimal():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(400, 16)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    queries = rng.normal(size=(40, 16)).astype(np.float32)
    ids = [f"i{j}" for j in range(400)]
    ann = ann_frontier(ids, embeddings, queries, k=5, latency_queries=20)
    assert ann["num_items"] == 400 and ann["k"] == 5 and ann["num_queries"] == 40
    leaves = {p["leaves_to_search"] for p in ann["points"]}
    pools = {p["reorder"] for p in ann["points"]}
    assert len(leaves) >= 3 and len(pools) >= 3 and len(ann["points"]) == len(leaves) * len(pools)
    full = [p for p in ann["points"] if p["leaves_to_search"] == ann["num_leaves"] and p["reorder"] == max(pools)]
    assert full[0]["recall"] >= 0.9  # every leaf, the biggest exact re-order pool: nearly exact
    assert all(0 <= p["recall"] <= 1 and p["p50_ms"] > 0 for p in ann["points"])
    front = [ann["points"][i] for i in ann["frontier"]]
    assert [p["recall"] for p in front] == sorted(p["recall"] for p in front) and front
    # Pareto: no point is both at least as fast and strictly more accurate than a frontier point
    for f in front:
        assert not any(p["p50_ms"] < f["p50_ms"] and p["recall"] > f["recall"] for p in ann["points"])
    assert ann["served"] is None and ann["brute_force"]["p50_ms"] > 0
