"""Retrieval SavedModels: the two-tower query tower followed by a top-K layer over the catalog.

Two flavours are written side by side:

  brute_force/  `tfrs.layers.factorized_top_k.BruteForce`: a mat-mul and
                `tf.math.top_k`, only stock ops, so stock TF Serving serves it.
  scann/        `tfrs.layers.factorized_top_k.ScaNN` built with the index's
                ScannParams; needs a server with the ScaNN ops registered
                (`import scann` in Python, or the tf-serving-scann image).

Signatures of both (inputs exactly as the two-tower's `query_tower`):

  retrieve / retrieve_examples   raw query features (or serialized
                                 tf.Examples) -> {"item_ids": [B, K] string,
                                 "scores": [B, K] float32}; serving_default
  query_tower / query_tower_examples   the query embedding, passed through,
                                 so one model answers both questions
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from towerflow.components.index.scann_index import ScannParams, derive_params  # noqa: E402

BRUTE_FORCE_DIR = "brute_force"
SCANN_DIR = "scann"
RETRIEVE = "retrieve"
QUERY_TOWER = "query_tower"
EMBEDDING = "embedding"
ITEM_IDS = "item_ids"
SCORES = "scores"


def _scann_ops():
    from scann.scann_ops.py import scann_ops  # registers the ScaNN TF ops

    return scann_ops


class ConfiguredScaNN(tfrs.layers.factorized_top_k.ScaNN):
    """The TFRS ScaNN layer, but built with our ScannParams (no-tree and brute-force modes included).

    TFRS's layer always builds tree + AH with its own defaults, which fails on
    small catalogs; `index()` calls `self._build_searcher`, so replacing it is
    the one seam the layer offers.
    """

    def __init__(self, params: ScannParams, k: int, name: str | None = None):
        super().__init__(k=k, distance_measure="dot_product", name=name)
        self.params = params

        def build_searcher(candidates):
            builder = _scann_ops().builder(db=candidates, num_neighbors=k, distance_measure="dot_product")
            return params.configure(builder).build(shared_name=f"{self.name}/{uuid.uuid4()}")

        self._build_searcher = build_searcher

    def get_config(self) -> dict:
        return {"k": self._k, "params": self.params.to_dict(), "name": self.name}


class RetrievalModule(tf.Module):
    """Tracks the loaded two-tower SavedModel and the top-K layer so both are saved."""

    def __init__(self, tower: tf.Module, top_k: tf.keras.layers.Layer, k: int):
        super().__init__()
        self.tower = tower
        self.top_k = top_k
        self.k = k

    def signatures(self) -> dict:
        query = self.tower.signatures[QUERY_TOWER]
        query_examples = self.tower.signatures[f"{QUERY_TOWER}_examples"]
        raw_specs = query.structured_input_signature[1]

        def top_k(embedding):
            scores, ids = self.top_k(embedding, k=self.k)
            return {ITEM_IDS: ids, SCORES: scores}

        @tf.function(input_signature=[raw_specs])
        def retrieve(raw):
            return top_k(query(**raw)[EMBEDDING])

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def retrieve_examples(examples):
            return top_k(query_examples(examples=examples)[EMBEDDING])

        @tf.function(input_signature=[raw_specs])
        def embed(raw):
            return {EMBEDDING: query(**raw)[EMBEDDING]}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def embed_examples(examples):
            return {EMBEDDING: query_examples(examples=examples)[EMBEDDING]}

        signatures = {
            RETRIEVE: retrieve.get_concrete_function(),
            f"{RETRIEVE}_examples": retrieve_examples.get_concrete_function(),
            QUERY_TOWER: embed.get_concrete_function(),
            f"{QUERY_TOWER}_examples": embed_examples.get_concrete_function(),
        }
        signatures["serving_default"] = signatures[RETRIEVE]
        return signatures


def export_retrieval_models(
    tower_dir: str,
    item_ids: np.ndarray,
    embeddings: np.ndarray,
    output_dir: str,
    k: int = 100,
    params: ScannParams | None = None,
) -> dict[str, str]:
    """Writes `<output_dir>/brute_force` and `<output_dir>/scann`; returns flavour -> path.

    `tower_dir` is the two-tower Trainer's `Format-Serving` SavedModel; `k` is
    clipped to the catalog size; `params` default to `derive_params(n, k)`.
    """
    item_ids = np.asarray(item_ids).astype(str)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    k = max(1, min(k, len(item_ids)))
    params = params or derive_params(len(item_ids), num_neighbors=k)
    if params.num_neighbors != k:
        params = ScannParams.from_dict({**params.to_dict(), "num_neighbors": k})
    candidates = tf.constant(embeddings)
    identifiers = tf.constant(item_ids.astype(object))
    layers = {
        BRUTE_FORCE_DIR: tfrs.layers.factorized_top_k.BruteForce(k=k, name="brute_force_top_k"),
        SCANN_DIR: ConfiguredScaNN(params, k=k, name="scann_top_k"),
    }
    tower = tf.saved_model.load(tower_dir)
    paths = {}
    for flavour, layer in layers.items():
        layer.index(candidates, identifiers)
        module = RetrievalModule(tower, layer, k)
        path = os.path.join(output_dir, flavour)
        tf.saved_model.save(module, path, signatures=module.signatures())
        paths[flavour] = path
    return paths


def load_retrieval_model(path: str):
    """Loads either flavour (registers the ScaNN ops first, which the scann/ model needs)."""
    _scann_ops()
    return tf.saved_model.load(path)
