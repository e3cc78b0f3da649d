"""The Beam graph of ingestion: raw logs -> validated, enriched, time-split tf.Examples.

Stages (each a plain Beam transform, so it runs on the DirectRunner as well as
on Dataflow, Flink or Spark):

1. read every table as raw bytes and parse it with the dataset format's
   reader, dropping rows of users in the deletion ledger; a row that does not
   parse goes to the quarantine with its reason (one fused step per table
   that emits keyed rows, ready for the shuffle);
2. group interactions by item with the item's table row (one GroupByKey),
   join item features and count how often the item was
   interacted with strictly before each interaction;
3. group by user with the user's table row, join user features and build the
   point-in-time history;
4. assign the temporal split and write one TFRecord set per split, the item
   catalog, the quarantine and a JSON summary of counts and cut-offs.

Steps 2 and 3 work on a whole group at once: one sort, numpy over the group
(point_in_time.py, proven equal to `models.features`' functions, which stay
the definition), and one batched tf.Example encoding per user and split.
Counts are emitted per bundle, user or item, never per row. No step holds more
than one user's or one item's rows; the split cut-offs need every timestamp
(8 bytes per interaction).

Memory on the DirectRunner, which holds every GroupByKey's whole input in the
runner process: shuffled interaction rows are packed into one bytes object
each (fixed-width numbers, then length-prefixed strings: `_pack_interaction`,
`_JoinItem`) instead of tuples of Python objects (by our estimate ~170 instead
of ~640 bytes a row in the runner), and the by-user shuffle is cut into
shards on large data (`user_shards`: one per 2M rows), each shard its own
GroupByKey, stage and output files.

The graph itself raises nothing on bad data; the caller reads the summary and
decides whether the bad-row fraction is acceptable.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from collections.abc import Iterable, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import tensorflow as tf
from apache_beam.transforms.window import GlobalWindows

from towerflow.components.ingestion import point_in_time, readers
from towerflow.components.ingestion.deletions import DeletedUsers
from towerflow.components.ingestion.splits import (
    GLOBAL_TIME,
    LEAVE_LAST_N,
    SPLITS,
    SplitConfig,
    assign_splits_leave_last_n,
)
from towerflow.models import features as F

SUMMARY_FILE = "ingestion_summary.json"
QUARANTINE_PREFIX = "quarantine"
CATALOG_PREFIX = "items"
EXAMPLES_PREFIX = "data_tfrecord"
# Raw interactions per user shard (see `user_shards`).
ROWS_PER_USER_SHARD = 2_000_000


def user_shards(rows: int) -> int:
    """How many shards the by-user shuffle is cut into for `rows` raw interactions: one per 2M rows.

    The DirectRunner holds a GroupByKey's whole input in the runner process and, when it hands the
    groups to the workers, encodes all of them at once (twice: a stream, then its bytes) while the
    decoded values are still held; each worker then receives its half as one bundle. Shuffling users in
    shards, each its own GroupByKey, stage and output files, bounds those copies to one shard's data
    (ingestion alone on 20M rows, 2 workers: runner peak 10.6 -> 7.2 GB, the process tree's summed
    RSS 15.2 -> 11.0 GB, same wall time). A user's rows all go to one shard (a stable hash of the user
    id), so every user is still built from all of its rows at once.
    """
    return max(1, math.ceil(rows / ROWS_PER_USER_SHARD))


def _user_shard(user_id: str, shards: int) -> int:
    # zlib.crc32, not hash(): Python salts str hashes per process, and every worker must agree
    return zlib.crc32(user_id.encode("utf-8")) % shards


# --- parsing -----------------------------------------------------------------


# A key's grouped values are interaction rows, packed into bytes (below), and the key's table row as parsed.
# An interaction on its way to its item: timestamp, rating, then the user id (utf-8).
_INTERACTION = struct.Struct("<qd")
# An interaction on its way to its user: these fixed-width fields, then the item's packed strings
# (item id, title, release year, genres), the same bytes for every interaction of the item.
_JOINED = np.dtype(
    [("timestamp", "<i8"), ("rating", "<f8"), ("prior", "<i8"), ("recent", "<i8"), ("days_first", "<f8")]
)
_LENGTH = struct.Struct("<I")


def _pack_interaction(row: readers.Interaction) -> bytes:
    return _INTERACTION.pack(row.timestamp, row.rating) + row.user_id.encode("utf-8")


def _unpack_interactions(rows: list[bytes]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(timestamps, ratings, user ids) of packed interaction rows."""
    width = _INTERACTION.size
    fixed = np.frombuffer(b"".join(r[:width] for r in rows), dtype=[("timestamp", "<i8"), ("rating", "<f8")])
    return fixed["timestamp"], fixed["rating"], [r[width:].decode("utf-8") for r in rows]


def _pack_strings(strings: Sequence[str]) -> bytes:
    parts = []
    for text in strings:
        data = text.encode("utf-8")
        parts += (_LENGTH.pack(len(data)), data)
    return b"".join(parts)


def _unpack_strings(blob: bytes) -> list[str]:
    strings, at = [], 0
    while at < len(blob):
        (length,) = _LENGTH.unpack_from(blob, at)
        at += _LENGTH.size
        strings.append(blob[at : at + length].decode("utf-8"))
        at += length
    return strings


def _pack_item(item_id: str, title: str, release_year: int, genres: Sequence[str]) -> bytes:
    return _pack_strings((item_id, title, str(release_year), *genres))


def _unpack_item(blob: bytes) -> tuple[str, str, int, list[str]]:
    item_id, title, year, *genres = _unpack_strings(blob)
    return item_id, title, int(year), genres


def _keyed(table: str, row: readers.Row):
    """The shuffle element of a parsed row: interactions by item, users by user, items by item."""
    if table == "interactions":
        return row.item_id, _pack_interaction(row)
    return (row.user_id if table == "users" else row.item_id), row


class _ParseTable(beam.DoFn):
    """Parses the raw lines of one table into keyed shuffle elements, in one fused step.

    Blank lines are skipped; a malformed line goes to `malformed` with its
    reason; a row of a user in the deletion ledger is dropped and its user id
    goes to `deleted`. Lines are counted per bundle (one count element per
    bundle on `counts`, not one per line).
    """

    MALFORMED = "malformed"
    DELETED = "deleted"
    COUNTS = "counts"

    def __init__(self, spec: readers.TableSpec, table: str, deleted_users: DeletedUsers | None):
        self._spec = spec
        self._table = table
        self._deleted = deleted_users if table != "items" else None
        self._lines = 0

    def start_bundle(self):
        self._lines = 0

    def process(self, raw: bytes):
        # Blank lines (a trailing newline at the end of a hand-edited file) are not rows.
        if not raw.strip():
            return
        self._lines += 1
        try:
            row = readers.parse_raw_line(self._spec, raw)
        except readers.MalformedRow as err:
            yield beam.pvalue.TaggedOutput(
                self.MALFORMED,
                {"table": self._table, "reason": err.reason, "line": raw.decode("utf-8", errors="replace")},
            )
            return
        if self._deleted is not None and self._deleted.excluded(row.user_id):
            yield beam.pvalue.TaggedOutput(self.DELETED, row.user_id)
            return
        yield _keyed(self._table, row)

    def finish_bundle(self):
        if self._lines:
            yield beam.pvalue.TaggedOutput(
                self.COUNTS, GlobalWindows.windowed_value((f"lines:{self._table}", self._lines))
            )


def _read_table(pipeline, data_dir: str, spec: readers.TableSpec, table: str, deleted_users: DeletedUsers | None):
    """(keyed rows, malformed rows, line counts, deleted user ids) of one table."""
    path = os.path.join(data_dir, spec.filename)
    lines = pipeline | f"Read{table.title()}" >> beam.io.ReadFromText(
        path, coder=beam.coders.BytesCoder(), skip_header_lines=spec.header_lines, strip_trailing_newlines=True
    )
    parsed = lines | f"Parse{table.title()}" >> beam.ParDo(_ParseTable(spec, table, deleted_users)).with_outputs(
        _ParseTable.MALFORMED, _ParseTable.DELETED, _ParseTable.COUNTS, main="rows"
    )
    return parsed.rows, parsed[_ParseTable.MALFORMED], parsed[_ParseTable.COUNTS], parsed[_ParseTable.DELETED]


# --- split cut-offs ----------------------------------------------------------


class _ExactQuantiles(beam.CombineFn):
    """Exact timestamp quantiles (numpy's linear interpolation): the global_time split cut-offs.

    Inputs are int64 arrays of timestamps (one per item group), kept as they
    come: 8 bytes per interaction, fine for tens of millions of rows on one worker.
    """

    def __init__(self, fractions: Sequence[float]):
        self._fractions = list(fractions)

    def create_accumulator(self):
        return []

    def add_input(self, acc, timestamps):
        acc.append(np.asarray(timestamps, dtype=np.int64))
        return acc

    def merge_accumulators(self, accs):
        return [array for acc in accs for array in acc]

    def compact(self, acc):
        return [np.concatenate(acc)] if len(acc) > 1 else acc

    def extract_output(self, acc):
        timestamps = np.concatenate(acc) if acc else np.zeros(0, dtype=np.int64)
        if timestamps.size == 0:
            return None
        return [float(q) for q in np.quantile(timestamps, self._fractions)]


# --- joins and point-in-time features ---------------------------------------


def _item_feature_dict(item: readers.Item | None) -> dict:
    if item is None:
        return {F.ITEM_TITLE: "", F.ITEM_GENRES: [], F.ITEM_RELEASE_YEAR: 0}
    return {F.ITEM_TITLE: item.title, F.ITEM_GENRES: list(item.genres), F.ITEM_RELEASE_YEAR: item.release_year}


def _user_feature_dict(user: readers.User | None) -> dict:
    if user is None:
        return {F.USER_AGE: -1, F.USER_GENDER: "", F.USER_OCCUPATION: "", F.USER_ZIP: ""}
    return {
        F.USER_AGE: user.age,
        F.USER_GENDER: user.gender,
        F.USER_OCCUPATION: user.occupation,
        F.USER_ZIP: user.zip_code,
    }


class _JoinItem(beam.DoFn):
    """One item's interactions: item features plus the point-in-time popularity of each, in one numpy pass.

    The values are `F.item_features_at`'s (see point_in_time.item_popularity).
    Emits (user_id, joined row) per interaction and, on the `timestamps`
    output, the item's timestamps as one array (the split cut-offs' input).
    """

    UNKNOWN_ITEM = "unknown_item"
    TIMESTAMPS = "timestamps"
    SEEN_ITEMS = "seen_items"

    def __init__(self, require_known_items: bool):
        self._require_known = require_known_items

    def process(self, element):
        item_id, values = element
        interactions, items = _untag(values)
        if not interactions:
            return
        timestamps, ratings, user_ids = _unpack_interactions(interactions)
        yield beam.pvalue.TaggedOutput(self.TIMESTAMPS, timestamps)
        yield beam.pvalue.TaggedOutput(self.SEEN_ITEMS, item_id)
        item = items[0] if items else None
        if item is None and self._require_known:
            for user_id, ts, rating in zip(user_ids, timestamps.tolist(), ratings.tolist()):
                yield beam.pvalue.TaggedOutput(
                    self.UNKNOWN_ITEM,
                    {
                        "table": "interactions",
                        "reason": f"item id {item_id!r} is not in the item table",
                        "line": f"{user_id},{item_id},{rating},{ts}",
                    },
                )
            return
        title, genres, year = (item.title, item.genres, item.release_year) if item is not None else ("", (), 0)
        item_blob = _pack_item(item_id, title, year, genres)
        popularity = point_in_time.item_popularity(timestamps)
        fixed = np.empty(len(interactions), dtype=_JOINED)
        fixed["timestamp"], fixed["rating"] = timestamps, ratings
        fixed["prior"] = popularity[F.ITEM_PRIOR_COUNT]
        fixed["recent"] = popularity[F.ITEM_RECENT_COUNT]
        fixed["days_first"] = popularity[F.ITEM_DAYS_SINCE_FIRST]
        packed, width = fixed.tobytes(), _JOINED.itemsize
        for k, user_id in enumerate(user_ids):
            yield user_id, packed[k * width : (k + 1) * width] + item_blob


def _untag(values) -> tuple[list[bytes], list]:
    """(packed interaction rows, table rows) of one key's grouped values."""
    rows, table_rows = [], []
    for value in values:
        if isinstance(value, bytes):
            rows.append(value)
        else:
            table_rows.append(value)
    return rows, table_rows


class _BuildUserExamples(beam.DoFn):
    """Every example of one user: one sort, numpy over the group, one batched tf.Example encoding per split.

    History features are `F.history_features`' (see point_in_time.user_history);
    emits serialized examples on the split outputs and (split, count) pairs on
    `counts`.
    """

    COUNTS = "counts"

    # Distinct items decoded per worker before the memo starts over: bounds it for million-item catalogs.
    _ITEM_MEMO_SIZE = 100_000

    def __init__(self, split: SplitConfig, history_length: int):
        self._split = split
        self._history_length = history_length
        self._items: dict[bytes, tuple] = {}

    def _item(self, blob: bytes) -> tuple:
        item = self._items.get(blob)
        if item is None:
            if len(self._items) >= self._ITEM_MEMO_SIZE:
                self._items.clear()
            item = self._items[blob] = _unpack_item(blob)
        return item

    def process(self, element, cutoffs=None):
        user_id, values = element
        joined, users = _untag(values)
        if not joined:
            return
        yield beam.pvalue.TaggedOutput(self.COUNTS, ("num_users", 1))
        user_features = _user_feature_dict(users[0] if users else None)
        n = len(joined)
        width = _JOINED.itemsize
        fixed = np.frombuffer(b"".join(j[:width] for j in joined), dtype=_JOINED)
        items = [self._item(j[width:]) for j in joined]  # (item_id, title, release_year, genres)
        timestamps, ratings = fixed["timestamp"], fixed["rating"]
        item_ids = [item[0] for item in items]
        # The deterministic order used everywhere: (timestamp, item_id, rating), as F.Event sorts.
        order = point_in_time.user_order(timestamps, item_ids, ratings)
        fixed, items = fixed[order], [items[k] for k in order]
        timestamps, ratings = fixed["timestamp"], fixed["rating"]
        item_ids = [item[0] for item in items]
        history, offsets, indices = point_in_time.user_history(timestamps, item_ids, ratings, self._history_length)

        if self._split.strategy == LEAVE_LAST_N:
            labels = np.asarray(assign_splits_leave_last_n(n, self._split.leave_last_n))
        else:
            # assign_split_global_time over the whole group: train < cutoffs[0] <= eval < cutoffs[1] <= test
            labels = np.where(timestamps < cutoffs[0], "train", np.where(timestamps < cutoffs[1], "eval", "test"))
        columns = {
            F.USER_ID: [user_id] * n,
            F.ITEM_ID: item_ids,
            F.RATING: ratings,
            F.TIMESTAMP: timestamps,
            F.LIKED: (ratings >= F.LIKED_THRESHOLD).astype(np.int64),
            F.ITEM_PRIOR_COUNT: fixed["prior"],
            F.ITEM_RECENT_COUNT: fixed["recent"],
            F.ITEM_DAYS_SINCE_FIRST: fixed["days_first"],
            **{key: [value] * n for key, value in user_features.items()},
            F.ITEM_TITLE: [item[1] for item in items],
            F.ITEM_RELEASE_YEAR: np.fromiter((item[2] for item in items), dtype=np.int64, count=n),
            **history,
            **point_in_time.context(timestamps),
        }
        genres = [item[3] for item in items]
        item_array = pa.array(item_ids, type=pa.string())
        for split in SPLITS:
            rows = np.flatnonzero(labels == split)
            if rows.size == 0:
                continue
            yield beam.pvalue.TaggedOutput(self.COUNTS, (f"split:{split}", int(rows.size)))
            whole = rows.size == n
            encoded = {
                key: point_in_time.list_column(key, values if whole else _take(values, rows))
                for key, values in columns.items()
            }
            encoded[F.ITEM_GENRES] = point_in_time.list_column(
                F.ITEM_GENRES, genres if whole else [genres[k] for k in rows]
            )
            hist_offsets, hist_rows = (offsets, indices) if whole else _select_lists(offsets, indices, rows)
            encoded[F.HIST_ITEM_IDS] = point_in_time.list_column(
                F.HIST_ITEM_IDS, item_array.take(pa.array(hist_rows, type=pa.int64())), hist_offsets
            )
            for serialized in point_in_time.encode_examples(encoded):
                yield beam.pvalue.TaggedOutput(split, serialized)


def _take(values, rows: np.ndarray):
    if isinstance(values, np.ndarray):
        return values[rows]
    return [values[k] for k in rows]


def _select_lists(offsets: np.ndarray, flat: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows `rows` of a list column given as (offsets, flat values): new offsets and values."""
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    new_offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    positions = np.arange(new_offsets[-1], dtype=np.int64) - np.repeat(new_offsets[:-1] - starts, lengths)
    return new_offsets, flat[positions]


def to_tf_example(features: dict) -> tf.train.Example:
    """Encodes a feature dict with the types the feature contract declares."""
    feature = {}
    for key, value in features.items():
        values = value if key in F.LIST_FEATURES else [value]
        if key in F.BYTES_FEATURES:
            feature[key] = tf.train.Feature(
                bytes_list=tf.train.BytesList(value=[v.encode("utf-8") if isinstance(v, str) else v for v in values])
            )
        elif key in F.FLOAT_FEATURES:
            feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
        elif key in F.INT_FEATURES:
            feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        else:
            raise KeyError(f"feature {key!r} is not declared in models/features.py")
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _serialize(features: dict) -> bytes:
    return to_tf_example(features).SerializeToString()


def _catalog_record(item: readers.Item) -> dict:
    return {F.ITEM_ID: item.item_id, **_item_feature_dict(item)}


# --- summary -----------------------------------------------------------------


def _count(pcoll, label: str, key_fn):
    return pcoll | f"Count{label}" >> beam.Map(lambda x: (key_fn(x), 1))


def _summarize(counts: Iterable[tuple[str, int]], cutoffs) -> str:
    summary = {
        "split_counts": {s: 0 for s in SPLITS},
        "malformed_by_reason": {},
        "malformed_by_table": {},
        "lines_read": {},
        "num_items": 0,
        "num_users": 0,
        "cutoffs": cutoffs,
        "deleted_users_excluded": 0,
        "deleted_interaction_rows": 0,
    }
    for key, value in counts:
        kind, _, name = key.partition(":")
        if kind == "split":
            summary["split_counts"][name] = value
        elif kind == "reason":
            summary["malformed_by_reason"][name] = value
        elif kind == "table":
            summary["malformed_by_table"][name] = value
        elif kind == "lines":
            summary["lines_read"][name] = value
        elif kind in ("num_items", "num_users", "deleted_users_excluded", "deleted_interaction_rows"):
            summary[kind] = value
    return json.dumps(summary, sort_keys=True)


def _reason_family(reason: str) -> str:
    """Groups reasons that embed the offending value ("bad user id 'x'") by their stem."""
    for sep in (" '", ' "', " ("):
        if sep in reason:
            reason = reason.split(sep, 1)[0]
    return reason.strip()


# --- the whole graph ---------------------------------------------------------


def build_ingestion(
    pipeline,
    data_dir: str,
    fmt_name: str,
    split: SplitConfig,
    history_length: int,
    examples_uri: str,
    catalog_uri: str,
    quarantine_uri: str,
    summary_path: str,
    deleted_users: DeletedUsers | None = None,
    shards: int = 1,
):
    """Adds the ingestion graph to `pipeline`; run the pipeline to execute it.

    Rows of `deleted_users` (the deletion ledger) are dropped right after parsing, from the
    interactions and the users table alike, and counted as `deleted_users_excluded`. `shards` cuts
    the by-user shuffle into that many (see `user_shards`); with more than one, each shard writes its
    own files (`data_tfrecord-SS-...`) in every split.
    """
    specs = {table: readers.resolve_spec(data_dir, fmt_name, table) for table in readers.TABLES}
    malformed, counts, dropped_users, keyed = [], [], [], {}
    for table in readers.TABLES:
        if specs[table] is None:
            keyed[table] = pipeline | f"No{table.title()}" >> beam.Create([])
            continue
        rows, bad, line_counts, dropped = _read_table(pipeline, data_dir, specs[table], table, deleted_users)
        keyed[table] = rows
        malformed.append(bad)
        counts.append(line_counts)
        dropped_users.append(dropped)
        if table == "interactions":
            counts.append(_count(dropped, "DeletedInteractionRows", lambda _: "deleted_interaction_rows"))

    # Items with their interactions: one GroupByKey over tagged values (an item-table row and interactions).
    item_joined = (
        (keyed["interactions"], keyed["items"])
        | "ItemsAndInteractions" >> beam.Flatten()
        | "GroupByItem" >> beam.GroupByKey()
        | "JoinItems"
        >> beam.ParDo(_JoinItem(require_known_items=specs["items"] is not None)).with_outputs(
            _JoinItem.UNKNOWN_ITEM, _JoinItem.TIMESTAMPS, _JoinItem.SEEN_ITEMS, main="joined"
        )
    )
    malformed.append(item_joined[_JoinItem.UNKNOWN_ITEM])

    cutoffs = None
    if split.strategy == GLOBAL_TIME:
        # every parsed interaction's timestamp (unknown items' too), one array per item
        cutoffs = item_joined[_JoinItem.TIMESTAMPS] | "Cutoffs" >> beam.CombineGlobally(
            _ExactQuantiles(split.fractions)
        )
    build = _BuildUserExamples(split, history_length)
    side = {"cutoffs": beam.pvalue.AsSingleton(cutoffs)} if cutoffs is not None else {}
    if shards > 1:
        by_shard = {
            name: pcoll | f"{name.title()}ByUserShard" >> beam.Partition(lambda kv, n: _user_shard(kv[0], n), shards)
            for name, pcoll in (("joined", item_joined.joined), ("users", keyed["users"]))
        }
        shard_inputs = [(f"{k:02d}", (by_shard["joined"][k], by_shard["users"][k])) for k in range(shards)]
    else:
        shard_inputs = [("", (item_joined.joined, keyed["users"]))]
    for shard, inputs in shard_inputs:
        grouped = inputs | f"UsersAndInteractions{shard}" >> beam.Flatten() | f"GroupByUser{shard}" >> beam.GroupByKey()
        examples = grouped | f"BuildExamples{shard}" >> beam.ParDo(build, **side).with_outputs(
            _BuildUserExamples.COUNTS, *SPLITS
        )
        # one (key, n) pair per user and split instead of one per example
        counts.append(examples[_BuildUserExamples.COUNTS])
        prefix = f"{EXAMPLES_PREFIX}-{shard}" if shard else EXAMPLES_PREFIX
        for name in SPLITS:
            _ = examples[name] | f"Write{name}{shard}" >> beam.io.WriteToTFRecord(
                os.path.join(examples_uri, f"Split-{name}", prefix), file_name_suffix=".gz"
            )

    # The catalog is the item table when there is one, else the items seen in logs.
    if specs["items"] is not None:
        catalog = keyed["items"] | "CatalogRecords" >> beam.Map(lambda kv: _catalog_record(kv[1]))
    else:
        catalog = item_joined[_JoinItem.SEEN_ITEMS] | "BareItems" >> beam.Map(
            lambda i: {F.ITEM_ID: i, **_item_feature_dict(None)}
        )
    counts.append(_count(catalog, "Catalog", lambda _: "num_items"))
    if deleted_users is not None:
        deleted_ids = dropped_users | "AllDeletedUsers" >> beam.Flatten() | "DistinctDeleted" >> beam.Distinct()
        counts.append(_count(deleted_ids, "DeletedUsers", lambda _: "deleted_users_excluded"))
    _ = (
        catalog
        | "SerializeCatalog" >> beam.Map(_serialize)
        | "WriteCatalog"
        >> beam.io.WriteToTFRecord(os.path.join(catalog_uri, CATALOG_PREFIX), file_name_suffix=".tfrecord.gz")
    )

    bad = malformed | "AllMalformed" >> beam.Flatten()
    counts.append(_count(bad, "BadByTable", lambda m: f"table:{m['table']}"))
    counts.append(_count(bad, "BadByReason", lambda m: f"reason:{m['table']}: {_reason_family(m['reason'])}"))
    _ = (
        bad
        | "QuarantineJson" >> beam.Map(lambda m: json.dumps(m, sort_keys=True, ensure_ascii=False))
        | "WriteQuarantine"
        >> beam.io.WriteToText(os.path.join(quarantine_uri, QUARANTINE_PREFIX), file_name_suffix=".jsonl")
    )

    cutoff_side = beam.pvalue.AsSingleton(cutoffs) if cutoffs is not None else None
    totals = counts | "AllCounts" >> beam.Flatten() | "SumCounts" >> beam.CombinePerKey(sum)
    _ = (
        totals
        | "CollectCounts" >> beam.combiners.ToList()
        | "Summary" >> beam.Map(_summarize, cutoffs=cutoff_side)
        | "WriteSummary" >> beam.io.WriteToText(summary_path, shard_name_template="")
    )
