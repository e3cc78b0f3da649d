"""The IndexBuilder and IndexEvaluator TFX components.

IndexBuilder(model, item_catalog) -> index (towerflow.RetrievalIndex)
  Embeds every catalog item with the two-tower's `candidate_tower_examples`
  signature in a Beam job (a DoFn loads the SavedModel once per worker in
  setup() and embeds batches made by beam.BatchElements), builds a ScaNN index
  with parameters derived from the catalog size (overridable) and exports the
  two retrieval SavedModels (components/index/export.py):

    <uri>/index/          ScannIndex.save: searcher/, ids.npy, embeddings.npy, index_config.json
    <uri>/brute_force/    retrieval SavedModel, stock TF ops only
    <uri>/scann/          retrieval SavedModel with the ScaNN ops

IndexEvaluator(index, examples) -> blessing (standard ModelBlessing)
  Samples queries from the eval split, embeds them with the exported query
  tower, and compares ScaNN against the exact top-K over the index's own
  embeddings: recall@K, single-query latency p50/p99 of ScaNN and of a numpy
  brute force, batched throughput, and the exported ScaNN SavedModel against
  the exported brute-force one. Blesses (custom property `blessed` = 1, and a
  BLESSED file, as TFX's Evaluator does) only if every threshold holds; the
  figures are properties of the blessing and `index_evaluation.json` in it.
  With `frontier_queries` > 0 it also sweeps ScaNN query settings on the
  index's embeddings (components/index/frontier.py) and stores the
  recall-vs-latency frontier under "frontier" in `index_evaluation.json`.

This module must not use `from __future__ import annotations`: TFX reads the
component signatures' annotations at import time.
"""

import glob
import io
import json
import os
import time

import apache_beam as beam
import numpy as np
from tfx import types
from tfx.dsl.component.experimental.annotations import (
    BeamComponentParameter,
    InputArtifact,
    OutputArtifact,
    Parameter,
)
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from towerflow.components.index import export as index_export
from towerflow.components.index.frontier import ann_frontier
from towerflow.components.index.scann_index import (
    BRUTE_FORCE_BELOW,
    LEAVES_TO_SEARCH_FRACTION,
    TREE_FROM,
    ScannIndex,
    brute_force_top_k,
    derive_params,
    latency_ms,
    numpy_single_query,
    recall_at_k,
)
from towerflow.components.ingestion.component import ItemCatalog
from towerflow.models import features as F

INDEX_DIR = "index"
EVALUATION_FILE = "index_evaluation.json"
BLESSED_FILE = "BLESSED"
NOT_BLESSED_FILE = "NOT_BLESSED"
CANDIDATE_SIGNATURE = "candidate_tower_examples"
_PARTS_DIR = "_embedding_parts"


class RetrievalIndex(types.Artifact):
    """A ScaNN index over the catalog, its id mapping and embeddings, and two retrieval SavedModels."""

    TYPE_NAME = "towerflow.RetrievalIndex"


def tower_dir(model_uri: str) -> str:
    """The serving SavedModel inside a Trainer's `model` artifact."""
    path = path_utils.serving_model_path(model_uri)
    return path if os.path.isdir(path) else model_uri


# --------------------------------------------------------------------------- building


class EmbedItems(beam.DoFn):
    """Serialized catalog tf.Examples (a batch) -> one .npz blob of (ids, embeddings)."""

    def __init__(self, model_dir: str):
        self._model_dir = model_dir

    def setup(self):
        import tensorflow as tf

        self._tf = tf
        self._model = tf.saved_model.load(self._model_dir)  # keep a reference: the signature needs it alive
        self._embed = self._model.signatures[CANDIDATE_SIGNATURE]

    def process(self, batch):
        tf = self._tf
        serialized = tf.constant(list(batch))
        ids = tf.io.parse_example(serialized, {F.ITEM_ID: tf.io.FixedLenFeature([], tf.string)})[F.ITEM_ID]
        embeddings = self._embed(examples=serialized)["embedding"].numpy().astype(np.float32)
        blob = io.BytesIO()
        np.savez(blob, ids=np.char.decode(ids.numpy().astype(bytes), "utf-8"), embeddings=embeddings)
        yield blob.getvalue()


def embed_catalog(
    pipeline: beam.Pipeline, catalog_pattern: str, model_dir: str, parts_prefix: str, batch_size: int = 1024
):
    """Adds the embedding job to `pipeline`: catalog records -> .npz blobs in TFRecords at `parts_prefix`."""
    return (
        pipeline
        | "ReadCatalog" >> beam.io.ReadFromTFRecord(catalog_pattern, coder=beam.coders.BytesCoder())
        | "Batch" >> beam.BatchElements(min_batch_size=min(64, batch_size), max_batch_size=batch_size)
        | "Embed" >> beam.ParDo(EmbedItems(model_dir))
        | "WriteParts" >> beam.io.WriteToTFRecord(parts_prefix, coder=beam.coders.BytesCoder())
    )


def read_embedding_parts(parts_prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """All blobs back as (ids, embeddings) sorted by item id, so the row order never depends on Beam."""
    import tensorflow as tf

    ids, embeddings = [], []
    files = sorted(glob.glob(parts_prefix + "*"))
    for record in tf.data.TFRecordDataset(files) if files else []:
        with np.load(io.BytesIO(record.numpy())) as part:
            ids.append(part["ids"])
            embeddings.append(part["embeddings"])
    if not ids:
        raise ValueError(f"the item catalog produced no embeddings (no parts at {parts_prefix}*)")
    ids, embeddings = np.concatenate(ids), np.concatenate(embeddings)
    order = np.argsort(ids, kind="stable")
    ids, embeddings = ids[order], embeddings[order]
    duplicated = ids[1:][ids[1:] == ids[:-1]]
    if duplicated.size:
        raise ValueError(f"the item catalog has duplicate item ids, e.g. {duplicated[:5].tolist()}")
    return ids, embeddings


def build_index(
    model_dir: str,
    catalog_uri: str,
    output_uri: str,
    beam_pipeline: beam.Pipeline | None = None,
    num_neighbors: int = 100,
    scann_overrides: dict | None = None,
    brute_force_below: int = BRUTE_FORCE_BELOW,
    tree_from: int = TREE_FROM,
    leaves_to_search_fraction: float = LEAVES_TO_SEARCH_FRACTION,
    batch_size: int = 1024,
) -> dict:
    """Everything IndexBuilder does, as a plain function; returns the properties it records."""
    import shutil

    parts_prefix = os.path.join(output_uri, _PARTS_DIR, "part")
    started = time.perf_counter()
    with beam_pipeline or beam.Pipeline() as pipeline:
        embed_catalog(pipeline, os.path.join(catalog_uri, "*"), model_dir, parts_prefix, batch_size)
    ids, embeddings = read_embedding_parts(parts_prefix)
    shutil.rmtree(os.path.join(output_uri, _PARTS_DIR), ignore_errors=True)
    embed_seconds = time.perf_counter() - started

    started = time.perf_counter()
    params = derive_params(
        len(ids),
        num_neighbors=num_neighbors,
        brute_force_below=brute_force_below,
        tree_from=tree_from,
        leaves_to_search_fraction=leaves_to_search_fraction,
        **(scann_overrides or {}),
    )
    index = ScannIndex.build(ids, embeddings, params)
    build_seconds = time.perf_counter() - started
    index.save(os.path.join(output_uri, INDEX_DIR))

    started = time.perf_counter()
    index_export.export_retrieval_models(model_dir, ids, embeddings, output_uri, k=params.num_neighbors, params=params)
    export_seconds = time.perf_counter() - started
    return {
        "num_items": index.num_items,
        "dim": index.dim,
        "k": params.num_neighbors,
        "scann_mode": params.mode,
        "scann_params": params.to_dict(),
        "embed_seconds": round(embed_seconds, 3),
        "build_seconds": round(build_seconds, 3),
        "export_seconds": round(export_seconds, 3),
        "model_dir": model_dir,
    }


@component(use_beam=True)
def IndexBuilder(  # noqa: N802 - TFX names components like classes
    model: InputArtifact[standard_artifacts.Model],
    item_catalog: InputArtifact[ItemCatalog],
    index: OutputArtifact[RetrievalIndex],
    num_neighbors: Parameter[int] = 100,
    scann_overrides: Parameter[str] = "{}",
    brute_force_below: Parameter[int] = BRUTE_FORCE_BELOW,
    tree_from: Parameter[int] = TREE_FROM,
    leaves_to_search_fraction: Parameter[float] = LEAVES_TO_SEARCH_FRACTION,
    batch_size: Parameter[int] = 1024,
    beam_pipeline: BeamComponentParameter[beam.Pipeline] = None,
):
    """Embeds the catalog (Beam), builds the ScaNN index and exports the retrieval SavedModels.

    `num_neighbors` is the K the exported models return; `scann_overrides` is a
    JSON object of ScannParams fields (e.g. {"num_leaves_to_search": 40}) that
    replace the values derived from the catalog size.
    """
    properties = build_index(
        tower_dir(model.uri),
        item_catalog.uri,
        index.uri,
        beam_pipeline=beam_pipeline,
        num_neighbors=num_neighbors,
        scann_overrides=json.loads(scann_overrides or "{}"),
        brute_force_below=brute_force_below,
        tree_from=tree_from,
        leaves_to_search_fraction=leaves_to_search_fraction,
        batch_size=batch_size,
    )
    for key, value in properties.items():
        if isinstance(value, int):
            index.set_int_custom_property(key, value)
        elif isinstance(value, float):
            index.set_float_custom_property(key, value)
        elif isinstance(value, str):
            index.set_string_custom_property(key, value)
        else:
            index.set_json_value_custom_property(key, value)


# --------------------------------------------------------------------------- evaluation


def sample_examples(examples_uri: str, split: str, num: int, seed: int = 0, max_scan: int = 200_000) -> list[bytes]:
    """`num` serialized tf.Examples drawn without replacement from the first `max_scan` of a split."""
    import tensorflow as tf

    files = sorted(glob.glob(os.path.join(examples_uri, f"Split-{split}", "*")))
    if not files:
        raise FileNotFoundError(f"no {split} split under {examples_uri}")
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP").take(max_scan)]
    if not records:
        raise ValueError(f"the {split} split under {examples_uri} is empty")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(records), size=min(num, len(records)), replace=False)
    return [records[i] for i in sorted(chosen)]


def _qps(fn, queries: np.ndarray) -> float:
    started = time.perf_counter()
    fn(queries)
    return len(queries) / max(time.perf_counter() - started, 1e-9)


def evaluate_index(
    index_uri: str,
    examples_uri: str,
    split: str = "eval",
    num_queries: int = 1000,
    latency_queries: int = 200,
    ks: tuple[int, ...] = (10, 100),
    latency_k: int = 10,
    savedmodel_queries: int = 256,
    seed: int = 0,
    frontier_queries: int = 0,
) -> dict:
    """ANN quality and speed of a RetrievalIndex artifact on queries from `split`.

    With `frontier_queries` > 0 the result also holds "frontier": `ann_frontier` over the index's
    embeddings with the first `frontier_queries` queries, the index itself as the served point.
    """
    import tensorflow as tf

    index = ScannIndex.load(os.path.join(index_uri, INDEX_DIR))
    brute_model = index_export.load_retrieval_model(os.path.join(index_uri, index_export.BRUTE_FORCE_DIR))
    scann_model = index_export.load_retrieval_model(os.path.join(index_uri, index_export.SCANN_DIR))
    serialized = sample_examples(examples_uri, split, num_queries, seed)
    embed = brute_model.signatures[f"{index_export.QUERY_TOWER}_examples"]
    queries = np.concatenate(
        [
            embed(examples=tf.constant(serialized[i : i + 1024]))[index_export.EMBEDDING].numpy()
            for i in range(0, len(serialized), 1024)
        ]
    ).astype(np.float32)

    ks = tuple(sorted({min(k, index.num_items) for k in ks}))
    exact, _ = index.exact(queries, max(ks))
    approx, _ = index.search(queries, max(ks))
    metrics: dict = {"num_queries": len(queries), "num_items": index.num_items, "scann_mode": index.params.mode}
    for k in ks:
        metrics[f"recall_at_{k}"] = recall_at_k(approx, exact, k)

    latency_k = min(latency_k, index.num_items)
    sample = queries[:latency_queries]
    scann_latency = latency_ms(lambda q: index.search_one(q, latency_k), sample)
    brute_latency = latency_ms(numpy_single_query(index.embeddings, latency_k), sample)
    metrics.update(
        scann_latency_p50_ms=scann_latency["p50"],
        scann_latency_p99_ms=scann_latency["p99"],
        brute_force_latency_p50_ms=brute_latency["p50"],
        brute_force_latency_p99_ms=brute_latency["p99"],
        latency_speedup_p50=brute_latency["p50"] / max(scann_latency["p50"], 1e-9),
        scann_batch_qps=_qps(lambda q: index.search(q, max(ks), parallel=True), queries),
        brute_force_batch_qps=_qps(lambda q: brute_force_top_k(q, index.embeddings, max(ks)), queries),
    )

    # What would be served: the exported ScaNN model against the exported brute-force one.
    head = tf.constant(serialized[:savedmodel_queries])
    retrieve = f"{index_export.RETRIEVE}_examples"
    brute_ids = brute_model.signatures[retrieve](examples=head)[index_export.ITEM_IDS].numpy()
    scann_ids = scann_model.signatures[retrieve](examples=head)[index_export.ITEM_IDS].numpy()
    k10 = min(10, brute_ids.shape[1])
    metrics[f"savedmodel_recall_at_{k10}"] = recall_at_k(scann_ids.tolist(), brute_ids.tolist(), k10)
    if frontier_queries > 0:
        frontier = ann_frontier(index.ids, index.embeddings, queries[:frontier_queries], k=latency_k, served=index)
        metrics["frontier"] = dict(frontier, source="served index")
    return metrics


def bless(
    metrics: dict,
    min_recall_at_10: float = 0.95,
    min_recall_at_100: float = 0.9,
    max_p99_latency_ms: float = 10.0,
) -> tuple[bool, list[str]]:
    """(blessed, reasons it is not) from the evaluation figures; a missing or NaN figure fails."""
    checks = [
        ("recall_at_10", ">=", min_recall_at_10),
        ("savedmodel_recall_at_10", ">=", min_recall_at_10),
        ("recall_at_100", ">=", min_recall_at_100),
        ("scann_latency_p99_ms", "<=", max_p99_latency_ms),
    ]
    failures = []
    for name, op, bound in checks:
        # small catalogs have no @100 (or @10): the largest K evaluated below it stands in
        value = metrics.get(name)
        if value is None and name.startswith(("recall_at_", "savedmodel_recall_at_")):
            prefix = name.rsplit("_", 1)[0]
            candidates = [k for k in metrics if k.startswith(prefix + "_") and k.rsplit("_", 1)[1].isdigit()]
            if candidates:
                name = max(candidates, key=lambda k: int(k.rsplit("_", 1)[1]))
                value = metrics[name]
        ok = value is not None and np.isfinite(value) and (value >= bound if op == ">=" else value <= bound)
        if not ok:
            failures.append(f"{name} = {value} is not {op} {bound}")
    return not failures, failures


@component
def IndexEvaluator(  # noqa: N802 - TFX names components like classes
    index: InputArtifact[RetrievalIndex],
    examples: InputArtifact[standard_artifacts.Examples],
    blessing: OutputArtifact[standard_artifacts.ModelBlessing],
    split: Parameter[str] = "eval",
    num_queries: Parameter[int] = 1000,
    latency_queries: Parameter[int] = 200,
    ks: Parameter[str] = "10,100",
    min_recall_at_10: Parameter[float] = 0.95,
    min_recall_at_100: Parameter[float] = 0.9,
    max_p99_latency_ms: Parameter[float] = 10.0,
    seed: Parameter[int] = 0,
    frontier_queries: Parameter[int] = 200,
):
    """Measures ScaNN against brute force on sampled `split` queries and blesses the index if it is good enough.

    `ks` is a comma-separated list of K for recall@K (10 and 100 are the guarded ones);
    `frontier_queries` queries (0 = none) sweep the ScaNN query settings for the recall/latency frontier.
    """
    metrics = evaluate_index(
        index.uri,
        examples.uri,
        split=split,
        num_queries=num_queries,
        latency_queries=latency_queries,
        ks=tuple(int(k) for k in ks.split(",") if k.strip()),
        seed=seed,
        frontier_queries=frontier_queries,
    )
    frontier = metrics.pop("frontier", None)
    blessed, failures = bless(metrics, min_recall_at_10, min_recall_at_100, max_p99_latency_ms)
    thresholds = {
        "min_recall_at_10": min_recall_at_10,
        "min_recall_at_100": min_recall_at_100,
        "max_p99_latency_ms": max_p99_latency_ms,
    }
    report = {"blessed": blessed, "failures": failures, "thresholds": thresholds, "metrics": metrics}
    if frontier is not None:
        report["frontier"] = frontier
    os.makedirs(blessing.uri, exist_ok=True)
    with open(os.path.join(blessing.uri, EVALUATION_FILE), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    open(os.path.join(blessing.uri, BLESSED_FILE if blessed else NOT_BLESSED_FILE), "w").close()

    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_string_custom_property("index_uri", index.uri)
    blessing.set_json_value_custom_property("failures", failures)
    for key, value in metrics.items():
        if isinstance(value, str):
            blessing.set_string_custom_property(key, value)
        elif isinstance(value, int | np.integer):
            blessing.set_int_custom_property(key, int(value))
        else:
            blessing.set_float_custom_property(key, float(value))


def read_evaluation(blessing_uri: str) -> dict:
    """The IndexEvaluator report ({blessed, failures, thresholds, metrics}) stored in a blessing artifact."""
    with open(os.path.join(blessing_uri, EVALUATION_FILE), encoding="utf-8") as f:
        return json.load(f)


def format_evaluation(report: dict) -> str:
    """A few lines for the CLI: verdict, recall, latency, throughput."""
    m = report["metrics"]
    recalls = ", ".join(
        f"{k.replace('recall_at_', 'recall@')} {v:.4f}" for k, v in m.items() if k.startswith("recall_at_")
    )
    lines = [
        f"Index {'BLESSED' if report['blessed'] else 'NOT blessed'}: {m['num_items']:,} items ({m['scann_mode']}), "
        f"{m['num_queries']:,} queries",
        f"  ANN vs exact: {recalls}",
        f"  single query p50/p99: ScaNN {m['scann_latency_p50_ms']:.3f}/{m['scann_latency_p99_ms']:.3f} ms, "
        f"brute force {m['brute_force_latency_p50_ms']:.3f}/{m['brute_force_latency_p99_ms']:.3f} ms",
        f"  batched: ScaNN {m['scann_batch_qps']:,.0f} QPS, brute force {m['brute_force_batch_qps']:,.0f} QPS",
    ]
    frontier = report.get("frontier")
    if frontier:
        best = [frontier["points"][i] for i in frontier["frontier"]]
        lines.append(
            f"  recall/latency frontier ({len(frontier['points'])} ScaNN settings): "
            + ", ".join(f"{p['recall']:.3f} @ {p['p50_ms']:.3f} ms" for p in best)
        )
    lines += [f"  failed: {failure}" for failure in report["failures"]]
    return "\n".join(lines)
