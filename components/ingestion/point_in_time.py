"""Ingestion's point-in-time features for a whole user or item group at once, and batched tf.Example encoding.

`models.features` stays THE definition of every feature: `history_features`,
`item_features_at` and `context_features` answer one cut-off at a time, which
is what serving needs. Ingestion asks the same question for every interaction
of a group, so here one sort per group and numpy over the group give the same
answers for all of its rows at once (tests/components/test_point_in_time.py
checks them against the functions in `models.features` on MovieLens-100K):

* prior counts are `searchsorted(sorted_timestamps, as_of, "left")`, exactly
  the `bisect_left` of the scalar functions (strictly earlier events only);
* the mean prior rating divides a cumulative sum taken in the same
  (timestamp, item_id, rating) order as `UserHistory`'s prefix sums, so the
  float64 values are bit-identical;
* the history ids of a row are a slice of the user's sorted item ids, gathered
  for all rows with one index array.

`encode_examples` turns columns into serialized tf.Examples with tfx_bsl's
C++ RecordBatch encoder, typed by the feature contract (int64, float32 or
bytes lists, the same types `beam_ingest.to_tf_example` writes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
from tfx_bsl.coders import example_coder

from towerflow.models import features as F

_RECENT_WINDOW_SECONDS = int(F.RECENT_WINDOW_DAYS * F.SECONDS_PER_DAY)
_SECONDS_PER_HOUR = 3600
# 1970-01-01, day 0 of unix time, was a Thursday (Monday = 0).
_EPOCH_WEEKDAY = 3


def item_popularity(timestamps: np.ndarray) -> dict[str, np.ndarray]:
    """`F.item_features_at(sorted(timestamps), t)` for every t in `timestamps`, as arrays in the input order."""
    ts = np.asarray(timestamps, dtype=np.int64)
    ordered = np.sort(ts, kind="stable")
    prior = np.searchsorted(ordered, ts, side="left")
    recent = prior - np.searchsorted(ordered, ts - _RECENT_WINDOW_SECONDS, side="left")
    days_first = np.where(prior > 0, (ts - ordered[0]) / F.SECONDS_PER_DAY, 0.0)
    return {F.ITEM_PRIOR_COUNT: prior, F.ITEM_RECENT_COUNT: recent, F.ITEM_DAYS_SINCE_FIRST: days_first}


def user_order(timestamps: np.ndarray, item_ids: Sequence[str], ratings: np.ndarray) -> np.ndarray:
    """The permutation that sorts a user's events like `F.Event`: by (timestamp, item_id, rating)."""
    return np.lexsort((np.asarray(ratings), np.asarray(item_ids, dtype=str), np.asarray(timestamps)))


def user_history(
    timestamps: np.ndarray, item_ids: Sequence[str], ratings: np.ndarray, max_len: int
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """`F.history_features(events, t, max_len)` for every event of one user, events already in `user_order`.

    Returns (scalar columns, history offsets, history indices): row j's
    `hist_item_ids` are `item_ids[indices[offsets[j]:offsets[j + 1]]]`.
    """
    if max_len < 0:
        raise ValueError(f"max_len must be >= 0, got {max_len}")
    ts = np.asarray(timestamps, dtype=np.int64)
    prior = np.searchsorted(ts, ts, side="left")
    # np.cumsum adds left to right like UserHistory's prefix sums, so the quotients match bit for bit.
    rating_prefix = np.concatenate(([0.0], np.cumsum(np.asarray(ratings, dtype=np.float64))))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(prior > 0, rating_prefix[prior] / np.maximum(prior, 1), 0.0)
    days_first = np.where(prior > 0, (ts - ts[0]) / F.SECONDS_PER_DAY, 0.0) if ts.size else np.zeros(0)
    start = np.maximum(prior - max_len, 0) if max_len else prior
    lengths = prior - start
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    # indices of every row's slice start..prior, concatenated: a ramp restarted at each row's start
    indices = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1] - start, lengths)
    columns = {F.USER_PRIOR_COUNT: prior, F.USER_PRIOR_MEAN_RATING: mean, F.USER_DAYS_SINCE_FIRST: days_first}
    return columns, offsets, indices


def context(timestamps: np.ndarray) -> dict[str, np.ndarray]:
    """`F.context_features(t)` (UTC hour and weekday) for non-negative unix seconds."""
    ts = np.asarray(timestamps, dtype=np.int64)
    return {
        F.CTX_HOUR: (ts // _SECONDS_PER_HOUR) % 24,
        F.CTX_DAY_OF_WEEK: (ts // int(F.SECONDS_PER_DAY) + _EPOCH_WEEKDAY) % 7,
    }


# --- encoding -------------------------------------------------------------------


def _as_values(key: str, values) -> pa.Array:
    if isinstance(values, pa.Array):
        array = values
    elif key in F.BYTES_FEATURES:
        array = pa.array(values, type=pa.string())
    elif key in F.FLOAT_FEATURES:
        array = pa.array(np.asarray(values, dtype=np.float32))
    elif key in F.INT_FEATURES:
        array = pa.array(np.asarray(values, dtype=np.int64))
    else:
        raise KeyError(f"feature {key!r} is not declared in models/features.py")
    if pa.types.is_string(array.type):
        array = array.cast(pa.binary())
    return array


def list_column(key: str, values, offsets: np.ndarray | None = None) -> pa.ListArray:
    """One feature's column: `values` (numbers, str, or a pyarrow array) cut into rows at `offsets`.

    Without offsets every row holds one value (a scalar feature). List features
    given as a sequence of sequences are converted row by row.
    """
    if offsets is None and key in F.LIST_FEATURES and not isinstance(values, pa.Array):
        nested = pa.array(values, type=pa.list_(pa.string()))
        return nested.cast(pa.list_(pa.binary()))
    flat = _as_values(key, values)
    if offsets is None:
        offsets = np.arange(len(flat) + 1)
    return pa.ListArray.from_arrays(pa.array(np.asarray(offsets, dtype=np.int32)), flat)


def encode_examples(columns: Mapping[str, pa.ListArray]) -> list[bytes]:
    """Serialized tf.Examples, one per row of `columns` (all of the same length)."""
    if not columns:
        return []
    batch = pa.RecordBatch.from_arrays(list(columns.values()), list(columns.keys()))
    return example_coder.RecordBatchToExamples(batch)
