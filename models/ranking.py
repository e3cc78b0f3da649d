"""DCN-v2 ranking model (TFRS) with a rating head and a "liked" head.

The ranker scores (user, item) pairs that retrieval proposed. It reads the same
transformed features and the same feature encoders as the two-tower model
(`models.embeddings`), concatenates the user, history, context and item
vectors plus the item's prior popularity, and learns explicit feature crosses
with `tfrs.layers.dcn.Cross`:

* "stacked": x0 -> cross layers -> deep MLP -> heads;
* "parallel": [cross layers(x0), deep MLP(x0)] -> heads.

`projection_dim` makes the cross kernels low rank (DCN-Mix style savings);
None keeps them full rank. Two tasks share the trunk: rating regression (MSE)
and liked probability (binary cross-entropy on logits); the training loss is
their weighted sum. `call` returns both predictions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import tensorflow as tf
import tensorflow_recommenders as tfrs

from models import embeddings as E
from models import features as F

CrossStructure = Literal["stacked", "parallel"]
CROSS_STRUCTURES: tuple[str, ...] = get_args(CrossStructure)

# Keys of the dict returned by DCNRankingModel.call.
RATING_OUTPUT = "rating"
LIKED_OUTPUT = "liked_probability"


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
        for name in ("rating_weight", "liked_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if self.rating_weight == 0 and self.liked_weight == 0:
            raise ValueError("rating_weight and liked_weight cannot both be 0")
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
        self.config = config
        self._optimizer = optimizer or E.make_optimizer(config.optimizer, config.learning_rate)
        self.embeddings = E.build_feature_embeddings(
            table_sizes,
            config.user_id_dim,
            config.item_id_dim,
            config.feature_dim,
            config.embedding_backend,
            self._optimizer,
        )
        self.query_features = E.QueryFeatureEncoder(config.history_pooling, name="query_features")
        self.candidate_features = E.CandidateFeatureEncoder(name="candidate_features")
        self.cross_layers = [
            tfrs.layers.dcn.Cross(projection_dim=config.projection_dim, kernel_initializer="glorot_uniform")
            for _ in range(config.num_cross_layers)
        ]
        self.deep = E.mlp(config.deep_layers, None, name="deep")
        self.rating_head = tf.keras.layers.Dense(1, name="rating_head")
        self.liked_head = tf.keras.layers.Dense(1, name="liked_head")
        self.rating_task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.MeanSquaredError(),
            metrics=[tf.keras.metrics.RootMeanSquaredError(name="rating_rmse")],
        )
        self.liked_task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.BinaryCrossentropy(from_logits=True),
            metrics=[tf.keras.metrics.AUC(from_logits=True, name="liked_auc")],
        )

    def compile(self, optimizer=None, **kwargs):
        """Compiles with the optimizer the embedding tables were built with."""
        super().compile(optimizer=optimizer or self._optimizer, **kwargs)

    def _cross(self, x0: tf.Tensor) -> tf.Tensor:
        x = x0
        for layer in self.cross_layers:
            x = layer(x0, x)
        return x

    def _logits(self, features: Mapping[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        """(rating [B, 1], liked logit [B, 1]) for transformed features."""
        # One lookup for every id feature, the form TPU embeddings need.
        embedded = self.embeddings(E.select(features, E.QUERY_ID_FEATURES + E.CANDIDATE_ID_FEATURES))
        popularity = tf.cast(features[F.ITEM_PRIOR_COUNT_LOG_XF], tf.float32)[:, tf.newaxis]
        x0 = tf.concat(
            [self.query_features(features, embedded), self.candidate_features(features, embedded), popularity],
            axis=-1,
        )
        if self.config.structure == "stacked":
            trunk = self.deep(self._cross(x0))
        else:
            trunk = tf.concat([self._cross(x0), self.deep(x0)], axis=-1)
        return self.rating_head(trunk), self.liked_head(trunk)

    def call(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        rating, liked_logit = self._logits(features)
        return {RATING_OUTPUT: rating, LIKED_OUTPUT: tf.sigmoid(liked_logit)}

    def compute_loss(self, features: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        rating, liked_logit = self._logits(features)
        rating_loss = self.rating_task(
            labels=tf.reshape(tf.cast(features[F.RATING_XF], tf.float32), [-1, 1]), predictions=rating
        )
        liked_loss = self.liked_task(
            labels=tf.reshape(tf.cast(features[F.LIKED_XF], tf.float32), [-1, 1]), predictions=liked_logit
        )
        return self.config.rating_weight * rating_loss + self.config.liked_weight * liked_loss
