"""The DCN ranker trained on retrieval's own candidates: hard negatives from the two-tower (issue 13).

Today's ranker (`models.ranking.DCNRankingModel`) learns its interaction score from a sampled
softmax of each logged interaction against items of other rows of the same day's batch, i.e.
negatives drawn by recent popularity. The blend it is served in (`offline.BlendedRecommender`)
asks it to order another set: retrieval's top `depth` UNION the `depth` most recently popular
unseen items. Here every training interaction (user u picks item i at time t) gets that set as
its negative pool (`candidate_pools`):

* the two-tower's top `depth` for u's query as of t (the query tower on the example's own
  point-in-time features) and the `depth` items with most interactions in the
  `RECENT_WINDOW_DAYS` before t (ties by item id; items without recent interactions by
  all-time count, the order the blend and the feature store use), taken as of the start of t's
  UTC day;
* minus i and every item u has in the training data, before or after t (a later pick is not a
  negative).

Each epoch samples `num_negatives` of the pool per example, uniformly without replacement
(`sample_negatives`), and the interaction head learns a softmax of the positive against them
(sampling is uniform within the pool, so no log-Q correction). The negatives' popularity inputs
are their point-in-time counts as of t (`point_in_time_popularity`: the counting of
`features.item_features_at`). The rating and liked tasks, the architecture, the features and the
export are DCNRankingModel's: the exported ranker is a drop-in replacement.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from towerflow.models import embeddings as E
from towerflow.models import export
from towerflow.models import features as F
from towerflow.models.ranking import DCNRankingModel, RankingConfig

# Extra training inputs: each row's sampled negatives (catalog row indices, -1 = none) and their
# transformed popularity features as of the row's timestamp ([B, K, len(ITEM_POPULARITY_XF)]).
NEGATIVE_ITEMS = "hard_negative_items"
NEGATIVE_POPULARITY = "hard_negative_popularity"
# Optional [B, 1 + K] fixed offsets added to the interaction logits (positive first): with them the
# head learns a residual of the blend's other terms (`BaseScore`).
BASE_SCORES = "hard_negative_base_scores"
WINDOW_SECONDS = int(F.RECENT_WINDOW_DAYS * F.SECONDS_PER_DAY)


# --------------------------------------------------------------------------- candidate pools (numpy)


class EventIndex:
    """Interactions (item code, timestamp) sorted by item then time, for point-in-time counts."""

    def __init__(self, items: np.ndarray, timestamps: np.ndarray, n_items: int):
        items, timestamps = np.asarray(items, np.int64), np.asarray(timestamps, np.int64)
        order = np.lexsort((timestamps, items))
        self.items, self.timestamps = items[order], timestamps[order]
        self.n_items = int(n_items)
        self.starts = np.searchsorted(self.items, np.arange(n_items + 1), "left")
        self.origin = int(self.timestamps.min()) if len(self.timestamps) else 0
        self.span = (int(self.timestamps.max()) - self.origin + 2) if len(self.timestamps) else 1

    def _position(self, items: np.ndarray, at: np.ndarray) -> np.ndarray:
        """Events of `items[j]` strictly before `at[j]`, as positions into the sorted arrays."""
        offset = np.clip(at - self.origin, 0, self.span - 1)
        keys = self.items * self.span + (self.timestamps - self.origin)
        return np.searchsorted(keys, items * self.span + offset, "left")

    def popularity(self, items: np.ndarray, as_of: np.ndarray) -> dict[str, np.ndarray]:
        """`features.item_features_at` of item `items[j]` as of `as_of[j]`, for all j at once."""
        items, as_of = np.asarray(items, np.int64), np.asarray(as_of, np.int64)
        end = self._position(items, as_of)
        prior = end - self.starts[items]
        recent = end - self._position(items, as_of - WINDOW_SECONDS)
        first = self.timestamps[np.minimum(self.starts[items], max(len(self.timestamps) - 1, 0))]
        days = np.where(prior > 0, (as_of - first) / F.SECONDS_PER_DAY, 0.0)
        return {F.ITEM_PRIOR_COUNT: prior, F.ITEM_RECENT_COUNT: recent, F.ITEM_DAYS_SINCE_FIRST: days}


def transformed_popularity(popularity: Mapping[str, np.ndarray]) -> np.ndarray:
    """[..., 3] float32: ITEM_POPULARITY_XF of raw counts, as `preprocessing_fn` computes them (log1p)."""
    raw = (F.ITEM_PRIOR_COUNT, F.ITEM_RECENT_COUNT, F.ITEM_DAYS_SINCE_FIRST)
    return np.stack([np.log1p(np.maximum(np.asarray(popularity[k], np.float64), 0.0)) for k in raw], -1).astype(
        np.float32
    )


def popular_order(recent: np.ndarray, prior: np.ndarray, item_ids: Sequence[str]) -> np.ndarray:
    """Catalog rows by recent count (ties by item id), then the items without recent events by
    all-time count (ties by id): the blend's popular candidates' order (`BlendedRecommender`)."""
    by_id = np.argsort(np.argsort(np.array(item_ids, dtype=str), kind="stable"), kind="stable")
    return np.lexsort((by_id, -np.where(recent == 0, prior, 0), -recent))


def candidate_pools(scores: np.ndarray, excluded: np.ndarray, popular_orders: np.ndarray, depth: int) -> np.ndarray:
    """[n, 2 depth] catalog rows (-1 = padding): per row, the `depth` best-scored items that are not
    `excluded` UNION the first `depth` not-excluded items of the row's popularity order.

    scores: [n, items] retrieval scores; excluded: [n, items] bool (the positive and the user's
    items); popular_orders: [n, items] catalog rows, most popular first.
    """
    n, items = scores.shape
    depth = min(depth, items)
    masked = np.where(excluded, -np.inf, scores)
    top = np.argpartition(-masked, depth - 1, axis=1)[:, :depth]
    member = np.zeros((n, items), dtype=bool)
    np.put_along_axis(member, top, np.isfinite(np.take_along_axis(masked, top, axis=1)), axis=1)
    allowed = ~np.take_along_axis(excluded, popular_orders, axis=1)
    first = allowed & (np.cumsum(allowed, axis=1) <= depth)
    popular = np.zeros((n, items), dtype=bool)
    np.put_along_axis(popular, popular_orders, first, axis=1)
    member |= popular
    counts = member.sum(axis=1)
    width = 2 * depth
    rows = np.argsort(~member, axis=1, kind="stable")[:, :width]
    return np.where(np.arange(width)[None, :] < counts[:, None], rows, -1).astype(np.int32)


def sample_negatives(pools: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """[n, k]: per row, k distinct entries of the row's pool (entries >= 0), uniformly; -1 where the pool is short."""
    keys = rng.random(pools.shape)
    keys[pools < 0] = np.inf
    k_eff = min(k, pools.shape[1])
    chosen = np.argpartition(keys, k_eff - 1, axis=1)[:, :k_eff]
    out = np.take_along_axis(pools, chosen, axis=1)
    if k_eff < k:
        out = np.concatenate([out, np.full((len(pools), k - k_eff), -1, out.dtype)], axis=1)
    return out


@dataclass
class BaseScore:
    """The blend's fixed terms as a training offset: retrieval logit (query . item / temperature) +
    popularity_weight x log(1 + the item's recent count as of the example). Training against them,
    the interaction head learns what the blend lacks (a residual), to be served at rerank weight 1."""

    queries: np.ndarray  # [n, d] each training example's query embedding
    item_embeddings: np.ndarray  # [items, d]
    temperature: float
    popularity_weight: float

    def scores(self, items: np.ndarray, log_recent: np.ndarray) -> np.ndarray:
        """[n, m] offsets of catalog rows `items` [n, m] with log(1 + recent count) `log_recent` [n, m]."""
        logits = np.einsum("nd,nmd->nm", self.queries, self.item_embeddings[items]) / self.temperature
        return (logits + self.popularity_weight * log_recent).astype(np.float32)


# --------------------------------------------------------------------------- the model


def mask_invalid(logits: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """Logits with the invalid columns at the dtype's minimum (zero softmax weight)."""
    return tf.where(valid, logits, tf.fill(tf.shape(logits), logits.dtype.min))


def listwise_softmax_loss(logits: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """Sum over rows of -log softmax(column 0) among the row's valid columns (column 0 = the positive)."""
    masked = mask_invalid(logits, valid)
    return tf.reduce_sum(tf.reduce_logsumexp(masked, axis=1) - logits[:, 0])


class HardNegativeRanker(DCNRankingModel):
    """DCNRankingModel whose interaction task scores each positive against its hard negatives.

    `catalog`: the transformed candidate id features (E.CANDIDATE_ID_FEATURES) of every catalog
    row that NEGATIVE_ITEMS indexes. Training batches carry NEGATIVE_ITEMS and NEGATIVE_POPULARITY;
    `call` (and so the export) is the parent's.
    """

    def __init__(
        self,
        config: RankingConfig,
        table_sizes: Mapping[str, int],
        catalog: Mapping[str, np.ndarray],
        in_batch_weight: float = 0.0,
    ):
        super().__init__(config, table_sizes)
        # > 0: also today's in-batch sampled softmax (DCNRankingModel's interaction loss), with this weight
        self.in_batch_weight = float(in_batch_weight)
        # untracked: constants, not weights (kept out of checkpoints and the export)
        object.__setattr__(self, "_catalog", {key: tf.constant(catalog[key]) for key in E.CANDIDATE_ID_FEATURES})

    def hard_negative_logits(self, features, query: tf.Tensor, trunk: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """[B, 1 + K] logits (positive first) and the valid mask (negatives with a catalog row)."""
        negatives = tf.cast(features[NEGATIVE_ITEMS], tf.int32)
        k = tf.shape(negatives)[1]
        rows = tf.maximum(tf.reshape(negatives, [-1]), 0)
        items = {key: tf.gather(table, rows) for key, table in self._catalog.items()}
        vectors = [self.candidate_features(items, self.embeddings(items))]
        if self.config.use_item_popularity:
            popularity = tf.cast(features[NEGATIVE_POPULARITY], tf.float32)
            vectors.append(tf.reshape(popularity, [-1, len(F.ITEM_POPULARITY_XF)]))
        candidates = tf.concat(vectors, axis=-1)
        negative_logits = self.interaction_head(self._top(tf.repeat(query, k, axis=0), candidates))
        logits = tf.concat([self.interaction_head(trunk), tf.reshape(negative_logits, [-1, k])], axis=1)
        valid = tf.concat([tf.ones_like(negatives[:, :1], tf.bool), negatives >= 0], axis=1)
        return logits, valid

    def compute_loss(self, features, training: bool = False) -> tf.Tensor:
        query, candidate = self._encode(features)
        trunk = self._top(query, candidate)
        rows = tf.shape(trunk)[0]
        loss = self.label_losses(features, trunk, rows)
        if self.config.interaction_weight:
            logits, valid = self.hard_negative_logits(features, query, trunk)
            if BASE_SCORES in features:
                logits = logits + tf.cast(features[BASE_SCORES], logits.dtype)
            labels = tf.one_hot(tf.zeros(tf.shape(logits)[0], tf.int32), tf.shape(logits)[1])
            interaction_loss = self.interaction_task(labels=labels, predictions=mask_invalid(logits, valid))
            loss += self.config.interaction_weight * self._per_example(interaction_loss, rows)
            if self.in_batch_weight:
                in_batch, hits = self.interaction_logits(
                    features, query, candidate, trunk, self.negative_shifts(features)
                )
                in_batch = mask_invalid(in_batch, tf.logical_not(hits))
                in_batch_labels = tf.one_hot(tf.zeros(tf.shape(in_batch)[0], tf.int32), tf.shape(in_batch)[1])
                in_batch_loss = self.interaction_task(labels=in_batch_labels, predictions=in_batch)
                loss += self.in_batch_weight * self._per_example(in_batch_loss, rows)
        E.track_mean(self._mean_loss, loss, tf.cast(rows, tf.float32))
        return loss


# --------------------------------------------------------------------------- data and fit


def transform_raw(tft_output: tft.TFTransformOutput, raw: Mapping[str, np.ndarray], batch_size: int = 8192) -> dict:
    """Transformed features of raw feature columns (list features padded with ""), through the
    Transform layer as the exported signatures call it (absent raw features get neutral defaults)."""
    layer = tft_output.transform_features_layer()
    n = len(next(iter(raw.values())))
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, batch_size):
        chunk = {key: tf.constant(value[start : start + batch_size]) for key, value in raw.items()}
        size = tf.shape(next(iter(chunk.values())))[0]
        for key, value in layer(export.to_transform_inputs(tft_output, chunk, size)).items():
            parts.setdefault(key, []).append(value.numpy())
    return {key: np.concatenate(value) for key, value in parts.items()}


def read_raw_examples(file_pattern: str | Sequence[str], tft_output: tft.TFTransformOutput) -> tuple[dict, list]:
    """Raw feature columns (list features dense, padded with "") and the serialized records, in file order."""
    from towerflow.models import input_pipeline

    spec = tft_output.raw_feature_spec()
    columns: dict[str, list[np.ndarray]] = {key: [] for key in spec}
    serialized = []
    for batch in input_pipeline.records(file_pattern, shuffle=False, seed=None).batch(8192):
        serialized.append(batch.numpy())
        for key, value in tf.io.parse_example(batch, spec).items():
            if isinstance(value, tf.SparseTensor):
                value = tf.sparse.to_dense(value, default_value=export._default_value(value.dtype))
            else:
                value = tf.reshape(value, [-1])
            columns[key].append(value.numpy())
    out = {}
    for key, parts in columns.items():
        if parts and parts[0].ndim == 2:  # pad list features to one width
            width = max(p.shape[1] for p in parts)
            pad = b"" if parts[0].dtype == object else 0
            parts = [np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=pad) for p in parts]
        out[key] = np.concatenate(parts)
    return out, serialized


def epoch_dataset(
    columns: Mapping[str, np.ndarray],
    pools: np.ndarray,
    events: EventIndex,
    timestamps: np.ndarray,
    num_negatives: int,
    batch_size: int,
    rng: np.random.Generator,
    base: BaseScore | None = None,
    positives: np.ndarray | None = None,
) -> tf.data.Dataset:
    """One epoch's shuffled batches: the transformed training columns plus freshly sampled hard
    negatives and their popularity as of each example's timestamp."""
    negatives = sample_negatives(pools, num_negatives, rng)
    safe = np.maximum(negatives, 0)
    popularity = events.popularity(safe.ravel(), np.repeat(timestamps, negatives.shape[1]))
    pop = transformed_popularity(popularity).reshape(negatives.shape + (len(F.ITEM_POPULARITY_XF),))
    data = {**columns, NEGATIVE_ITEMS: negatives, NEGATIVE_POPULARITY: pop}
    if base is not None:  # positives: the examples' catalog rows
        positive_recent = events.popularity(positives, timestamps)[F.ITEM_RECENT_COUNT]
        log_recent = np.concatenate(
            [np.log1p(positive_recent)[:, None], np.log1p(popularity[F.ITEM_RECENT_COUNT]).reshape(negatives.shape)], 1
        )
        data[BASE_SCORES] = base.scores(np.concatenate([positives[:, None], safe], axis=1), log_recent)
    order = rng.permutation(len(negatives))
    data = {key: value[order] for key, value in data.items()}
    return tf.data.Dataset.from_tensor_slices(data).batch(batch_size, drop_remainder=True).prefetch(2)


def fit(
    model: HardNegativeRanker,
    columns: Mapping[str, np.ndarray],
    pools: np.ndarray,
    events: EventIndex,
    timestamps: np.ndarray,
    epochs: int,
    seed: int = 0,
    base: BaseScore | None = None,
    positives: np.ndarray | None = None,
) -> list[dict]:
    """Trains `epochs` passes, a new negative sample each; returns each epoch's logs and seconds."""
    rng = np.random.default_rng(seed)
    history = []
    for epoch in range(epochs):
        started = time.time()
        dataset = epoch_dataset(
            columns,
            pools,
            events,
            timestamps,
            model.config.num_negatives,
            model.config.batch_size,
            rng,
            base,
            positives,
        )
        logs = model.fit(dataset, epochs=1, verbose=0).history
        entry = {key: float(value[-1]) for key, value in logs.items()}
        entry["seconds"] = time.time() - started
        history.append(entry)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(entry.items()))
        print(f"hard-negative ranker epoch {epoch + 1}: {shown}", flush=True)
    return history
