"""The Trainers' example reading, and the ranker's time-bucketed batches built a chunk at a time.

`records` is the parallel, shuffled read of the transformed TFRecords that
every input function starts from. `day_batches` makes the same batches as
grouping the shuffled example stream with a per-example `group_by_window`
keyed by time bucket (the ranker's one-day batches; the tests hold that
reference): every bucket's examples, in stream order, cut into batches of
`batch_size`, plus one smaller batch of each bucket's remainder at the end
of the data. Only the order in which the batches
come out differs. The work is per chunk instead of per example: a chunk of
parsed examples is sorted by bucket (a stable sort, so stream order holds
within a bucket), the full batches are cut with vectorised index arithmetic
and emitted in a random order, and the bucket remainders are carried into the
next chunk. The carry holds fewer than `batch_size` examples per bucket, so
memory is bounded by buckets x batch size, whatever the data size.

It is pure tf.data (no Python generator), so it works under every
tf.distribute strategy that `input_fn` works under.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
import tensorflow_transform as tft

from towerflow.models import features as F

SHUFFLE_BUFFER = 50_000
# Examples parsed and regrouped per step; large enough that the sort and gathers dominate the per-step overhead.
CHUNK_SIZE = 16_384
# The Trainers' custom_config key of the example budget (`budgeted_epochs`, run_fns._fit).
EXAMPLE_BUDGET_KEY = "example_budget"
# Validation after each epoch reads at most this many eval examples (the same first batches every epoch);
# custom_config[VALIDATION_EXAMPLES_KEY] sets it, 0 for the whole eval split. ml-100k's ~10k all count.
VALIDATION_EXAMPLES = 50_000
VALIDATION_EXAMPLES_KEY = "validation_examples"


def records(file_pattern: str | Sequence[str], shuffle: bool, seed: int | None) -> tf.data.Dataset:
    """Serialized examples of every file, read in parallel; shuffled with a SHUFFLE_BUFFER if asked."""
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files = tf.data.Dataset.list_files(patterns, shuffle=shuffle, seed=seed)
    dataset = files.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type="GZIP"),
        cycle_length=tf.data.AUTOTUNE,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not shuffle,
    )
    if shuffle:
        dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    return dataset


def count_records(file_pattern: str | Sequence[str]) -> int:
    """Examples in the files: one parallel read, nothing parsed."""
    batches = records(file_pattern, shuffle=False, seed=None).batch(8192)
    return int(batches.reduce(tf.constant(0, tf.int64), lambda n, batch: n + tf.size(batch, out_type=tf.int64)))


def budgeted_epochs(epochs: int, examples: int, budget: int | None) -> int:
    """The epochs a Trainer runs under an example budget: min(epochs, max(1, budget // examples)).

    Larger data needs fewer passes; every example is still seen at least once. None: no budget.
    """
    if budget is None or examples <= 0:
        return epochs
    if budget < 1:
        raise ValueError(f"the example budget must be >= 1, got {budget}")
    return min(epochs, max(1, budget // examples))


def _empty_like(spec: dict) -> dict[str, tf.Tensor]:
    """Zero rows of every feature in a parsing spec of fixed-length features."""
    empty = {}
    for key, feature in spec.items():
        if not isinstance(feature, tf.io.FixedLenFeature):
            raise ValueError(f"day_batches needs fixed-length features; {key!r} is {type(feature).__name__}")
        empty[key] = tf.zeros([0, *feature.shape], dtype=feature.dtype)
    return empty


def regroup(carry: dict, chunk: dict, final: tf.Tensor, batch_size: int, bucket_seconds: int):
    """One step: (new carry, (rows of full batches sorted by bucket, batch row_splits)).

    With `final` every row is emitted (each bucket's remainder as a last, smaller batch).
    """
    rows = {key: tf.concat([carry[key], chunk[key]], axis=0) for key in carry}
    bucket = rows[F.TIMESTAMP_XF] // bucket_seconds
    order = tf.argsort(bucket, stable=True)
    bucket = tf.gather(bucket, order)
    n = tf.size(bucket, out_type=tf.int64)
    index = tf.range(n)
    is_run_start = tf.concat([tf.ones([1], tf.bool), bucket[1:] != bucket[:-1]], axis=0)[:n]
    run = tf.cumsum(tf.cast(is_run_start, tf.int64)) - 1
    runs = tf.reduce_max(run) + 1 if n > 0 else tf.constant(0, tf.int64)
    run_start = tf.math.unsorted_segment_min(index, run, runs)
    run_length = tf.math.unsorted_segment_sum(tf.ones_like(index), run, runs)
    position = index - tf.gather(run_start, run)
    in_full_batch = position < tf.gather(run_length // batch_size * batch_size, run)
    emit = tf.logical_or(in_full_batch, final)
    # One gather per feature and side, straight from the unsorted rows.
    emitted_rows, carried_rows = tf.boolean_mask(order, emit), tf.boolean_mask(order, tf.logical_not(emit))
    emitted = {key: tf.gather(value, emitted_rows) for key, value in rows.items()}
    new_carry = {key: tf.gather(value, carried_rows) for key, value in rows.items()}
    starts = tf.where(tf.boolean_mask(position % batch_size == 0, emit))[:, 0]
    row_splits = tf.concat([starts, [tf.reduce_sum(tf.cast(emit, tf.int64))]], axis=0)
    return new_carry, (emitted, row_splits)


def day_batches(
    file_pattern: str | Sequence[str],
    tft_output: tft.TFTransformOutput,
    batch_size: int,
    bucket_hours: float,
    seed: int | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> tf.data.Dataset:
    """Shuffled batches of transformed features whose examples all fall in one `bucket_hours` time bucket.

    In-batch negatives then are items picked at about the same moment, so their
    point-in-time features (recent counts) are close to what they were at the
    positive's time. A bucket's last batch may be smaller than `batch_size`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not bucket_hours > 0:
        raise ValueError(f"bucket_hours must be > 0, got {bucket_hours}")
    spec = tft_output.transformed_feature_spec()
    return _regrouped(records(file_pattern, True, seed), spec, batch_size, bucket_hours, seed, chunk_size)


def _regrouped(records: tf.data.Dataset, spec: dict, batch_size: int, bucket_hours: float, seed, chunk_size: int):
    bucket_seconds = max(int(bucket_hours * 3600), 1)
    empty = _empty_like(spec)
    chunks = records.batch(chunk_size).map(
        lambda serialized: (tf.io.parse_example(serialized, spec), False), num_parallel_calls=tf.data.AUTOTUNE
    )
    # One empty, final chunk flushes every bucket's remainder.
    chunks = chunks.concatenate(tf.data.Dataset.from_tensors((empty, True)))
    shuffle_seed = tf.constant(0 if seed is None else seed, tf.int64)

    def step(state, element):
        carry, step_number = state
        chunk, final = element
        new_carry, (rows, row_splits) = regroup(carry, chunk, final, batch_size, bucket_seconds)
        return (new_carry, step_number + 1), (rows, row_splits, step_number)

    def batches(rows, row_splits, step_number):
        count = tf.size(row_splits, out_type=tf.int64) - 1
        # the full batches of a chunk come out sorted by bucket; a seeded permutation mixes them
        noise = tf.random.stateless_uniform([count], seed=tf.stack([shuffle_seed, step_number]))
        order = tf.argsort(noise)
        return tf.data.Dataset.from_tensor_slices(order).map(
            lambda b: {key: value[row_splits[b] : row_splits[b + 1]] for key, value in rows.items()}
        )

    return chunks.scan((empty, tf.constant(0, tf.int64)), step).flat_map(batches).prefetch(tf.data.AUTOTUNE)
