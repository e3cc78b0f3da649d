"""Two-tower retrieval model (TFRS) over the transformed features.

Query tower: user id, demographics, the pooled history (mean or attention over
the shared item table), context and activity counts -> MLP -> L2-normalised
`embedding_dim` vector. Candidate tower: item id (the same table the history
reads), mean-pooled genres and title tokens, release-year bucket -> MLP ->
L2-normalised vector of the same width.

The loss is an in-batch sampled softmax (`tfrs.tasks.Retrieval`) with
* a temperature, because dot products of unit vectors live in [-1, 1];
* log-Q correction: popular items appear as in-batch negatives more often, so
  their logits are lowered by log q (q = the item's share of training
  interactions, `ITEM_LOG_FREQUENCY_XF`);
* accidental-hit removal: an in-batch "negative" with the positive's item id
  is not a negative;
* optional mixed negatives: `num_random_negatives` items drawn uniformly from
  the catalog are appended to the in-batch candidates, which gives the long
  tail a chance to be a negative. The sampling probability of every candidate
  is then that of the mixed proposal, (B * q_i + R / N) / (B + R) for batch
  size B, R random negatives and N catalog items;
* optional hard-negative mining (keep the `num_hard_negatives` top-scored
  negatives per query).

Under a data-parallel strategy (mirrored, multi_worker_mirrored, tpu) each
replica holds a slice of the global batch; its queries are scored against the
candidates of ALL replicas (an all-gather of the in-batch candidate vectors,
ids and sampling probabilities), so every query row of the logits is the one
single-process training computes on the same global batch. The loss is a sum
over a replica's queries and the strategy sums the gradients over replicas, so
the gradient is single-process's too (all_gather's gradient sums the replicas'
contributions to each candidate and hands every replica its own rows).

Both towers take the dict produced by `preprocessing_fn`, so a serving
function is `tft_layer(raw) -> query_model(transformed)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from towerflow.models import embeddings as E
from towerflow.models import features as F


@dataclass
class TwoTowerConfig:
    """Hyper-parameters of the two-tower model; validated on construction."""

    embedding_dim: int = 64  # width of both towers' outputs
    user_id_dim: int = 32
    item_id_dim: int = 32  # shared by candidate ids and history items
    feature_dim: int = 8  # every other categorical feature
    mlp_layers: tuple[int, ...] = (128,)  # hidden ReLU layers of each tower
    history_pooling: E.HistoryPoolingMode = "attention"  # beat "mean" on ml-100k NDCG@10 (3 seeds)
    temperature: float = 0.3  # chosen on ml-100k (0.05-0.5 compared in benchmarks/results/model_quality.md)
    use_logq_correction: bool = True
    remove_accidental_hits: bool = True
    num_random_negatives: int = 0  # > 0 needs the catalog (mixed negatives)
    num_hard_negatives: int = 0  # 0 keeps every negative
    # > 0: an example's loss weight halves every this many days before the newest training example
    # (0 = off). 60 was best on the ml-100k EVAL window among 0, 15, 30, 60 (3 seeds).
    recency_half_life_days: float = 60.0
    optimizer: E.OptimizerName = "adagrad"
    learning_rate: float = 0.1
    batch_size: int = 256
    epochs: int = 5
    embedding_backend: E.EmbeddingBackend = "keras"

    def __post_init__(self):
        for name in ("embedding_dim", "user_id_dim", "item_id_dim", "feature_dim", "batch_size", "epochs"):
            E.require_int(name, getattr(self, name), minimum=1)
        for name in ("num_random_negatives", "num_hard_negatives"):
            E.require_int(name, getattr(self, name), minimum=0)
        self.mlp_layers = tuple(self.mlp_layers)
        for size in self.mlp_layers:
            E.require_int("mlp_layers entries", size, minimum=1)
        E.require_positive("temperature", self.temperature)
        if isinstance(self.recency_half_life_days, bool) or not (
            isinstance(self.recency_half_life_days, (int, float)) and self.recency_half_life_days >= 0
        ):
            raise ValueError(f"recency_half_life_days must be a number >= 0, got {self.recency_half_life_days!r}")
        E.require_positive("learning_rate", self.learning_rate)
        E.require_choice("history_pooling", self.history_pooling, E.HISTORY_POOLING_MODES)
        E.require_choice("optimizer", self.optimizer, E.OPTIMIZERS)
        E.require_choice("embedding_backend", self.embedding_backend, E.EMBEDDING_BACKENDS)
        E.require_choice("use_logq_correction", self.use_logq_correction, (True, False))
        E.require_choice("remove_accidental_hits", self.remove_accidental_hits, (True, False))


@dataclass(frozen=True)
class RecencyWeighting:
    """Example weights 2^(-age / half_life), age in days before `newest`, scaled to mean 1 over the data.

    Popularity drifts; weighting recent examples up makes the item embeddings
    reflect what is being watched when the model is served, not the average
    over the whole training window. `from_timestamps` measures the scale.
    """

    newest: int
    half_life_days: float
    scale: float = 1.0

    def weights(self, timestamps) -> tf.Tensor:
        age_days = tf.cast(self.newest - tf.cast(timestamps, tf.int64), tf.float32) / F.SECONDS_PER_DAY
        return self.scale * tf.pow(2.0, -tf.maximum(age_days, 0.0) / self.half_life_days)

    @classmethod
    def from_timestamps(cls, timestamps: np.ndarray, half_life_days: float) -> RecencyWeighting:
        timestamps = np.asarray(timestamps, dtype=np.int64)
        if timestamps.size == 0:
            raise ValueError("recency weighting needs at least one training timestamp")
        newest = int(timestamps.max())
        raw = np.power(2.0, -((newest - timestamps) / F.SECONDS_PER_DAY) / half_life_days)
        return cls(newest, float(half_life_days), float(1.0 / raw.mean()))


class Tower(tf.keras.Model):
    """One tower: embedding lookup, feature encoder, MLP, L2 normalisation.

    `call(features)` looks up its own id features and is what gets exported.
    `encode(features, embedded)` starts from embeddings looked up elsewhere,
    which lets the training step look up both towers' ids in one call (the
    form TPU embeddings need).
    """

    def __init__(
        self,
        embeddings: E.FeatureEmbeddings,
        encoder: tf.keras.layers.Layer,
        id_features: tuple[str, ...],
        layer_sizes: tuple[int, ...],
        output_dim: int,
        name: str,
    ):
        super().__init__(name=name)
        self.embeddings = embeddings
        self.encoder = encoder
        self.id_features = id_features
        self.mlp = E.mlp(layer_sizes, output_dim, name=f"{name}_mlp")

    def encode(self, features: Mapping[str, tf.Tensor], embedded: Mapping[str, tf.Tensor]) -> tf.Tensor:
        return tf.math.l2_normalize(self.mlp(self.encoder(features, embedded)), axis=-1)

    def call(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        return self.encode(features, self.embeddings(E.select(features, self.id_features)))


class TwoTowerModel(tfrs.Model):
    """TFRS two-tower retrieval model; `query_model` / `candidate_model` export the towers.

    Args:
      config: hyper-parameters.
      table_sizes: rows of every embedding table, from
        `preprocessing.table_sizes_from_transform_output`.
      catalog: transformed candidate features of every catalog item (arrays
        with a leading item axis, including ITEM_LOG_FREQUENCY_XF); required
        when `config.num_random_negatives > 0`.
      optimizer: a legacy Keras optimizer; by default one is made from the
        config. It is shared by the TPU embedding tables and `compile()`.
    """

    def __init__(
        self,
        config: TwoTowerConfig,
        table_sizes: Mapping[str, int],
        catalog: Mapping[str, np.ndarray] | None = None,
        optimizer: tf.keras.optimizers.legacy.Optimizer | None = None,
        recency: RecencyWeighting | None = None,
    ):
        super().__init__()
        self.config = config
        # The epoch's loss per example (Keras' "loss" is the last step's value, as tfrs.Model returns it);
        # a Mean metric, reset each epoch and summed over replicas. Set untracked, so its variables stay
        # out of the model's weights and checkpoints; `metrics` lists it.
        object.__setattr__(self, "_mean_loss", tf.keras.metrics.Mean(name="mean_loss"))
        if config.recency_half_life_days and recency is None:
            raise ValueError("recency_half_life_days > 0 needs the training data's RecencyWeighting")
        self.recency = recency if config.recency_half_life_days else None
        self._optimizer, self.embeddings = E.optimizer_and_embeddings(config, table_sizes, optimizer)
        self.query_model = Tower(
            self.embeddings,
            E.QueryFeatureEncoder(config.history_pooling, name="query_features"),
            E.QUERY_ID_FEATURES,
            config.mlp_layers,
            config.embedding_dim,
            name="query_tower",
        )
        self.candidate_model = Tower(
            self.embeddings,
            E.CandidateFeatureEncoder(name="candidate_features"),
            E.CANDIDATE_ID_FEATURES,
            config.mlp_layers,
            config.embedding_dim,
            name="candidate_tower",
        )
        self.task = tfrs.tasks.Retrieval(
            temperature=config.temperature,
            num_hard_negatives=config.num_hard_negatives or None,
            remove_accidental_hits=config.remove_accidental_hits,
        )
        self._catalog = self._check_catalog(catalog) if catalog is not None else None
        if config.num_random_negatives and self._catalog is None:
            raise ValueError("num_random_negatives > 0 needs the catalog's transformed candidate features")

    @staticmethod
    def _check_catalog(catalog: Mapping[str, np.ndarray]) -> dict[str, tf.Tensor]:
        keys = E.CANDIDATE_ID_FEATURES + (F.ITEM_LOG_FREQUENCY_XF,)
        tensors = {key: tf.constant(value) for key, value in E.select(catalog, keys).items()}
        sizes = {int(value.shape[0]) for value in tensors.values()}
        if len(sizes) != 1 or 0 in sizes:
            raise ValueError(f"catalog features must share one non-empty leading axis, got sizes {sorted(sizes)}")
        return tensors

    def compile(self, optimizer=None, **kwargs):
        """Compiles with the optimizer the embedding tables were built with."""
        super().compile(optimizer=optimizer or self._optimizer, **kwargs)

    def candidates_for_batch(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The batch's positive items, followed by the random catalog negatives."""
        keys = E.CANDIDATE_ID_FEATURES + (F.ITEM_LOG_FREQUENCY_XF,)
        candidates = E.select(features, keys)
        num_random = self.config.num_random_negatives
        if not num_random:
            return candidates
        catalog_size = tf.shape(self._catalog[F.ITEM_ID_XF], out_type=tf.int64)[0]
        rows = tf.random.uniform([num_random], maxval=catalog_size, dtype=tf.int64)
        return {
            key: tf.concat([tf.cast(candidates[key], self._catalog[key].dtype), tf.gather(self._catalog[key], rows)], 0)
            for key in keys
        }

    def sampling_probability(self, candidates: Mapping[str, tf.Tensor], batch_size: tf.Tensor) -> tf.Tensor:
        """Probability of each candidate under the (possibly mixed) negative proposal."""
        unigram = tf.exp(tf.cast(candidates[F.ITEM_LOG_FREQUENCY_XF], tf.float32))
        num_random = self.config.num_random_negatives
        if not num_random:
            return unigram
        batch = tf.cast(batch_size, tf.float32)
        uniform = 1.0 / tf.cast(tf.shape(self._catalog[F.ITEM_ID_XF])[0], tf.float32)
        return (batch * unigram + num_random * uniform) / (batch + num_random)

    @property
    def metrics(self):
        return [*super().metrics, self._mean_loss]

    def compute_loss(self, features: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        candidates = self.candidates_for_batch(features)
        # One lookup for both towers: the TPU embedding layer needs every
        # feature in a single call.
        embedded = self.embeddings(
            {**E.select(features, E.QUERY_ID_FEATURES), **E.select(candidates, E.CANDIDATE_ID_FEATURES)}
        )
        query = self.query_model.encode(features, embedded)
        candidate = self.candidate_model.encode(candidates, embedded)
        candidate, candidates, in_batch = gather_in_batch_candidates(candidate, candidates, tf.shape(query)[0])
        kwargs = {}
        if self.config.use_logq_correction:
            kwargs["candidate_sampling_probability"] = self.sampling_probability(candidates, in_batch)
        if self.config.remove_accidental_hits:
            kwargs["candidate_ids"] = candidates[F.ITEM_ID_XF]
        if self.recency is not None:
            kwargs["sample_weight"] = self.recency.weights(features[F.TIMESTAMP_XF])
        loss = self.task(query, candidate, compute_metrics=not training, **kwargs)
        rows = tf.cast(tf.shape(query)[0], tf.float32)
        E.track_mean(self._mean_loss, loss / tf.maximum(rows, 1.0), rows)
        return loss


def gather_in_batch_candidates(
    candidate: tf.Tensor, candidates: Mapping[str, tf.Tensor], rows: tf.Tensor
) -> tuple[tf.Tensor, dict[str, tf.Tensor], tf.Tensor]:
    """The in-batch candidates of every replica, this replica's first; its random negatives after them.

    `candidate` holds this replica's candidate vectors: its `rows` in-batch positives, then any
    random catalog negatives; `candidates` their features. Returns (vectors, the id and
    log-frequency features, the number of in-batch candidates over all replicas). Outside a
    multi-replica step (one process, a parameter-server worker, cross-replica context) nothing
    changes.

    The gathered rows are rolled so that this replica's own come first (as TFRS does for TPUs):
    the Retrieval task's labels, the diagonal, then point at each query's positive, and the
    softmax over a row does not depend on the order of its columns.
    """
    context = tf.distribute.get_replica_context()
    keys = (F.ITEM_ID_XF, F.ITEM_LOG_FREQUENCY_XF)
    if context is None or context.num_replicas_in_sync == 1:
        return candidate, {key: candidates[key] for key in keys}, rows
    # Replicas may hold different numbers of rows (the last batch of an epoch): offsets from the sizes.
    sizes = context.all_gather(tf.reshape(rows, [1]), axis=0)
    offset = tf.reduce_sum(sizes[: context.replica_id_in_sync_group])
    # The vectors in a call of their own: all_gather's gradient (an all-reduce) is only wanted for them.
    vectors = context.all_gather(candidate[:rows], axis=0)
    gathered = context.all_gather({key: candidates[key][:rows] for key in keys}, axis=0)
    vectors = tf.concat([tf.roll(vectors, -offset, axis=0), candidate[rows:]], axis=0)
    merged = {key: tf.concat([tf.roll(gathered[key], -offset, axis=0), candidates[key][rows:]], 0) for key in keys}
    return vectors, merged, tf.reduce_sum(sizes)
