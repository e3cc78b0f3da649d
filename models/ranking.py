"""DCN-v2 ranking model (TFRS): which retrieved item will the user pick, and will they like it.

The ranker scores (user, item) pairs that retrieval proposed. It reads the same
transformed features and the same feature encoders as the two-tower model
(`models.embeddings`), concatenates the user, history, context and item
vectors plus the item's point-in-time popularity (all-time count, count in the
last `RECENT_WINDOW_DAYS`, days since its first interaction -- things an
id embedding learned over months cannot know), and learns explicit feature
crosses with `tfrs.layers.dcn.Cross`:

* "stacked": x0 -> cross layers -> deep MLP -> heads;
* "parallel": [cross layers(x0), deep MLP(x0)] -> heads.

`projection_dim` makes the cross kernels low rank (DCN-Mix style savings);
None keeps them full rank. Three tasks share the trunk:

* interaction: which item the user picks. A sampled softmax of each positive
  against `num_negatives` other items of the same batch, with the sampling
  probability corrected out (log-Q) and accidental hits removed. Training
  batches hold examples of one time bucket (`input_pipeline.day_batches`), so
  the negatives are items picked at about the same moment and their
  point-in-time features are (nearly) current; the in-batch sampling
  probability is then an item's recent share, hence the correction by its
  recent count. The output `interaction_score` estimates log P(pick | user,
  time) up to a per-user constant -- the score re-ranking orders by.
* rating (MSE) and liked (rating >= 4, binary cross-entropy), which only ever
  see items the user did interact with.

The training loss is the weighted sum; `call` returns all the predictions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import tensorflow as tf
import tensorflow_recommenders as tfrs

from towerflow.models import embeddings as E
from towerflow.models import features as F

CrossStructure = Literal["stacked", "parallel"]
CROSS_STRUCTURES: tuple[str, ...] = get_args(CrossStructure)

# Keys of the dict returned by DCNRankingModel.call.
RATING_OUTPUT = "rating"
LIKED_OUTPUT = "liked_probability"
INTERACTION_OUTPUT = "interaction_score"
# Item-side transformed features that move together when an item is swapped in as a negative.
CANDIDATE_SIDE_FEATURES = E.CANDIDATE_ID_FEATURES + F.ITEM_POPULARITY_XF
# Losses are summed and divided by the global batch (`_per_example`): the mean on one replica, and what a
# distribution strategy sums over replicas. Keras refuses its mean reduction inside a strategy.
SUM = tf.keras.losses.Reduction.SUM


@dataclass
class RankingConfig:
    """Hyper-parameters of the DCN ranker; validated on construction."""

    user_id_dim: int = 32
    item_id_dim: int = 32
    feature_dim: int = 8
    history_pooling: E.HistoryPoolingMode = "mean"
    num_cross_layers: int = 2
    projection_dim: int | None = None  # low-rank cross kernels; None = full rank
    structure: CrossStructure = "stacked"
    deep_layers: tuple[int, ...] = (256, 128)
    rating_weight: float = 1.0
    liked_weight: float = 1.0
    interaction_weight: float = 1.0
    # In-batch negatives per positive for the interaction task. Each one is a full pass through the crosses and
    # deep layers, the ranker's main cost: 4 train 1.46x more examples per CPU-second than 8 (13,085 against
    # 8,957 on the 1M synthetic set), and on ml-100k's reference fold two_tower+dcn's NDCG@10 was 0.3599 against
    # 0.3579 (3 seeds; benchmarks/results/pipeline_scaling.md, round 4).
    num_negatives: int = 4
    use_item_popularity: bool = True  # the item's point-in-time popularity features as inputs
    time_bucket_hours: float = 24.0  # training batches hold examples of one bucket (0 = plain shuffle)
    optimizer: E.OptimizerName = "adagrad"
    learning_rate: float = 0.05
    batch_size: int = 256
    epochs: int = 5
    embedding_backend: E.EmbeddingBackend = "keras"

    def __post_init__(self):
        for name in ("user_id_dim", "item_id_dim", "feature_dim", "batch_size", "epochs"):
            E.require_int(name, getattr(self, name), minimum=1)
        E.require_int("num_cross_layers", self.num_cross_layers, minimum=0)
        if self.projection_dim is not None:
            E.require_int("projection_dim", self.projection_dim, minimum=1)
        self.deep_layers = tuple(self.deep_layers)
        for size in self.deep_layers:
            E.require_int("deep_layers entries", size, minimum=1)
        if self.num_cross_layers == 0 and not self.deep_layers:
            raise ValueError("need at least one cross layer or one deep layer")
        E.require_int("num_negatives", self.num_negatives, minimum=0)
        hours = self.time_bucket_hours
        if isinstance(hours, bool) or not isinstance(hours, (int, float)) or hours < 0:
            raise ValueError(f"time_bucket_hours must be a number >= 0, got {hours!r}")
        for name in ("rating_weight", "liked_weight", "interaction_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if self.rating_weight == 0 and self.liked_weight == 0 and self.interaction_weight == 0:
            raise ValueError("rating_weight, liked_weight and interaction_weight cannot all be 0")
        if self.interaction_weight and not self.num_negatives:
            raise ValueError("interaction_weight > 0 needs num_negatives >= 1")
        E.require_positive("learning_rate", self.learning_rate)
        E.require_choice("history_pooling", self.history_pooling, E.HISTORY_POOLING_MODES)
        E.require_choice("structure", self.structure, CROSS_STRUCTURES)
        E.require_choice("optimizer", self.optimizer, E.OPTIMIZERS)
        E.require_choice("embedding_backend", self.embedding_backend, E.EMBEDDING_BACKENDS)


class DCNRankingModel(tfrs.Model):
    """Deep & Cross ranker over user, history, context and item features.

    Args:
      config: hyper-parameters.
      table_sizes: rows of every embedding table, from
        `preprocessing.table_sizes_from_transform_output`.
      optimizer: a legacy Keras optimizer; by default one is made from the
        config. It is shared by the TPU embedding tables and `compile()`.
    """

    def __init__(
        self,
        config: RankingConfig,
        table_sizes: Mapping[str, int],
        optimizer: tf.keras.optimizers.legacy.Optimizer | None = None,
    ):
        super().__init__()
        # The epoch's loss per example (Keras' "loss" is the last step's value, as tfrs.Model returns it);
        # a Mean metric, reset each epoch and summed over replicas. Set untracked, so its variables stay
        # out of the model's weights and checkpoints; `metrics` lists it.
        object.__setattr__(self, "_mean_loss", tf.keras.metrics.Mean(name="mean_loss"))
        self.config = config
        self._optimizer, self.embeddings = E.optimizer_and_embeddings(config, table_sizes, optimizer)
        self.query_features = E.QueryFeatureEncoder(config.history_pooling, name="query_features")
        self.candidate_features = E.CandidateFeatureEncoder(name="candidate_features")
        self.cross_layers = [
            tfrs.layers.dcn.Cross(projection_dim=config.projection_dim, kernel_initializer="glorot_uniform")
            for _ in range(config.num_cross_layers)
        ]
        self.deep = E.mlp(config.deep_layers, None, name="deep")
        self.rating_head = tf.keras.layers.Dense(1, name="rating_head")
        self.liked_head = tf.keras.layers.Dense(1, name="liked_head")
        self.interaction_head = tf.keras.layers.Dense(1, name="interaction_head")
        self.rating_task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.MeanSquaredError(reduction=SUM),
            metrics=[tf.keras.metrics.RootMeanSquaredError(name="rating_rmse")],
        )
        self.liked_task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.BinaryCrossentropy(from_logits=True, reduction=SUM),
            metrics=[tf.keras.metrics.AUC(from_logits=True, name="liked_auc")],
        )
        # Sampled softmax; the metric is the positive's share of top-1 among 1 + num_negatives candidates.
        self.interaction_task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True, reduction=SUM),
            metrics=[tf.keras.metrics.CategoricalAccuracy(name="interaction_top1")],
        )

    def compile(self, optimizer=None, **kwargs):
        """Compiles with the optimizer the embedding tables were built with."""
        super().compile(optimizer=optimizer or self._optimizer, **kwargs)

    def _cross(self, x0: tf.Tensor) -> tf.Tensor:
        x = x0
        for layer in self.cross_layers:
            x = layer(x0, x)
        return x

    def _encode(self, features: Mapping[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        """(query vector, candidate vector) of every row: user, history and context; item and its popularity."""
        # One lookup for every id feature, the form TPU embeddings need.
        embedded = self.embeddings(E.select(features, E.QUERY_ID_FEATURES + E.CANDIDATE_ID_FEATURES))
        candidate = [self.candidate_features(features, embedded)]
        if self.config.use_item_popularity:
            candidate.extend(tf.cast(features[key], tf.float32)[:, tf.newaxis] for key in F.ITEM_POPULARITY_XF)
        return self.query_features(features, embedded), tf.concat(candidate, axis=-1)

    def _top(self, query: tf.Tensor, candidate: tf.Tensor) -> tf.Tensor:
        """The crosses and the deep layers over x0 = [query, candidate]."""
        x0 = tf.concat([query, candidate], axis=-1)
        if self.config.structure == "stacked":
            return self.deep(self._cross(x0))
        return tf.concat([self._cross(x0), self.deep(x0)], axis=-1)

    def _trunk(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        return self._top(*self._encode(features))

    def call(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        trunk = self._trunk(features)
        out = {RATING_OUTPUT: self.rating_head(trunk), LIKED_OUTPUT: tf.sigmoid(self.liked_head(trunk))}
        if self.config.interaction_weight:  # an untrained head's output would only mislead
            out[INTERACTION_OUTPUT] = self.interaction_head(trunk)
        return out

    def negative_shifts(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """[num_negatives] random non-zero rolls: negative j pairs row i's user with row i - shift_j's item."""
        batch = tf.shape(features[F.ITEM_ID_XF])[0]
        return tf.random.uniform([self.config.num_negatives], 1, tf.maximum(batch, 2), dtype=tf.int32)

    def interaction_logits(
        self,
        features: Mapping[str, tf.Tensor],
        query: tf.Tensor,
        candidate: tf.Tensor,
        trunk: tf.Tensor,
        shifts: tf.Tensor,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """[B, 1 + num_negatives] corrected logits (positive first) and the accidental-hit mask.

        A negative is the batch's users with other rows' items (`shifts`). The rows' encoded candidate
        vectors are rolled, not their raw features re-encoded -- the same vectors, as the encoders work
        row by row -- and all negatives go through the crosses and deep layers as one [N x B] batch.
        """
        batch = tf.shape(query)[0]
        rolled = tf.concat([tf.roll(candidate, shifts[j], axis=0) for j in range(self.config.num_negatives)], axis=0)
        queries = tf.tile(query, [self.config.num_negatives, 1])
        negative_logits = tf.reshape(self.interaction_head(self._top(queries, rolled)), [-1, batch])
        logits = tf.concat([self.interaction_head(trunk), tf.transpose(negative_logits)], axis=1)
        # log-Q: an item's chance of being a sampled negative is its share of the batch's time bucket,
        # i.e. proportional to its recent count (log1p in the feature; +1 also covers brand-new items).
        item_ids, log_q = features[F.ITEM_ID_XF], tf.cast(features[F.ITEM_RECENT_COUNT_LOG_XF], tf.float32)
        negative_ids = [tf.roll(item_ids, shifts[j], axis=0) for j in range(self.config.num_negatives)]
        negative_log_q = [tf.roll(log_q, shifts[j], axis=0) for j in range(self.config.num_negatives)]
        log_q = tf.stack([log_q, *negative_log_q], axis=1)
        hits = tf.equal(tf.stack(negative_ids, axis=1), item_ids[:, tf.newaxis])  # a negative that is the positive
        mask = tf.concat([tf.zeros_like(hits[:, :1]), hits], axis=1)
        return logits - log_q, mask

    @staticmethod
    def _per_example(loss_sum: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        return loss_sum / tf.cast(rows * replicas, loss_sum.dtype)

    @property
    def metrics(self):
        return [*super().metrics, self._mean_loss]

    def label_losses(self, features: Mapping[str, tf.Tensor], trunk: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
        """The weighted rating and liked losses per example (the interaction task's negatives are the caller's)."""
        loss = tf.constant(0.0)
        if self.config.rating_weight:
            rating_loss = self.rating_task(
                labels=tf.reshape(tf.cast(features[F.RATING_XF], tf.float32), [-1, 1]),
                predictions=self.rating_head(trunk),
            )
            loss += self.config.rating_weight * self._per_example(rating_loss, rows)
        if self.config.liked_weight:
            liked_loss = self.liked_task(
                labels=tf.reshape(tf.cast(features[F.LIKED_XF], tf.float32), [-1, 1]),
                predictions=self.liked_head(trunk),
            )
            loss += self.config.liked_weight * self._per_example(liked_loss, rows)
        return loss

    def compute_loss(self, features: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        query, candidate = self._encode(features)
        trunk = self._top(query, candidate)
        rows = tf.shape(trunk)[0]
        loss = self.label_losses(features, trunk, rows)
        if self.config.interaction_weight:
            shifts = self.negative_shifts(features)
            logits, hits = self.interaction_logits(features, query, candidate, trunk, shifts)
            logits = tf.where(hits, tf.fill(tf.shape(logits), logits.dtype.min), logits)
            labels = tf.one_hot(tf.zeros(tf.shape(logits)[0], tf.int32), tf.shape(logits)[1])
            interaction_loss = self.interaction_task(labels=labels, predictions=logits)
            loss += self.config.interaction_weight * self._per_example(interaction_loss, rows)
        E.track_mean(self._mean_loss, loss, tf.cast(rows, tf.float32))
        return loss
