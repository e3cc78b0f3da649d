"""The vectorised point-in-time features equal THE definitions in models.features, on every MovieLens-100K row.

Every user's and every item's group is computed both ways: the numpy path
ingestion uses (components/ingestion/point_in_time.py) and the scalar
functions serving uses (`F.history_features`, `F.item_features_at`,
`F.context_features`), one cut-off at a time. Values must be identical, not
close: ingestion's output may not change with the vectorisation.
"""

import numpy as np
import pytest
import tensorflow as tf

from towerflow.components.ingestion import point_in_time, readers
from towerflow.components.ingestion.beam_ingest import to_tf_example
from towerflow.models import features as F


@pytest.fixture(scope="module")
def ml100k(ml100k_dir):
    return readers.load_dataset(ml100k_dir).interactions


def test_item_popularity_equals_item_features_at_for_every_ml100k_row(ml100k):
    checked = 0
    for _, group in ml100k.groupby("item_id", sort=False):
        ts = group["timestamp"].to_numpy()
        got = point_in_time.item_popularity(ts)
        ordered = sorted(ts.tolist())
        for k, as_of in enumerate(ts.tolist()):
            expected = F.item_features_at(ordered, as_of)
            assert {key: got[key][k].item() for key in expected} == expected
            checked += 1
    assert checked == 100_000


def _user_rows(group, history_length):
    """(timestamps, item ids, ratings) of one user in `user_order`, and the vectorised features."""
    ts, items, ratings = group["timestamp"].to_numpy(), group["item_id"].tolist(), group["rating"].to_numpy()
    order = point_in_time.user_order(ts, items, ratings)
    ts, items, ratings = ts[order], [items[k] for k in order], ratings[order]
    columns, offsets, indices = point_in_time.user_history(ts, items, ratings, history_length)
    return ts, items, ratings, columns, offsets, indices


@pytest.mark.parametrize("history_length", [20, 3, 0])
def test_user_history_equals_history_features_for_every_ml100k_row(ml100k, history_length):
    checked = 0
    for _, group in ml100k.groupby("user_id", sort=False):
        ts, items, ratings, columns, offsets, indices = _user_rows(group, history_length)
        events = [F.Event(int(t), i, float(r)) for t, i, r in zip(ts, items, ratings)]
        history = F.UserHistory(events)
        # user_order sorts exactly like F.Event
        assert [(e.timestamp, e.item_id, e.rating) for e in history.events] == [
            (e.timestamp, e.item_id, e.rating) for e in events
        ]
        for k, as_of in enumerate(ts.tolist()):
            expected = F.history_features(history, as_of, history_length)
            got = {key: columns[key][k].item() for key in columns}
            got[F.HIST_ITEM_IDS] = [items[j] for j in indices[offsets[k] : offsets[k + 1]]]
            assert got == expected, (k, got, expected)  # exact, floats included
            checked += 1
    assert checked == 100_000


def test_context_equals_context_features_for_every_ml100k_timestamp_and_edge_cases(ml100k):
    ts = np.concatenate([ml100k["timestamp"].to_numpy(), [0, 1, 3599, 3600, 86399, 86400, 2**31, 4102444799]])
    got = point_in_time.context(ts)
    for k, t in enumerate(ts.tolist()):
        assert {key: got[key][k].item() for key in got} == F.context_features(t)


def test_negative_history_length_is_rejected():
    with pytest.raises(ValueError, match="max_len must be >= 0"):
        point_in_time.user_history(np.array([1]), ["i"], np.array([1.0]), -1)


def test_batched_encoding_equals_to_tf_example_row_by_row(ml100k):
    """encode_examples writes the same tf.Examples (types and values) as the row-wise encoder."""
    group = ml100k[ml100k["user_id"] == ml100k["user_id"].iloc[0]]
    ts, items, ratings, columns, offsets, indices = _user_rows(group, 20)
    n = len(ts)
    genres = [["Drama", "Comedy"] if k % 2 else [] for k in range(n)]
    rows = [
        {
            F.USER_ID: "u1",
            F.ITEM_ID: items[k],
            F.RATING: float(ratings[k]),
            F.TIMESTAMP: int(ts[k]),
            F.USER_AGE: -1,
            F.ITEM_TITLE: "Am\u00e9lie",
            F.ITEM_GENRES: genres[k],
            **{key: columns[key][k].item() for key in columns},
            F.HIST_ITEM_IDS: [items[j] for j in indices[offsets[k] : offsets[k + 1]]],
        }
        for k in range(n)
    ]
    encoded = point_in_time.encode_examples(
        {
            F.USER_ID: point_in_time.list_column(F.USER_ID, ["u1"] * n),
            F.ITEM_ID: point_in_time.list_column(F.ITEM_ID, items),
            F.RATING: point_in_time.list_column(F.RATING, ratings),
            F.TIMESTAMP: point_in_time.list_column(F.TIMESTAMP, ts),
            F.USER_AGE: point_in_time.list_column(F.USER_AGE, [-1] * n),
            F.ITEM_TITLE: point_in_time.list_column(F.ITEM_TITLE, ["Am\u00e9lie"] * n),
            F.ITEM_GENRES: point_in_time.list_column(F.ITEM_GENRES, genres),
            **{key: point_in_time.list_column(key, values) for key, values in columns.items()},
            F.HIST_ITEM_IDS: point_in_time.list_column(F.HIST_ITEM_IDS, [items[j] for j in indices], offsets),
        }
    )
    assert len(encoded) == n
    for serialized, row in zip(encoded, rows):
        assert tf.train.Example.FromString(serialized) == to_tf_example(row)


def test_an_undeclared_feature_is_rejected():
    with pytest.raises(KeyError, match="not declared"):
        point_in_time.list_column("no_such_feature", [1, 2])
