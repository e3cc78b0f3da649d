"""A ScaNN index over item embeddings, its exact (brute-force) reference and recall.

`derive_params` picks the ScaNN configuration from the catalog size: exact
(brute-force) scoring for tiny catalogs, asymmetric hashing (AH) with exact
re-ordering for small ones, and a partitioning tree (about sqrt(n) leaves,
a fixed share of them searched) + AH + re-ordering from `tree_from` items up.
Every derived value can be overridden.

`ScannIndex` keeps the row -> item id mapping and the float32 embeddings next
to the searcher, so the exact top-K can always be recomputed from what the
index was built on; `save`/`load` round-trip all three through a directory:

    <dir>/searcher/           ScaNN's serialized searcher (scann_assets.pbtxt, ...)
    <dir>/ids.npy             item id of every row (unicode)
    <dir>/embeddings.npy      float32 [num_items, dim], the rows the searcher indexes
    <dir>/index_config.json   ScannParams, num_items, dim

Scores are dot products (the towers emit L2-normalised embeddings, so they are
cosine similarities); results are ordered by score, ties by row.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

BRUTE_FORCE = "brute_force"
AH = "ah"
TREE_AH = "tree_ah"
MODES = (BRUTE_FORCE, AH, TREE_AH)

SEARCHER_DIR = "searcher"
IDS_FILE = "ids.npy"
EMBEDDINGS_FILE = "embeddings.npy"
CONFIG_FILE = "index_config.json"

# Catalog sizes where the index changes shape (see derive_params).
BRUTE_FORCE_BELOW = 1_000
TREE_FROM = 10_000
# Share of the tree's leaves a query visits by default. Measured on 1M clustered
# 64-d embeddings (benchmarks/results/scann.md): 5% with a 1000-candidate
# re-ordering pool gives recall@10 >= 0.95.
LEAVES_TO_SEARCH_FRACTION = 0.05


@dataclass(frozen=True)
class ScannParams:
    """One ScaNN configuration. `num_neighbors` is the default final K of a search."""

    mode: str = TREE_AH
    num_neighbors: int = 100
    num_leaves: int = 0  # tree only
    num_leaves_to_search: int = 0  # tree only
    training_sample_size: int = 0  # tree and AH; 0 = every item
    training_iterations: int = 12  # tree k-means iterations
    dimensions_per_block: int = 2  # AH: dims per 4-bit code; smaller = more accurate
    anisotropic_quantization_threshold: float = 0.2  # AH: score-aware loss for dot product
    reorder_num_neighbors: int = 0  # exact re-scoring of this many AH candidates; 0 = none

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.num_neighbors < 1:
            raise ValueError(f"num_neighbors must be >= 1, got {self.num_neighbors}")
        if self.mode == TREE_AH:
            if self.num_leaves < 2:
                raise ValueError(f"a tree needs num_leaves >= 2, got {self.num_leaves}")
            if not 1 <= self.num_leaves_to_search <= self.num_leaves:
                raise ValueError(
                    f"need 1 <= num_leaves_to_search <= num_leaves ({self.num_leaves}), got {self.num_leaves_to_search}"
                )
        if self.mode != BRUTE_FORCE and self.dimensions_per_block < 1:
            raise ValueError(f"dimensions_per_block must be >= 1, got {self.dimensions_per_block}")
        if self.reorder_num_neighbors < 0:
            raise ValueError(f"reorder_num_neighbors must be >= 0, got {self.reorder_num_neighbors}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ScannParams:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown ScaNN parameters {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)

    def configure(self, builder):
        """Applies this configuration to a ScaNN builder (pybind or TF-ops flavour)."""
        if self.mode == TREE_AH:
            builder = builder.tree(
                num_leaves=self.num_leaves,
                num_leaves_to_search=self.num_leaves_to_search,
                training_sample_size=self.training_sample_size or 100_000,
                training_iterations=self.training_iterations,
                # small leaves are fine: a tree only exists from TREE_FROM items up
                min_partition_size=10,
            )
        if self.mode == BRUTE_FORCE:
            return builder.score_brute_force()
        builder = builder.score_ah(
            self.dimensions_per_block,
            anisotropic_quantization_threshold=self.anisotropic_quantization_threshold,
            training_sample_size=self.training_sample_size or 100_000,
        )
        if self.reorder_num_neighbors:
            builder = builder.reorder(self.reorder_num_neighbors)
        return builder


def derive_params(
    num_items: int,
    num_neighbors: int = 100,
    brute_force_below: int = BRUTE_FORCE_BELOW,
    tree_from: int = TREE_FROM,
    leaves_to_search_fraction: float = LEAVES_TO_SEARCH_FRACTION,
    **overrides,
) -> ScannParams:
    """ScaNN parameters for a catalog of `num_items`; keyword `overrides` replace derived values.

    - fewer than `brute_force_below` items: exact scoring (nothing to gain from ANN);
    - fewer than `tree_from`: AH + re-ordering, no tree (a tree over a few
      thousand points only loses recall);
    - otherwise a tree of round(sqrt(n)) leaves, `leaves_to_search_fraction`
      of them searched (at least 16), k-means trained on up to 100k items or
      100 per leaf, whichever is larger.
    Re-ordering rescores max(10 * num_neighbors, 1000) AH candidates exactly: on
    64-d embeddings the AH codes, not the leaves searched, cap recall (see the
    frontier in benchmarks/results/scann.md), and 1000 exact dot products are cheap.
    """
    if num_items < 1:
        raise ValueError(f"cannot index an empty catalog (num_items={num_items})")
    num_neighbors = max(1, min(num_neighbors, num_items))
    derived: dict = {"num_neighbors": num_neighbors}
    if num_items < brute_force_below:
        derived["mode"] = BRUTE_FORCE
    else:
        derived["reorder_num_neighbors"] = min(num_items, max(10 * num_neighbors, 1_000))
        if num_items < tree_from:
            derived["mode"] = AH
        else:
            leaves = max(2, round(math.sqrt(num_items)))
            derived.update(
                mode=TREE_AH,
                num_leaves=leaves,
                num_leaves_to_search=min(leaves, max(16, math.ceil(leaves * leaves_to_search_fraction))),
                training_sample_size=min(num_items, max(100_000, 100 * leaves)),
            )
    derived.update({k: v for k, v in overrides.items() if v is not None})
    return ScannParams.from_dict(derived)


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _order_top(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k columns of each row of `scores`, best first, ties by column."""
    n = scores.shape[1]
    if k < n:
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        top = np.broadcast_to(np.arange(n), scores.shape).copy()
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.lexsort((top, -top_scores), axis=1)
    top = np.take_along_axis(top, order, axis=1)
    return top, np.take_along_axis(top_scores, order, axis=1)


def brute_force_top_k(
    queries: np.ndarray,
    embeddings: np.ndarray,
    k: int,
    exclude: Sequence[Iterable[int]] | None = None,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k rows by dot product: (indices int64 [B, k], scores float32 [B, k]).

    `exclude[i]` holds row indices query i must not get (e.g. items the user
    has seen). When fewer than k rows remain, the tail is index -1, score -inf.
    Queries go `chunk_size` at a time (default: a ~256 MB score matrix).
    """
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if exclude is not None and len(exclude) != len(queries):
        raise ValueError(f"exclude has {len(exclude)} entries for {len(queries)} queries")
    k = min(k, embeddings.shape[0])
    chunk_size = chunk_size or max(1, 2**26 // max(1, embeddings.shape[0]))
    all_idx, all_scores = [], []
    for start in range(0, len(queries), chunk_size):
        scores = queries[start : start + chunk_size] @ embeddings.T
        if exclude is not None:
            for row, banned in enumerate(exclude[start : start + chunk_size]):
                banned = np.fromiter(banned, dtype=np.int64)
                if banned.size:
                    scores[row, banned] = -np.inf
        idx, top_scores = _order_top(scores, k)
        idx[~np.isfinite(top_scores)] = -1
        all_idx.append(idx)
        all_scores.append(top_scores)
    if not all_idx:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return np.concatenate(all_idx).astype(np.int64), np.concatenate(all_scores).astype(np.float32)


def recall_at_k(approx: Sequence[Sequence], exact: Sequence[Sequence], k: int) -> float:
    """Mean over queries of |approx[:k] ∩ exact[:k]| / |exact[:k]| (-1 / None entries ignored).

    Queries whose exact list is empty do not count; with none left the result is NaN.
    """
    if len(approx) != len(exact):
        raise ValueError(f"{len(approx)} approximate result lists for {len(exact)} exact ones")
    recalls = []
    for got, truth in zip(approx, exact):
        truth = {t for t in list(truth)[:k] if not _is_missing(t)}
        if not truth:
            continue
        got = {g for g in list(got)[:k] if not _is_missing(g)}
        recalls.append(len(got & truth) / len(truth))
    return float(np.mean(recalls)) if recalls else float("nan")


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, int | np.integer) and value < 0)


def _scann_pybind():
    from scann.scann_ops.py import scann_ops_pybind  # imports TensorFlow; keep module import cheap

    return scann_ops_pybind


class ScannIndex:
    """A ScaNN searcher with its id mapping and the embeddings it was built on."""

    def __init__(self, ids: Sequence[str], embeddings: np.ndarray, searcher, params: ScannParams):
        self.ids = np.asarray(ids, dtype=str)
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if self.embeddings.ndim != 2 or len(self.ids) != len(self.embeddings):
            raise ValueError(f"{len(self.ids)} ids for embeddings of shape {self.embeddings.shape}")
        self.searcher = searcher
        self.params = params
        self._row = None

    @classmethod
    def build(
        cls,
        ids: Sequence[str],
        embeddings: np.ndarray,
        params: ScannParams | None = None,
        training_threads: int = 0,
        **overrides,
    ) -> ScannIndex:
        """Builds the searcher; `params` default to `derive_params(len(ids), **overrides)`."""
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if params is None:
            params = derive_params(len(embeddings), **overrides)
        elif overrides:
            params = dataclasses.replace(params, **overrides)
        builder = _scann_pybind().builder(embeddings, params.num_neighbors, "dot_product")
        builder = params.configure(builder)
        if training_threads:
            builder = builder.set_n_training_threads(training_threads)
        return cls(ids, embeddings, builder.build(), params)

    @property
    def num_items(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def row_of(self, item_id: str) -> int | None:
        if self._row is None:
            self._row = {item: i for i, item in enumerate(self.ids.tolist())}
        return self._row.get(item_id)

    def _search_args(self, k: int, leaves_to_search: int | None, pre_reorder: int | None) -> dict:
        args = {"final_num_neighbors": k}
        if self.params.mode == TREE_AH and leaves_to_search:
            args["leaves_to_search"] = leaves_to_search
        if self.params.reorder_num_neighbors or pre_reorder:
            # the pre-reorder pool must hold at least the final k
            args["pre_reorder_num_neighbors"] = max(k, pre_reorder or self.params.reorder_num_neighbors)
        return args

    def search(
        self,
        queries: np.ndarray,
        k: int | None = None,
        exclude: Sequence[Iterable[int]] | None = None,
        leaves_to_search: int | None = None,
        pre_reorder_num_neighbors: int | None = None,
        parallel: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-k rows: (indices int64 [B, k], scores [B, k]), padded with -1 / -inf.

        With `exclude`, each query over-fetches by its number of excluded rows
        and drops them, so it still gets k results when the catalog has them.
        """
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(k or self.params.num_neighbors, self.num_items)
        if exclude is not None and len(exclude) != len(queries):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(queries)} queries")
        banned = [set(map(int, e)) for e in exclude] if exclude is not None else None
        fetch = min(self.num_items, k + max((len(b) for b in banned), default=0)) if banned else k
        args = self._search_args(fetch, leaves_to_search, pre_reorder_num_neighbors)
        search = self.searcher.search_batched_parallel if parallel else self.searcher.search_batched
        idx, scores = search(queries, **args)
        idx, scores = np.asarray(idx, dtype=np.int64), np.asarray(scores, dtype=np.float32)
        out_idx = np.full((len(queries), k), -1, dtype=np.int64)
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        for row in range(len(queries)):
            keep = idx[row] >= 0
            if banned:
                keep &= ~np.isin(idx[row], list(banned[row]))
            row_idx, row_scores = idx[row][keep][:k], scores[row][keep][:k]
            out_idx[row, : len(row_idx)] = row_idx
            out_scores[row, : len(row_idx)] = row_scores
        return out_idx, out_scores

    def search_one(self, query: np.ndarray, k: int | None = None, **kwargs) -> tuple[np.ndarray, np.ndarray]:
        """One query through ScaNN's single-query path (what a server does per request)."""
        k = min(k or self.params.num_neighbors, self.num_items)
        args = self._search_args(k, kwargs.get("leaves_to_search"), kwargs.get("pre_reorder_num_neighbors"))
        return self.searcher.search(np.asarray(query, dtype=np.float32), **args)

    def exact(
        self, queries: np.ndarray, k: int | None = None, exclude: Sequence[Iterable[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The exact top-k over the same embeddings (the reference for recall)."""
        return brute_force_top_k(queries, self.embeddings, k or self.params.num_neighbors, exclude)

    def item_ids(self, indices: np.ndarray) -> np.ndarray:
        """Row indices -> item ids ("" for -1 padding)."""
        indices = np.asarray(indices)
        return np.where(indices >= 0, self.ids[np.clip(indices, 0, None)], "")

    def save(self, path: str) -> None:
        os.makedirs(os.path.join(path, SEARCHER_DIR), exist_ok=True)
        self.searcher.serialize(os.path.join(path, SEARCHER_DIR))
        np.save(os.path.join(path, IDS_FILE), self.ids)
        np.save(os.path.join(path, EMBEDDINGS_FILE), self.embeddings)
        config = {"params": self.params.to_dict(), "num_items": self.num_items, "dim": self.dim}
        with open(os.path.join(path, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)

    @classmethod
    def load(cls, path: str) -> ScannIndex:
        with open(os.path.join(path, CONFIG_FILE), encoding="utf-8") as f:
            config = json.load(f)
        searcher = _scann_pybind().load_searcher(os.path.join(path, SEARCHER_DIR))
        ids = np.load(os.path.join(path, IDS_FILE))
        embeddings = np.load(os.path.join(path, EMBEDDINGS_FILE))
        return cls(ids, embeddings, searcher, ScannParams.from_dict(config["params"]))


def latency_ms(fn: Callable[[np.ndarray], object], queries: np.ndarray, warmup: int = 5) -> dict[str, float]:
    """p50/p99/mean milliseconds of fn(q) over single queries (after `warmup` calls)."""
    import time

    for q in queries[:warmup]:
        fn(q)
    times = []
    for q in queries:
        start = time.perf_counter()
        fn(q)
        times.append((time.perf_counter() - start) * 1e3)
    times = np.asarray(times)
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99)), "mean": float(times.mean())}


def numpy_single_query(embeddings: np.ndarray, k: int) -> Callable[[np.ndarray], np.ndarray]:
    """The brute-force baseline for one query: a mat-vec and an argpartition."""

    def search(q: np.ndarray) -> np.ndarray:
        scores = embeddings @ q
        top = np.argpartition(-scores, k - 1)[:k]
        return top[np.argsort(-scores[top])]

    return search
