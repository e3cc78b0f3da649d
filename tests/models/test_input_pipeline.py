"""day_batches makes exactly the batches of a per-example group_by_window over the same example stream."""

import numpy as np
import pytest
import tensorflow as tf

from towerflow.models import features as F
from towerflow.models import input_pipeline

SPEC = {
    F.TIMESTAMP_XF: tf.io.FixedLenFeature([], tf.int64),
    "row": tf.io.FixedLenFeature([], tf.int64),
    "vector": tf.io.FixedLenFeature([3], tf.float32),
}


def _stream(n: int, seed: int) -> tuple[tf.data.Dataset, np.ndarray]:
    """n serialized examples in a fixed order; timestamps spread over ~10 buckets of 1 hour, unevenly."""
    rng = np.random.default_rng(seed)
    timestamps = (rng.zipf(1.5, n) % 10) * 3600 + rng.integers(0, 3600, n)
    records = []
    for row, ts in enumerate(timestamps):
        feature = {
            F.TIMESTAMP_XF: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(ts)])),
            "row": tf.train.Feature(int64_list=tf.train.Int64List(value=[row])),
            "vector": tf.train.Feature(float_list=tf.train.FloatList(value=[row, row + 0.5, -row])),
        }
        records.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return tf.data.Dataset.from_tensor_slices(records), timestamps


def _group_by_window(records, batch_size):
    """The per-example reference: a group_by_window keyed by time bucket over the shuffled stream."""
    return (
        records.batch(64)
        .map(lambda s: tf.io.parse_example(s, SPEC))
        .unbatch()
        .group_by_window(
            key_func=lambda x: x[F.TIMESTAMP_XF] // 3600,
            reduce_func=lambda _, window: window.batch(batch_size),
            window_size=batch_size,
        )
    )


def _batches(dataset):
    out = []
    for batch in dataset.as_numpy_iterator():
        rows = batch["row"].tolist()
        np.testing.assert_array_equal(batch["vector"][:, 0], batch["row"])  # features stay aligned
        assert len({t // 3600 for t in batch[F.TIMESTAMP_XF].tolist()}) == 1  # one bucket per batch
        out.append(tuple(rows))
    return out


@pytest.mark.parametrize("n, batch_size, chunk_size", [(500, 16, 7), (500, 16, 64), (1000, 50, 1000), (30, 64, 8)])
def test_same_batches_as_group_by_window(n, batch_size, chunk_size):
    records, _ = _stream(n, seed=n + batch_size)
    expected = _batches(_group_by_window(records, batch_size))
    got = _batches(input_pipeline._regrouped(records, SPEC, batch_size, 1.0, seed=3, chunk_size=chunk_size))
    assert sorted(got) == sorted(expected)
    assert sum(len(b) for b in got) == n  # every example exactly once


def test_batch_order_is_mixed_and_seeded():
    records, timestamps = _stream(2000, seed=1)
    first = _batches(input_pipeline._regrouped(records, SPEC, 8, 1.0, seed=5, chunk_size=2000))
    again = _batches(input_pipeline._regrouped(records, SPEC, 8, 1.0, seed=5, chunk_size=2000))
    other = _batches(input_pipeline._regrouped(records, SPEC, 8, 1.0, seed=6, chunk_size=2000))
    assert first == again and first != other and sorted(first) == sorted(other)
    buckets = [timestamps[b[0]] // 3600 for b in first]  # not emitted in bucket order
    assert buckets != sorted(buckets)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        input_pipeline.day_batches("x", None, 0, 24.0)
    with pytest.raises(ValueError, match="bucket_hours must be > 0"):
        input_pipeline.day_batches("x", None, 8, 0.0)
    with pytest.raises(ValueError, match="fixed-length features"):
        input_pipeline._empty_like({"ids": tf.io.VarLenFeature(tf.int64)})


def _write_gzip(path, records):
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for record in records:
            writer.write(record)


def test_records_reads_every_file_in_order_or_shuffled(tmp_path):
    names = [f"r{i}".encode() for i in range(40)]
    _write_gzip(tmp_path / "a.gz", names[:25])
    _write_gzip(tmp_path / "b.gz", names[25:])
    pattern = str(tmp_path / "*.gz")
    ordered = list(input_pipeline.records(pattern, shuffle=False, seed=None).as_numpy_iterator())
    assert sorted(ordered) == sorted(names) and len(ordered) == len(names)
    assert [n for n in ordered if n in names[:25]] == names[:25]  # a file's records keep their order unshuffled
    shuffled = list(input_pipeline.records([pattern], shuffle=True, seed=1).as_numpy_iterator())
    assert sorted(shuffled) == sorted(names) and shuffled != ordered


def test_count_records_counts_every_file(tmp_path):
    _write_gzip(tmp_path / "a.gz", [b"x"] * 9000)
    _write_gzip(tmp_path / "b.gz", [b"y"] * 7)
    assert input_pipeline.count_records(str(tmp_path / "*.gz")) == 9007


@pytest.mark.parametrize(
    "epochs, examples, budget, expected",
    [
        (5, 90_000, 2_000_000, 5),  # ml-100k: the configured epochs
        (5, 900_000, 2_000_000, 2),  # 1M interactions
        (5, 18_000_000, 2_000_000, 1),  # 20M: at least one pass
        (5, 900_000, None, 5),  # no budget
        (3, 0, 10, 3),  # nothing counted: the configured epochs
    ],
)
def test_budgeted_epochs(epochs, examples, budget, expected):
    assert input_pipeline.budgeted_epochs(epochs, examples, budget) == expected


def test_budget_must_be_positive():
    with pytest.raises(ValueError, match="example budget"):
        input_pipeline.budgeted_epochs(5, 100, 0)
