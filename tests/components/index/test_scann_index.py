"""ScaNN index: parameters from catalog size, exact top-K and recall by hand, exclusion, save/load."""

import numpy as np
import pytest

from towerflow.components.index.scann_index import (
    AH,
    BRUTE_FORCE,
    TREE_AH,
    ScannIndex,
    ScannParams,
    brute_force_top_k,
    derive_params,
    normalize,
    recall_at_k,
)


def clustered(n, dim=16, clusters=20, seed=0):
    rng = np.random.default_rng(seed)
    centres = normalize(rng.standard_normal((clusters, dim)))
    return normalize(centres[rng.integers(clusters, size=n)] + 0.2 * rng.standard_normal((n, dim)))


def test_params_follow_catalog_size():
    assert derive_params(500).mode == BRUTE_FORCE
    small = derive_params(5_000)
    assert small.mode == AH and small.num_leaves == 0 and small.reorder_num_neighbors == 1000
    big = derive_params(1_000_000)
    assert big.mode == TREE_AH
    assert big.num_leaves == 1000
    assert big.num_leaves_to_search == 50
    assert big.training_sample_size == 100_000
    assert derive_params(40_000).num_leaves == 200
    # at least 16 leaves searched
    assert derive_params(10_000).num_leaves_to_search == 16
    assert derive_params(1_000_000, num_neighbors=10).reorder_num_neighbors == 1000
    assert derive_params(2_000, num_neighbors=500).reorder_num_neighbors == 2000  # capped at the catalog


def test_params_overrides_and_validation():
    p = derive_params(1_000_000, num_leaves_to_search=7, reorder_num_neighbors=123)
    assert (p.num_leaves_to_search, p.reorder_num_neighbors, p.num_leaves) == (7, 123, 1000)
    assert derive_params(5, num_neighbors=100).num_neighbors == 5
    assert derive_params(50_000, brute_force_below=100_000).mode == BRUTE_FORCE
    with pytest.raises(ValueError, match="num_leaves_to_search"):
        derive_params(1_000_000, num_leaves_to_search=5000)
    with pytest.raises(ValueError, match="mode"):
        ScannParams(mode="lsh")
    with pytest.raises(ValueError, match="unknown ScaNN parameters"):
        ScannParams.from_dict({"leaves": 3})
    with pytest.raises(ValueError, match="empty catalog"):
        derive_params(0)


def test_recall_hand_computed():
    exact = [[1, 2, 3], [4, 5, 6]]
    approx = [[1, 9, 3], [6, 7, 8]]
    assert recall_at_k(approx, exact, 3) == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert recall_at_k(approx, exact, 1) == pytest.approx(0.5)  # query 0 hits, query 1 misses
    # exact lists shorter than k (padding -1) count only real items; empty ones are skipped
    assert recall_at_k([[1, 5], [7, -1]], [[1, -1], [-1, -1]], 2) == 1.0
    assert np.isnan(recall_at_k([[1]], [[-1]], 1))
    assert recall_at_k([["a", "b"]], [["b", "c"]], 2) == 0.5


def test_brute_force_top_k_orders_and_excludes():
    items = np.array([[1, 0], [0, 1], [0.6, 0.8], [0.8, 0.6], [-1, 0]], dtype=np.float32)
    queries = np.array([[1, 0], [0, 1]], dtype=np.float32)
    idx, scores = brute_force_top_k(queries, items, 3)
    assert idx.tolist() == [[0, 3, 2], [1, 2, 3]]
    np.testing.assert_allclose(scores, [[1, 0.8, 0.6], [1, 0.8, 0.6]], atol=1e-6)
    idx, _ = brute_force_top_k(queries, items, 3, exclude=[[0, 3], []])
    assert idx.tolist() == [[2, 1, 4], [1, 2, 3]]
    # more excluded than the catalog can spare: the tail is padding
    idx, scores = brute_force_top_k(queries[:1], items, 3, exclude=[[0, 1, 2, 3]])
    assert idx.tolist() == [[4, -1, -1]] and np.isneginf(scores[0, 1:]).all()
    # ties break by row
    idx, _ = brute_force_top_k(np.array([[1.0, 0.0]]), np.array([[0.5, 1], [0.5, 0], [0.5, 2]]), 3)
    assert idx.tolist() == [[0, 1, 2]]


@pytest.mark.parametrize("n,mode", [(200, BRUTE_FORCE), (2_000, AH), (12_000, TREE_AH)])
def test_index_round_trip_and_recall(tmp_path, n, mode):
    items = clustered(n)
    ids = [f"item{i}" for i in range(n)]
    queries = clustered(50, seed=1)
    index = ScannIndex.build(ids, items, num_neighbors=20)
    assert index.params.mode == mode
    got, got_scores = index.search(queries, 10)
    exact, _ = index.exact(queries, 10)
    assert recall_at_k(got, exact, 10) >= 0.9

    index.save(str(tmp_path))
    loaded = ScannIndex.load(str(tmp_path))
    assert loaded.params == index.params and loaded.ids.tolist() == ids
    np.testing.assert_array_equal(loaded.embeddings, index.embeddings)
    again, again_scores = loaded.search(queries, 10)
    np.testing.assert_array_equal(again, got)
    np.testing.assert_allclose(again_scores, got_scores, rtol=1e-6)
    assert loaded.item_ids(again[:1, :2]).tolist() == [[ids[again[0, 0]], ids[again[0, 1]]]]


def test_scann_search_with_exclusion():
    items = clustered(300)
    queries = clustered(10, seed=2)
    index = ScannIndex.build([str(i) for i in range(300)], items, num_neighbors=10)
    top, _ = index.exact(queries, 10)
    banned = [row[:4].tolist() for row in top]
    got, _ = index.search(queries, 10, exclude=banned)
    expected, _ = index.exact(queries, 10, exclude=banned)
    np.testing.assert_array_equal(got, expected)  # brute-force mode is exact
    assert all(not set(row) & set(b) for row, b in zip(got.tolist(), banned))
    assert (got >= 0).all()  # over-fetching still fills k
