"""TFX Trainer entry points: `run_two_tower` (retrieval) and `run_ranking` (DCN).

Each reads Transform's transformed examples with a tf.data pipeline (parallel
interleave and parse, large batches, prefetch), trains with a TensorBoard log,
and exports a SavedModel whose signatures take RAW features (models/export.py):

  retrieval:  query_tower, candidate_tower (+ *_examples); default query_tower
  ranking:    ranker (+ ranker_examples) -> rating, liked_probability,
              interaction_score; default ranker

Hyper-parameters come from the Trainer's `custom_config`:
  {"two_tower": {...TwoTowerConfig fields...}} or {"ranking": {...RankingConfig fields...}}
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from absl import logging

from towerflow.models import distribution, export, input_pipeline
from towerflow.models import embeddings as E
from towerflow.models import features as F
from towerflow.models.preprocessing import table_sizes_from_transform_output
from towerflow.models.ranking import DCNRankingModel, RankingConfig
from towerflow.models.two_tower import RecencyWeighting, TwoTowerConfig, TwoTowerModel

QUERY_TOWER = "query_tower"
CANDIDATE_TOWER = "candidate_tower"
RANKER = "ranker"
EMBEDDING_OUTPUT = "embedding"
# The ranker also sees the item's popularity as of the request (`features.item_features_at`).
RANKER_FEATURES = F.QUERY_FEATURES + F.CANDIDATE_FEATURES + F.ITEM_POINT_IN_TIME_FEATURES


def input_fn(
    file_pattern: str | Sequence[str],
    tft_output: tft.TFTransformOutput,
    batch_size: int,
    shuffle: bool = True,
    seed: int | None = None,
) -> tf.data.Dataset:
    """Batches of transformed features: parallel interleave, batch-then-parse, prefetch."""
    spec = tft_output.transformed_feature_spec()
    # Parsing a whole batch in one op is much cheaper than one example at a time.
    return (
        input_pipeline.records(file_pattern, shuffle, seed)
        .batch(batch_size, drop_remainder=shuffle)
        .map(lambda serialized: tf.io.parse_example(serialized, spec), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


def naive_input_fn(file_pattern: str | Sequence[str], tft_output: tft.TFTransformOutput, batch_size: int):
    """The baseline the benchmark compares against: sequential read, per-example parse, no prefetch."""
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files = sorted(p for pattern in patterns for p in tf.io.gfile.glob(pattern))
    spec = tft_output.transformed_feature_spec()
    return (
        tf.data.TFRecordDataset(files, compression_type="GZIP")
        .map(lambda serialized: tf.io.parse_single_example(serialized, spec))
        .batch(batch_size)
    )


def _columns(dataset: tf.data.Dataset, keys) -> dict[str, np.ndarray]:
    """The `keys` of every batch of `dataset`, concatenated in dataset order."""
    parts: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    for batch in dataset:
        for key in keys:
            parts[key].append(batch[key].numpy())
    return {key: np.concatenate(values) for key, values in parts.items()}


def _catalog_from_columns(columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each distinct item's candidate features as of its first row, ordered by item id."""
    keys = E.CANDIDATE_ID_FEATURES + (F.ITEM_LOG_FREQUENCY_XF,)
    _, first = np.unique(columns[F.ITEM_ID_XF], return_index=True)
    return {key: columns[key][first] for key in keys}


def training_columns(file_pattern, tft_output: tft.TFTransformOutput, keys, batch_size: int = 8192):
    """Only `keys` of every training example, in file order: one read that parses nothing else."""
    spec = {key: value for key, value in tft_output.transformed_feature_spec().items() if key in set(keys)}
    dataset = (
        input_pipeline.records(file_pattern, shuffle=False, seed=None)
        .batch(batch_size)
        .map(lambda serialized: tf.io.parse_example(serialized, spec), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    return _columns(dataset, keys)


def _config(custom_config: Mapping | None, key: str, cls):
    values = dict((custom_config or {}).get(key, {}))
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields in custom_config[{key!r}]: {sorted(unknown)}")
    return cls(**values)


class _Progress(tf.keras.callbacks.Callback):
    """One log line per epoch with throughput, so long trainings show they are alive."""

    def __init__(self, name: str, batch_size: int):
        super().__init__()
        self._name, self._batch_size = name, batch_size

    def on_epoch_begin(self, epoch, logs=None):
        # Steps from the optimizer's counter: batch hooks are not allowed under parameter_server.
        self._start, self._first_step = time.time(), int(self.model.optimizer.iterations.numpy())

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.time() - self._start
        steps = int(self.model.optimizer.iterations.numpy()) - self._first_step
        rate = steps * self._batch_size / max(seconds, 1e-9)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted((logs or {}).items()))
        logging.info("%s epoch %d: %.1fs, %.0f examples/s, %s", self._name, epoch + 1, seconds, rate, shown)
        print(f"{self._name} epoch {epoch + 1}: {seconds:.1f}s, {rate:,.0f} examples/s, {shown}", flush=True)


def _fit(
    model,
    fn_args,
    batch_size: int,
    epochs: int,
    name: str,
    seed: int,
    dist: distribution.Distribution,
    bucket_hours: float = 0.0,
    examples: int | None = None,
):
    """Trains on the train files, validates on the eval files (not under parameter_server: the chief
    only coordinates there). `batch_size` is per micro-batch; replicas split it (`Distribution.global_batch_size`).

    With an example budget (custom_config["example_budget"], the pipeline's --example-budget) the
    epochs are `input_pipeline.budgeted_epochs`: fewer passes over larger data, at least one.
    `examples`: the training examples when the caller already counted them (else the files are read).
    Validation reads at most `input_pipeline.VALIDATION_EXAMPLES` eval examples per epoch
    (custom_config["validation_examples"]; 0 for all).
    """
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    budget = (fn_args.custom_config or {}).get(input_pipeline.EXAMPLE_BUDGET_KEY)
    if budget is not None and not dist.config.steps_per_epoch:
        if examples is None:
            examples = input_pipeline.count_records(fn_args.train_files)
        configured, epochs = epochs, input_pipeline.budgeted_epochs(epochs, examples, int(budget))
        print(
            f"{name}: {examples:,} training examples, budget {int(budget):,}: {epochs} of {configured} epochs",
            flush=True,
        )
    if bucket_hours:

        def make_train(batch):
            return input_pipeline.day_batches(fn_args.train_files, tft_output, batch, bucket_hours, seed=seed)

        def make_eval(batch):
            # A fixed seed: the same validation batches every epoch.
            return input_pipeline.day_batches(fn_args.eval_files, tft_output, batch, bucket_hours, seed=0)

    else:

        def make_train(batch):
            return input_fn(fn_args.train_files, tft_output, batch, shuffle=True, seed=seed)

        def make_eval(batch):
            return input_fn(fn_args.eval_files, tft_output, batch, shuffle=False)

    limit = int(
        (fn_args.custom_config or {}).get(input_pipeline.VALIDATION_EXAMPLES_KEY, input_pipeline.VALIDATION_EXAMPLES)
    )
    if limit:
        make_all_eval = make_eval

        def make_eval(batch):
            # a bounded validation: the first batches of the (fixed-order) eval data, every epoch
            return make_all_eval(batch).take(-(-limit // batch))

    distribution.report_global_metrics(model, dist)
    distribution.enable_gradient_accumulation(model, dist.config.gradient_accumulation_steps)
    callbacks = distribution.checkpoint_callbacks(dist, getattr(fn_args, "model_run_dir", None), name)
    callbacks.append(_Progress(name, dist.global_batch_size(batch_size)))
    if getattr(fn_args, "model_run_dir", None):
        callbacks.append(tf.keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq="epoch"))
    inputs = distribution.fit_inputs(dist, make_train, make_eval, batch_size)
    history = model.fit(epochs=epochs, callbacks=callbacks, verbose=0, **inputs)
    return tft_output, history


def _write_training_summary(path: str, config, history, dist: distribution.Distribution, model) -> None:
    summary = {
        "config": dataclasses.asdict(config),
        "history": {k: [float(x) for x in v] for k, v in history.history.items()},
    }
    if dist.config.distributed:
        summary["distribution"] = {
            "config": dataclasses.asdict(dist.config),
            "cluster": dist.role.cluster,
            "replicas": dist.strategy.num_replicas_in_sync,
            "steps": int(model.optimizer.iterations.numpy()),
            "embedding_placement": distribution.embedding_placement(model),
        }
    tf.io.gfile.makedirs(path)
    with tf.io.gfile.GFile(os.path.join(path, "training_summary.json"), "w") as f:
        f.write(json.dumps(summary, indent=2, sort_keys=True))


def _export_and_summarize(dist: distribution.Distribution, export_fn, fn_args, config, history, model) -> None:
    """Every worker exports (TensorFlow expects all to take part); only the chief's copy is kept."""
    path = dist.output_dir(fn_args.serving_model_dir)
    export_fn(path)
    dist.discard(fn_args.serving_model_dir, path)
    dist.await_chief_export(fn_args.serving_model_dir)
    if dist.is_chief:
        _write_training_summary(fn_args.model_run_dir or fn_args.serving_model_dir, config, history, dist, model)


def build_two_tower(
    config: TwoTowerConfig, tft_output: tft.TFTransformOutput, catalog=None, recency: RecencyWeighting | None = None
) -> TwoTowerModel:
    model = TwoTowerModel(config, table_sizes_from_transform_output(tft_output), catalog=catalog, recency=recency)
    model.compile()
    return model


def export_two_tower(model: TwoTowerModel, tft_output: tft.TFTransformOutput, path: str) -> None:
    export.export_saved_model(
        path,
        tft_output,
        {"query": model.query_model, "candidate": model.candidate_model},
        {
            QUERY_TOWER: (F.QUERY_FEATURES, lambda m, xf: {EMBEDDING_OUTPUT: m.models["query"](xf)}),
            CANDIDATE_TOWER: (F.CANDIDATE_FEATURES, lambda m, xf: {EMBEDDING_OUTPUT: m.models["candidate"](xf)}),
        },
        default=QUERY_TOWER,
    )


def export_ranking(model: DCNRankingModel, tft_output: tft.TFTransformOutput, path: str) -> None:
    def head(module, xf):
        return {key: tf.reshape(value, [-1]) for key, value in module.models["ranker"](xf).items()}

    export.export_saved_model(
        path,
        tft_output,
        {"ranker": model},
        {RANKER: (RANKER_FEATURES, head)},
        default=RANKER,
        # rank_candidates: the same outputs for ONE query row ([1] inputs) and N candidate rows, the
        # online call (the service sends the user's features once; models/export.py)
        broadcast={
            "rank_candidates": (
                RANKER,
                F.QUERY_FEATURES,
                F.CANDIDATE_FEATURES + F.ITEM_POINT_IN_TIME_FEATURES,
                F.QUERY_FEATURES_XF,
            )
        },
    )


def run_two_tower(fn_args) -> None:
    """TFX Trainer run_fn of the two-tower retrieval model."""
    # First: a multi-worker strategy must exist before any TensorFlow op runs.
    dist = distribution.start(fn_args.custom_config)
    if dist is None:
        return  # a parameter-server cluster's worker or ps task; it served until stopped
    config = dist.scaled(_config(fn_args.custom_config, "two_tower", TwoTowerConfig))
    seed = int((fn_args.custom_config or {}).get("seed", 0))
    tf.keras.utils.set_random_seed(seed)
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    catalog = recency = examples = None
    if config.num_random_negatives or config.recency_half_life_days:
        # One read of the training files for the catalog, the recency weights and the example count,
        # parsing only the columns they need.
        keys = (F.TIMESTAMP_XF,) + (E.CANDIDATE_ID_FEATURES + (F.ITEM_LOG_FREQUENCY_XF,)) * bool(
            config.num_random_negatives
        )
        columns = training_columns(fn_args.train_files, tft_output, keys)
        examples = len(columns[F.TIMESTAMP_XF])
        if config.num_random_negatives:
            catalog = _catalog_from_columns(columns)
        if config.recency_half_life_days:
            recency = RecencyWeighting.from_timestamps(columns[F.TIMESTAMP_XF], config.recency_half_life_days)
            print(f"two_tower recency weighting: {recency}", flush=True)
        del columns
    with dist.strategy.scope():
        model = build_two_tower(config, tft_output, catalog, recency)
    _, history = _fit(model, fn_args, config.batch_size, config.epochs, "two_tower", seed, dist, examples=examples)
    _export_and_summarize(dist, lambda path: export_two_tower(model, tft_output, path), fn_args, config, history, model)


def run_ranking(fn_args) -> None:
    """TFX Trainer run_fn of the DCN ranking model."""
    dist = distribution.start(fn_args.custom_config)
    if dist is None:
        return  # a parameter-server cluster's worker or ps task; it served until stopped
    config = dist.scaled(_config(fn_args.custom_config, "ranking", RankingConfig))
    seed = int((fn_args.custom_config or {}).get("seed", 0))
    tf.keras.utils.set_random_seed(seed)
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    with dist.strategy.scope():
        model = DCNRankingModel(config, table_sizes_from_transform_output(tft_output))
        model.compile()
    bucket_hours = config.time_bucket_hours if config.interaction_weight else 0.0
    _, history = _fit(model, fn_args, config.batch_size, config.epochs, "ranking", seed, dist, bucket_hours)
    _export_and_summarize(dist, lambda path: export_ranking(model, tft_output, path), fn_args, config, history, model)
