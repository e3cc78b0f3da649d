"""TFX Transform entry point: raw interaction features -> model-ready tensors.

`preprocessing_fn` runs twice with the same code: once over the training split
in Beam (the analyzers compute vocabularies and counts), then as a graph that
travels inside every exported model, so serving applies exactly the training
transformation to raw features.

Conventions of the output (the names live in `models.features`):

* Every id is an int64 index into an embedding table whose row `PAD_ID` (0) is
  reserved for padding: vocabulary index i becomes i + 1 and the
  `NUM_OOV_BUCKETS` OOV buckets follow the vocabulary. Unknown values therefore
  map to an OOV row instead of failing. Empty strings (an unknown gender or
  zip) are dropped from text vocabularies by tf.Transform, so they share the
  OOV bucket with values never seen in training; that bucket is trained.
* List features (history, genres, title tokens) are right-padded with PAD_ID to
  fixed lengths; the models mask with `ids != PAD_ID`.
* One item vocabulary, computed over the candidate `item_id`, is applied to both
  `item_id` and `hist_item_ids`, so a history entry and a candidate share an
  embedding row.
* Ages and release years are bucketized with fixed boundaries whose first
  bucket holds the "unknown" sentinels (-1 and 0).

The function accepts scalar features as dense [B] or [B, 1] tensors and list
features as tf.SparseTensor or tf.RaggedTensor, the two forms TFX produces
depending on the schema.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import tensorflow as tf
import tensorflow_transform as tft
from tensorflow.python.framework.ops import EagerTensor  # tf.Transform's own test for a known path

from towerflow.models import features as F
from towerflow.models.vocabulary import VocabularyLimits

# Bucket 0 of each holds the unknown sentinel (age -1, year 0): both sentinels
# are below the first boundary.
AGE_BOUNDARIES = (0, 18, 25, 35, 45, 50, 56)
YEAR_BOUNDARIES = (1, 1940, 1960, 1970, 1980, 1990, 1995, 2000)
ZIP_PREFIX_LENGTH = 3
NUM_HOURS = 24
NUM_DAYS_OF_WEEK = 7
MAX_RATING = 5.0

# Embedding-table names. Several transformed features may read the same table
# (the item table serves both ITEM_ID_XF and HIST_ITEM_IDS_XF).
USER_ID_TABLE = "user_id"
ITEM_ID_TABLE = "item_id"
USER_GENDER_TABLE = "user_gender"
USER_OCCUPATION_TABLE = "user_occupation"
USER_ZIP_PREFIX_TABLE = "user_zip_prefix"
USER_AGE_BUCKET_TABLE = "user_age_bucket"
ITEM_GENRE_TABLE = "item_genre"
ITEM_TITLE_TOKEN_TABLE = "item_title_token"
ITEM_YEAR_BUCKET_TABLE = "item_year_bucket"
CTX_HOUR_TABLE = "ctx_hour"
CTX_DAY_OF_WEEK_TABLE = "ctx_day_of_week"

# Which vocabulary file sizes which table.
TABLE_VOCABULARIES = {
    USER_ID_TABLE: F.USER_ID_VOCAB,
    ITEM_ID_TABLE: F.ITEM_ID_VOCAB,
    USER_GENDER_TABLE: F.USER_GENDER_VOCAB,
    USER_OCCUPATION_TABLE: F.USER_OCCUPATION_VOCAB,
    USER_ZIP_PREFIX_TABLE: F.USER_ZIP_PREFIX_VOCAB,
    ITEM_GENRE_TABLE: F.ITEM_GENRE_VOCAB,
    ITEM_TITLE_TOKEN_TABLE: F.ITEM_TITLE_TOKEN_VOCAB,
}
# Tables with a fixed number of rows, independent of the data.
FIXED_TABLE_SIZES = {
    USER_AGE_BUCKET_TABLE: len(AGE_BOUNDARIES) + 1,
    ITEM_YEAR_BUCKET_TABLE: len(YEAR_BOUNDARIES) + 1,
    CTX_HOUR_TABLE: NUM_HOURS,
    CTX_DAY_OF_WEEK_TABLE: NUM_DAYS_OF_WEEK,
}


def vocab_table_size(vocabulary_size: int) -> int:
    """Rows of an embedding table for a vocabulary: padding + vocabulary + OOV."""
    return 1 + vocabulary_size + F.NUM_OOV_BUCKETS


def table_sizes(vocabulary_sizes: Mapping[str, int]) -> dict[str, int]:
    """Rows of every embedding table, from vocabulary sizes keyed by file name."""
    sizes = {table: vocab_table_size(vocabulary_sizes[vocab]) for table, vocab in TABLE_VOCABULARIES.items()}
    sizes.update(FIXED_TABLE_SIZES)
    return sizes


def table_sizes_from_transform_output(tft_output: tft.TFTransformOutput) -> dict[str, int]:
    """Rows of every embedding table, read from a Transform output directory."""
    return table_sizes({vocab: tft_output.vocabulary_size_by_name(vocab) for vocab in TABLE_VOCABULARIES.values()})


# --- input normalisation -------------------------------------------------------


def _to_ragged(x: tf.Tensor | tf.SparseTensor | tf.RaggedTensor) -> tf.RaggedTensor:
    """A [B, None] ragged view of a list feature in any of its TFX forms."""
    if isinstance(x, tf.RaggedTensor):
        return x
    if isinstance(x, tf.SparseTensor):
        return tf.RaggedTensor.from_sparse(x)
    return tf.RaggedTensor.from_tensor(x)


def _pad_to_dense(x: tf.RaggedTensor, max_len: int, keep: str = "first") -> tf.Tensor:
    """Right-pads (and truncates) each row to `max_len` with PAD_ID.

    `keep="last"` keeps the newest entries of an oldest-first list such as the
    history; the rest of the lists keep their leading entries.
    """
    if keep == "last":
        x = x[:, -max_len:]
    return x.to_tensor(default_value=tf.cast(F.PAD_ID, x.dtype), shape=[None, max_len])


def _scalar(x: tf.Tensor | tf.SparseTensor | tf.RaggedTensor, default) -> tf.Tensor:
    """A dense [B] tensor from a scalar feature given as [B], [B, 1] or sparse."""
    if isinstance(x, (tf.SparseTensor, tf.RaggedTensor)):
        return _to_ragged(x).to_tensor(default_value=tf.cast(default, x.dtype), shape=[None, 1])[:, 0]
    if x.shape.rank == 2:
        return x[:, 0]
    return x


def _shift_past_padding(ids):
    """Moves vocabulary ids up by one so that row PAD_ID is never a real value."""
    return ids + 1


def _apply_vocab(x, vocab):
    return _shift_past_padding(tft.apply_vocabulary(x, vocab, num_oov_buckets=F.NUM_OOV_BUCKETS))


def _threshold(min_count: int) -> int | None:
    # tf.Transform keeps values with frequency >= threshold; 1 keeps everything, like no threshold.
    return min_count if min_count > 1 else None


def _vocab_ids(x, vocab_filename: str, top_k: int | None = None, min_count: int = 1) -> tf.Tensor:
    return _shift_past_padding(
        tft.compute_and_apply_vocabulary(
            x,
            num_oov_buckets=F.NUM_OOV_BUCKETS,
            vocab_filename=vocab_filename,
            top_k=top_k,
            frequency_threshold=_threshold(min_count),
        )
    )


def _bucketize(x: tf.Tensor, boundaries) -> tf.Tensor:
    # Fixed boundaries (no analyzer): the buckets must mean the same thing in
    # every pipeline run, and the sentinels must land in their own bucket.
    return tf.cast(
        tf.raw_ops.Bucketize(input=tf.cast(x, tf.float32), boundaries=[float(b) for b in boundaries]), tf.int64
    )


def title_tokens(titles: tf.Tensor) -> tf.RaggedTensor:
    """Lower-cased title words; punctuation separates tokens like whitespace."""
    cleaned = tf.strings.regex_replace(tf.strings.lower(titles), r"[[:punct:]]", " ")
    return tf.strings.split(cleaned)


def _item_frequency_lookup(x: tf.Tensor, vocab_path: tf.Tensor):
    """Training-interaction count of each item, 0 for items not in the file."""
    # The frequency vocabulary's lines are "count item_id"; tf.Transform writes
    # and reads them with a space delimiter, so item ids must not contain
    # spaces (MovieLens and synthetic ids are plain tokens).
    with contextlib.ExitStack() as stack:
        if tf.inside_function() and isinstance(vocab_path, (EagerTensor, str, bytes)):
            # Once the analyzers have run, the path is a constant: build the table in the init scope, as
            # tf.Transform builds its own lookups' tables (tf_utils.construct_and_lookup_table). Built inside
            # the traced function it was re-read from the file and re-hashed on every call -- every batch
            # Transform applies and every call of an exported model's signatures (~10 ms each).
            stack.enter_context(tf.init_scope())
        initializer = tf.lookup.TextFileInitializer(
            vocab_path,
            key_dtype=tf.string,
            key_index=1,
            value_dtype=tf.int64,
            value_index=0,
            delimiter=" ",
        )
        table = tf.lookup.StaticHashTable(initializer, default_value=0)
    return table.lookup(x), table.size()


def _item_log_frequency(item_ids: tf.Tensor, limits: VocabularyLimits) -> tf.Tensor:
    frequency_vocab = tft.vocabulary(
        item_ids,
        vocab_filename=F.ITEM_FREQUENCY_VOCAB,
        store_frequency=True,
        top_k=limits.item_top_k,
        frequency_threshold=_threshold(limits.item_min_count),
    )
    counts = tft.apply_vocabulary(item_ids, frequency_vocab, lookup_fn=_item_frequency_lookup)
    # The smallest count in the file (items cut by the limits read 0 and are
    # skipped); unseen and cut items at transform time get it.
    min_count = tft.min(tf.where(counts > 0, counts, tf.int64.max), reduce_instance_dims=True)
    total = tft.size(item_ids)
    counts = tf.where(counts > 0, counts, min_count)
    return tf.math.log(tf.cast(counts, tf.float32) / tf.cast(total, tf.float32))


# --- the entry point -----------------------------------------------------------


def preprocessing_fn(inputs: Mapping[str, tf.Tensor], custom_config: Mapping | None = None) -> dict[str, tf.Tensor]:
    """tf.Transform preprocessing_fn for the raw interaction examples.

    TFX binds the Transform component's custom_config; its VOCABULARY_CONFIG_KEY
    entry (VocabularyLimits.settings()) bounds the id vocabularies.
    """
    limits = VocabularyLimits.from_custom_config(custom_config)
    out: dict[str, tf.Tensor] = {}

    # Ids. One item vocabulary over the candidate ids, applied to history too.
    out[F.USER_ID_XF] = _vocab_ids(
        _scalar(inputs[F.USER_ID], b""), F.USER_ID_VOCAB, limits.user_top_k, limits.user_min_count
    )
    item_ids = _scalar(inputs[F.ITEM_ID], b"")
    item_vocab = tft.vocabulary(
        item_ids,
        vocab_filename=F.ITEM_ID_VOCAB,
        top_k=limits.item_top_k,
        frequency_threshold=_threshold(limits.item_min_count),
    )
    out[F.ITEM_ID_XF] = _apply_vocab(item_ids, item_vocab)
    history = _to_ragged(inputs[F.HIST_ITEM_IDS])
    out[F.HIST_ITEM_IDS_XF] = _pad_to_dense(_apply_vocab(history, item_vocab), F.HIST_MAX_LEN, keep="last")
    out[F.ITEM_LOG_FREQUENCY_XF] = _item_log_frequency(item_ids, limits)

    # User categories.
    out[F.USER_GENDER_XF] = _vocab_ids(_scalar(inputs[F.USER_GENDER], b""), F.USER_GENDER_VOCAB)
    out[F.USER_OCCUPATION_XF] = _vocab_ids(_scalar(inputs[F.USER_OCCUPATION], b""), F.USER_OCCUPATION_VOCAB)
    zip_prefix = tf.strings.substr(_scalar(inputs[F.USER_ZIP], b""), 0, ZIP_PREFIX_LENGTH)
    out[F.USER_ZIP_PREFIX_XF] = _vocab_ids(zip_prefix, F.USER_ZIP_PREFIX_VOCAB)
    out[F.USER_AGE_BUCKET_XF] = _bucketize(_scalar(inputs[F.USER_AGE], -1), AGE_BOUNDARIES)

    # Item content.
    genres = _vocab_ids(_to_ragged(inputs[F.ITEM_GENRES]), F.ITEM_GENRE_VOCAB)
    out[F.ITEM_GENRES_XF] = _pad_to_dense(genres, F.GENRES_MAX_LEN)
    tokens = _vocab_ids(
        title_tokens(_scalar(inputs[F.ITEM_TITLE], b"")), F.ITEM_TITLE_TOKEN_VOCAB, limits.title_token_top_k
    )
    out[F.ITEM_TITLE_TOKENS_XF] = _pad_to_dense(tokens, F.TITLE_MAX_TOKENS)
    out[F.ITEM_YEAR_BUCKET_XF] = _bucketize(_scalar(inputs[F.ITEM_RELEASE_YEAR], 0), YEAR_BOUNDARIES)

    # Point-in-time counts are heavy-tailed; log1p keeps them in a range an MLP
    # handles without learned normalisation statistics.
    def log1p(key, default=0):
        return tf.math.log1p(tf.maximum(tf.cast(_scalar(inputs[key], default), tf.float32), 0.0))

    out[F.USER_PRIOR_COUNT_LOG_XF] = log1p(F.USER_PRIOR_COUNT)
    out[F.USER_DAYS_SINCE_FIRST_LOG_XF] = log1p(F.USER_DAYS_SINCE_FIRST, 0.0)
    out[F.ITEM_PRIOR_COUNT_LOG_XF] = log1p(F.ITEM_PRIOR_COUNT)
    out[F.ITEM_RECENT_COUNT_LOG_XF] = log1p(F.ITEM_RECENT_COUNT)
    out[F.ITEM_DAYS_SINCE_FIRST_LOG_XF] = log1p(F.ITEM_DAYS_SINCE_FIRST, 0.0)
    mean_rating = tf.cast(_scalar(inputs[F.USER_PRIOR_MEAN_RATING], 0.0), tf.float32)
    out[F.USER_PRIOR_MEAN_RATING_XF] = mean_rating / MAX_RATING

    # Context. Clipped so that a malformed value cannot index outside its table.
    out[F.CTX_HOUR_XF] = tf.clip_by_value(tf.cast(_scalar(inputs[F.CTX_HOUR], 0), tf.int64), 0, NUM_HOURS - 1)
    out[F.CTX_DAY_OF_WEEK_XF] = tf.clip_by_value(
        tf.cast(_scalar(inputs[F.CTX_DAY_OF_WEEK], 0), tf.int64), 0, NUM_DAYS_OF_WEEK - 1
    )

    # Labels. Serving graphs that lack these inputs drop these outputs.
    out[F.RATING_XF] = tf.cast(_scalar(inputs[F.RATING], 0.0), tf.float32)
    out[F.LIKED_XF] = tf.cast(_scalar(inputs[F.LIKED], 0), tf.float32)
    out[F.TIMESTAMP_XF] = tf.cast(_scalar(inputs[F.TIMESTAMP], 0), tf.int64)
    return out
