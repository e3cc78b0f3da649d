"""Embedding tables and the feature encoders the retrieval and ranking models share.

One switch, `EmbeddingBackend`, decides how the tables are built:

* ``"keras"``: one `tf.keras.layers.Embedding` per table. Used for CPU/GPU
  training and always for the serving models.
* ``"tpu"``: `tfrs.layers.embedding.TPUEmbedding`, which shards the tables over
  the TPU embedding cores under a `TPUStrategy`. Under any other strategy it
  falls back to `TPUEmbeddingForServing` (plain variables and CPU lookups), so
  the same code trains on a laptop; this needs a *legacy* Keras optimizer.

The two backends keep their variables in different places, so a checkpoint
written by a TPU-backend model is loaded into a TPU-backend model built on CPU
and then copied with `tpu_to_keras_weights` into the Keras-backend serving
model (same config, same tables, same values).

`FeatureEmbeddings` looks up any subset of the configured features. With the
TPU backend only the full set runs through the TPU path; that is how the
models call it during training (one lookup for query and candidate features),
while the separately exported towers look up their own subset through the
serving path.

The encoders turn looked-up embeddings plus dense features into one vector:
`QueryFeatureEncoder` (user, history, context, activity) and
`CandidateFeatureEncoder` (item id and content). The two-tower towers and the
DCN ranker both use them, so a feature is wired in exactly one place.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from towerflow.models import features as F
from towerflow.models import preprocessing as P

EmbeddingBackend = Literal["keras", "tpu"]
EMBEDDING_BACKENDS: tuple[str, ...] = get_args(EmbeddingBackend)
OptimizerName = Literal["adagrad", "adam"]
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
HistoryPoolingMode = Literal["mean", "attention", "transformer"]
HISTORY_POOLING_MODES: tuple[str, ...] = get_args(HistoryPoolingMode)

# Which table each transformed id feature reads. History entries and candidate
# ids share the item table: one item, one embedding row.
FEATURE_TABLES: dict[str, str] = {
    F.USER_ID_XF: P.USER_ID_TABLE,
    F.USER_GENDER_XF: P.USER_GENDER_TABLE,
    F.USER_OCCUPATION_XF: P.USER_OCCUPATION_TABLE,
    F.USER_ZIP_PREFIX_XF: P.USER_ZIP_PREFIX_TABLE,
    F.USER_AGE_BUCKET_XF: P.USER_AGE_BUCKET_TABLE,
    F.HIST_ITEM_IDS_XF: P.ITEM_ID_TABLE,
    F.CTX_HOUR_XF: P.CTX_HOUR_TABLE,
    F.CTX_DAY_OF_WEEK_XF: P.CTX_DAY_OF_WEEK_TABLE,
    F.ITEM_ID_XF: P.ITEM_ID_TABLE,
    F.ITEM_GENRES_XF: P.ITEM_GENRE_TABLE,
    F.ITEM_TITLE_TOKENS_XF: P.ITEM_TITLE_TOKEN_TABLE,
    F.ITEM_YEAR_BUCKET_XF: P.ITEM_YEAR_BUCKET_TABLE,
}
QUERY_ID_FEATURES = (
    F.USER_ID_XF,
    F.USER_GENDER_XF,
    F.USER_OCCUPATION_XF,
    F.USER_ZIP_PREFIX_XF,
    F.USER_AGE_BUCKET_XF,
    F.HIST_ITEM_IDS_XF,
    F.CTX_HOUR_XF,
    F.CTX_DAY_OF_WEEK_XF,
)
QUERY_DENSE_FEATURES = (F.USER_PRIOR_COUNT_LOG_XF, F.USER_PRIOR_MEAN_RATING_XF, F.USER_DAYS_SINCE_FIRST_LOG_XF)
CANDIDATE_ID_FEATURES = (F.ITEM_ID_XF, F.ITEM_GENRES_XF, F.ITEM_TITLE_TOKENS_XF, F.ITEM_YEAR_BUCKET_XF)


@dataclass(frozen=True)
class TableSpec:
    """One embedding table: its name, number of rows and width."""

    name: str
    rows: int
    dim: int


def table_specs(
    table_sizes: Mapping[str, int], user_id_dim: int, item_id_dim: int, feature_dim: int
) -> list[TableSpec]:
    """Table specs for every table in FEATURE_TABLES: ids get their own widths."""
    dims = {P.USER_ID_TABLE: user_id_dim, P.ITEM_ID_TABLE: item_id_dim}
    names = sorted(set(FEATURE_TABLES.values()))
    missing = [name for name in names if name not in table_sizes]
    if missing:
        raise ValueError(f"table_sizes lacks rows for tables {missing}; see preprocessing.table_sizes")
    return [TableSpec(name, int(table_sizes[name]), dims.get(name, feature_dim)) for name in names]


def make_optimizer(name: OptimizerName, learning_rate: float) -> tf.keras.optimizers.legacy.Optimizer:
    """A legacy Keras optimizer: TPUEmbedding only translates those to its own."""
    if name == "adagrad":
        return tf.keras.optimizers.legacy.Adagrad(learning_rate=learning_rate)
    if name == "adam":
        return tf.keras.optimizers.legacy.Adam(learning_rate=learning_rate)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def _initializer(dim: int) -> tf.keras.initializers.Initializer:
    # The TPU tables' default initializer, used for both backends so that they
    # train alike.
    return tf.keras.initializers.TruncatedNormal(mean=0.0, stddev=1.0 / math.sqrt(dim))


class FeatureEmbeddings(tf.keras.layers.Layer):
    """Embedding lookups for transformed id features, Keras or TPU backed.

    `call` takes a dict of int id tensors (any subset of `feature_tables`) and
    returns a dict of embeddings: [B, D] for [B] ids, [B, L, D] for [B, L] ids.
    """

    def __init__(
        self,
        tables: Sequence[TableSpec],
        feature_tables: Mapping[str, str],
        backend: EmbeddingBackend = "keras",
        optimizer: tf.keras.optimizers.legacy.Optimizer | None = None,
        name: str = "feature_embeddings",
    ):
        super().__init__(name=name)
        if backend not in EMBEDDING_BACKENDS:
            raise ValueError(f"backend must be one of {EMBEDDING_BACKENDS}, got {backend!r}")
        specs = {spec.name: spec for spec in tables}
        unknown = sorted(set(feature_tables.values()) - set(specs))
        if unknown:
            raise ValueError(f"features refer to tables without a spec: {unknown}")
        self.backend = backend
        self.table_specs = specs
        self.feature_tables = dict(feature_tables)
        if backend == "keras":
            self._tables = {
                name: tf.keras.layers.Embedding(
                    spec.rows, spec.dim, embeddings_initializer=_initializer(spec.dim), name=name
                )
                for name, spec in specs.items()
            }
            # Built now, not on first lookup: a tower looks up only its own
            # tables, and weight transfer needs every table to exist.
            for layer in self._tables.values():
                layer.build(tf.TensorShape([None]))
        else:
            table_configs = {
                name: tf.tpu.experimental.embedding.TableConfig(
                    vocabulary_size=spec.rows, dim=spec.dim, initializer=_initializer(spec.dim), name=name
                )
                for name, spec in specs.items()
            }
            self._table_configs = table_configs
            self._feature_configs = {
                feature: tf.tpu.experimental.embedding.FeatureConfig(table=table_configs[table], name=feature)
                for feature, table in self.feature_tables.items()
            }
            # The optimizer is translated for the TPU's embedding cores; on
            # other strategies it is only used to create slot variables.
            self._tpu = tfrs.layers.embedding.TPUEmbedding(self._feature_configs, optimizer)

    def call(self, ids: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        unknown = sorted(set(ids) - set(self.feature_tables))
        if unknown:
            raise ValueError(f"no embedding table configured for features {unknown}")
        if self.backend == "keras":
            return {feature: self._tables[self.feature_tables[feature]](value) for feature, value in ids.items()}
        ids = {feature: tf.cast(value, tf.int32) for feature, value in ids.items()}
        if set(ids) == set(self._feature_configs):
            return self._tpu(ids)
        # A subset (one tower on its own, e.g. for export) uses the CPU serving
        # lookup on the same tables; on a TPU only full lookups are supported.
        return self._tpu(ids, serving_config={feature: self._feature_configs[feature] for feature in ids})

    def table_variables(self) -> dict[str, tf.Variable]:
        """The table variables keyed by table name (the layer must be built)."""
        if self.backend == "keras":
            return {name: layer.embeddings for name, layer in self._tables.items()}
        return {config.name: variable for config, variable in self._tpu.embedding_tables.items()}


def optimizer_and_embeddings(
    config, table_sizes: Mapping[str, int], optimizer: tf.keras.optimizers.legacy.Optimizer | None = None
) -> tuple[tf.keras.optimizers.legacy.Optimizer, FeatureEmbeddings]:
    """A model's optimizer (the given one, else the config's) and its embedding tables.

    `config` is a TwoTowerConfig or RankingConfig: anything with optimizer, learning_rate,
    user_id_dim, item_id_dim, feature_dim and embedding_backend. The TPU tables need the optimizer,
    so one object serves both them and `compile()`.
    """
    optimizer = optimizer or make_optimizer(config.optimizer, config.learning_rate)
    embeddings = build_feature_embeddings(
        table_sizes, config.user_id_dim, config.item_id_dim, config.feature_dim, config.embedding_backend, optimizer
    )
    return optimizer, embeddings


def build_feature_embeddings(
    table_sizes: Mapping[str, int],
    user_id_dim: int,
    item_id_dim: int,
    feature_dim: int,
    backend: EmbeddingBackend,
    optimizer: tf.keras.optimizers.legacy.Optimizer | None,
) -> FeatureEmbeddings:
    """The tables for every transformed id feature of the feature contract."""
    specs = table_specs(table_sizes, user_id_dim, item_id_dim, feature_dim)
    return FeatureEmbeddings(specs, FEATURE_TABLES, backend=backend, optimizer=optimizer)


# --- transferring a TPU-trained model into the Keras-backend model ------------------


def _feature_embeddings_of(model: tf.Module) -> FeatureEmbeddings:
    layers = {id(m): m for m in model.submodules if isinstance(m, FeatureEmbeddings)}
    if len(layers) != 1:
        raise ValueError(f"expected exactly one FeatureEmbeddings in {model.name}, found {len(layers)}")
    return next(iter(layers.values()))


def tpu_to_keras_weights(tpu_model: tf.keras.Model, keras_model: tf.keras.Model) -> None:
    """Copies all weights of a TPU-backend model into its Keras-backend twin.

    Both models must be built from the same config and table sizes (differing
    only in the embedding backend) and must have been called once so that
    their variables exist. Embedding tables are matched by table name, every
    other weight by position, which is stable because the two models are built
    by the same code. To serve a TPU checkpoint: build the TPU-backend model on
    CPU, restore the checkpoint into it, then call this.
    """
    source, target = _feature_embeddings_of(tpu_model), _feature_embeddings_of(keras_model)
    source_tables, target_tables = source.table_variables(), target.table_variables()
    if set(source_tables) != set(target_tables):
        raise ValueError(f"embedding tables differ: {sorted(source_tables)} vs {sorted(target_tables)}")
    for name, variable in source_tables.items():
        if variable.shape != target_tables[name].shape:
            raise ValueError(f"table {name}: shape {variable.shape} vs {target_tables[name].shape}")
        target_tables[name].assign(variable.read_value())

    def other_weights(model: tf.keras.Model, layer: FeatureEmbeddings) -> list[tf.Variable]:
        skip = {id(v) for v in layer.weights}
        return [w for w in model.weights if id(w) not in skip]

    source_rest, target_rest = other_weights(tpu_model, source), other_weights(keras_model, target)
    if len(source_rest) != len(target_rest):
        raise ValueError(f"models differ: {len(source_rest)} vs {len(target_rest)} non-embedding weights")
    for src, dst in zip(source_rest, target_rest):
        if src.shape != dst.shape:
            raise ValueError(f"weight {src.name} {src.shape} does not fit {dst.name} {dst.shape}")
        dst.assign(src.read_value())


# --- distribution strategy ------------------------------------------------------------


def _tpu_address() -> str | None:
    """The TPU to connect to, or None; decided without network calls."""
    for variable in ("TPU_NAME", "COLAB_TPU_ADDR"):
        if os.environ.get(variable):
            return os.environ[variable]
    if tf.config.list_physical_devices("TPU"):
        return "local"  # a TPU VM with its chips attached to this host
    return None


def strategy_for_hardware(tpu: str | None = None) -> tf.distribute.Strategy:
    """TPUStrategy if a TPU is reachable, Mirrored with >1 GPU, else the default.

    Build the models inside `strategy.scope()` so that the TPU backend shards
    its tables over the TPU embedding cores.
    """
    address = tpu or _tpu_address()
    if address is not None:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="" if address == "local" else address)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


# --- config validation shared by the model configs ---------------------------------


def require_int(name: str, value, minimum: int) -> None:
    """Raises ValueError unless `value` is an int >= minimum (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def require_positive(name: str, value) -> None:
    """Raises ValueError unless `value` is a number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")


def require_choice(name: str, value, choices: Sequence) -> None:
    """Raises ValueError unless `value` is one of `choices` (compared by type too)."""
    if not any(type(value) is type(choice) and value == choice for choice in choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


# --- pooling and encoders -------------------------------------------------------------


def padding_mask(ids: tf.Tensor) -> tf.Tensor:
    """float32 mask, 1.0 for real entries and 0.0 for PAD_ID."""
    return tf.cast(tf.not_equal(ids, F.PAD_ID), tf.float32)


def masked_mean(embeddings: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
    """Mean of [B, L, D] embeddings over the non-padding positions; zeros if none."""
    mask = padding_mask(ids)[:, :, tf.newaxis]
    total = tf.reduce_sum(embeddings * mask, axis=1)
    return total / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


class HistoryPooling(tf.keras.layers.Layer):
    """Pools the history's item embeddings into one vector.

    "mean" averages the real (non-padding) items. "attention" weights them by
    their scaled dot product with a projection of the user's id embedding, so
    different users read different parts of the same history. "transformer" is
    a SASRec-style sequential encoder (Kang & McAuley 2018): learned position
    embeddings, one causal self-attention block (2 heads, residual + layer norm,
    then a residual feed-forward + layer norm) over the oldest-first history,
    and the output at the newest real item is the pooled vector. An empty
    history pools to zeros in every mode.
    """

    def __init__(self, mode: HistoryPoolingMode = "mean", **kwargs):
        super().__init__(**kwargs)
        if mode not in HISTORY_POOLING_MODES:
            raise ValueError(f"history pooling must be one of {HISTORY_POOLING_MODES}, got {mode!r}")
        self.mode = mode

    def build(self, input_shape):
        item_dim = int(input_shape[0][-1])
        if self.mode == "attention":
            self._query_projection = tf.keras.layers.Dense(item_dim, use_bias=False, name="query_projection")
        if self.mode == "transformer":
            length = int(input_shape[0][1])
            self._positions = self.add_weight(
                name="positions",
                shape=(length, item_dim),
                initializer=tf.keras.initializers.TruncatedNormal(stddev=0.02),
            )
            heads = 2 if item_dim % 2 == 0 else 1
            self._self_attention = tf.keras.layers.MultiHeadAttention(
                num_heads=heads, key_dim=item_dim // heads, name="self_attention"
            )
            self._attention_norm = tf.keras.layers.LayerNormalization(name="attention_norm")
            self._feed_forward = mlp((2 * item_dim,), item_dim, name="feed_forward")
            self._feed_forward_norm = tf.keras.layers.LayerNormalization(name="feed_forward_norm")
        super().build(input_shape)

    def _sequential(self, history: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
        mask = padding_mask(ids)  # [B, L], histories are right-padded
        x = history + self._positions[tf.newaxis] * mask[:, :, tf.newaxis]
        length = tf.shape(ids)[1]
        causal = tf.linalg.band_part(tf.ones([length, length]), -1, 0)  # position i sees positions <= i
        allowed = causal[tf.newaxis] * mask[:, tf.newaxis, :]
        x = self._attention_norm(x + self._self_attention(x, x, attention_mask=tf.cast(allowed, tf.bool)))
        x = self._feed_forward_norm(x + self._feed_forward(x))
        count = tf.cast(tf.reduce_sum(mask, axis=1), tf.int32)
        newest = tf.gather(x, tf.maximum(count - 1, 0), batch_dims=1)
        return newest * tf.cast(count > 0, tf.float32)[:, tf.newaxis]

    def call(self, inputs):
        history, ids, query = inputs
        if self.mode == "mean":
            return masked_mean(history, ids)
        if self.mode == "transformer":
            return self._sequential(history, ids)
        mask = padding_mask(ids)
        q = self._query_projection(query)
        scores = tf.einsum("bld,bd->bl", history, q) / math.sqrt(float(history.shape[-1]))
        # Padding gets a large negative score, and is multiplied out after the
        # softmax so that an all-padding row pools to zeros instead of NaN.
        weights = tf.nn.softmax(scores + (1.0 - mask) * -1e9, axis=-1) * mask
        return tf.einsum("bl,bld->bd", weights, history)


class QueryFeatureEncoder(tf.keras.layers.Layer):
    """User, history, context and activity features -> one concatenated vector."""

    def __init__(self, history_pooling: HistoryPoolingMode = "mean", **kwargs):
        super().__init__(**kwargs)
        self.pooling = HistoryPooling(history_pooling, name="history_pooling")

    def call(self, features: Mapping[str, tf.Tensor], embedded: Mapping[str, tf.Tensor]) -> tf.Tensor:
        user = embedded[F.USER_ID_XF]
        history = self.pooling((embedded[F.HIST_ITEM_IDS_XF], features[F.HIST_ITEM_IDS_XF], user))
        dense = tf.stack([tf.cast(features[key], tf.float32) for key in QUERY_DENSE_FEATURES], axis=-1)
        categorical = [embedded[key] for key in QUERY_ID_FEATURES if key not in (F.USER_ID_XF, F.HIST_ITEM_IDS_XF)]
        return tf.concat([user, history, *categorical, dense], axis=-1)


class CandidateFeatureEncoder(tf.keras.layers.Layer):
    """Item id, genres, title tokens and release year -> one concatenated vector."""

    def call(self, features: Mapping[str, tf.Tensor], embedded: Mapping[str, tf.Tensor]) -> tf.Tensor:
        genres = masked_mean(embedded[F.ITEM_GENRES_XF], features[F.ITEM_GENRES_XF])
        title = masked_mean(embedded[F.ITEM_TITLE_TOKENS_XF], features[F.ITEM_TITLE_TOKENS_XF])
        return tf.concat([embedded[F.ITEM_ID_XF], genres, title, embedded[F.ITEM_YEAR_BUCKET_XF]], axis=-1)


def select(features: Mapping[str, tf.Tensor], keys: Sequence[str]) -> dict[str, tf.Tensor]:
    """The entries of `features` named by `keys`, with a clear error if one is missing."""
    missing = [key for key in keys if key not in features]
    if missing:
        raise KeyError(f"transformed features {missing} are missing; got {sorted(features)}")
    return {key: features[key] for key in keys}


def mlp(layer_sizes: Sequence[int], output_dim: int | None, name: str) -> tf.keras.Sequential:
    """ReLU hidden layers, then an optional linear projection to `output_dim`."""
    layers = [tf.keras.layers.Dense(size, activation="relu") for size in layer_sizes]
    if output_dim is not None:
        layers.append(tf.keras.layers.Dense(output_dim))
    return tf.keras.Sequential(layers, name=name)


def track_mean(metric: tf.keras.metrics.Mean, value: tf.Tensor, weight: tf.Tensor) -> None:
    """`metric.update_state(value, weight)` where a metric may be updated: in a replica's step, or
    with no strategy; not in a strategy's cross-replica context (e.g. building the variables), where
    its sync-on-read variables refuse updates."""
    if not tf.distribute.in_cross_replica_context():
        metric.update_state(value, sample_weight=weight)
