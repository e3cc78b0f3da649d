"""The Beam graph of ingestion: raw logs -> validated, enriched, time-split tf.Examples.

Stages (each a plain Beam transform, so it runs on the DirectRunner as well as
on Dataflow, Flink or Spark):

1. read every table as raw bytes and parse it with the dataset format's
   reader; a row that does not parse goes to the quarantine with its reason;
2. group interactions by item, join item features and count how often the item
   was interacted with strictly before each interaction;
3. group by user, join user features and build the point-in-time history with
   the shared `models.features.history_features`;
4. assign the temporal split and write one TFRecord set per split, the item
   catalog, the quarantine and a JSON summary of counts and cut-offs.

The graph itself raises nothing on bad data; the caller reads the summary and
decides whether the bad-row fraction is acceptable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

import apache_beam as beam
import numpy as np
import tensorflow as tf

from towerflow.components.ingestion import readers
from towerflow.components.ingestion.deletions import DeletedUsers
from towerflow.components.ingestion.splits import (
    GLOBAL_TIME,
    LEAVE_LAST_N,
    SPLITS,
    SplitConfig,
    assign_split_global_time,
    assign_splits_leave_last_n,
)
from towerflow.models import features as F

SUMMARY_FILE = "ingestion_summary.json"
QUARANTINE_PREFIX = "quarantine"
CATALOG_PREFIX = "items"
EXAMPLES_PREFIX = "data_tfrecord"


# --- parsing -----------------------------------------------------------------


class _ParseTable(beam.DoFn):
    """Parses raw lines of one table; malformed ones go to the `malformed` output."""

    MALFORMED = "malformed"

    def __init__(self, spec: readers.TableSpec, table: str):
        self._spec = spec
        self._table = table

    def process(self, raw: bytes):
        try:
            yield readers.parse_raw_line(self._spec, raw)
        except readers.MalformedRow as err:
            yield beam.pvalue.TaggedOutput(
                self.MALFORMED,
                {"table": self._table, "reason": err.reason, "line": raw.decode("utf-8", errors="replace")},
            )


def _read_table(pipeline, data_dir: str, spec: readers.TableSpec, table: str):
    path = os.path.join(data_dir, spec.filename)
    lines = pipeline | f"Read{table.title()}" >> beam.io.ReadFromText(
        path, coder=beam.coders.BytesCoder(), skip_header_lines=spec.header_lines, strip_trailing_newlines=True
    )
    # Blank lines (a trailing newline at the end of a hand-edited file) are not rows.
    lines = lines | f"DropBlank{table.title()}" >> beam.Filter(lambda raw: raw.strip() != b"")
    parsed = lines | f"Parse{table.title()}" >> beam.ParDo(_ParseTable(spec, table)).with_outputs(
        _ParseTable.MALFORMED, main="rows"
    )
    line_count = _count(lines, f"Lines{table.title()}", lambda _: f"lines:{table}")
    return parsed.rows, parsed[_ParseTable.MALFORMED], line_count


def _drop_deleted(rows, deleted_users: DeletedUsers, table: str):
    """(rows of users not in the ledger, ids of the users whose rows were dropped)."""
    kept = rows | f"DropDeleted{table}" >> beam.Filter(lambda r: not deleted_users.excluded(r.user_id))
    dropped = (
        rows
        | f"Deleted{table}" >> beam.Filter(lambda r: deleted_users.excluded(r.user_id))
        | f"DeletedIds{table}" >> beam.Map(lambda r: r.user_id)
    )
    return kept, dropped


# --- split cut-offs ----------------------------------------------------------


class _ExactQuantiles(beam.CombineFn):
    """Exact timestamp quantiles (numpy's linear interpolation), as DESIGN.md defines the split.

    Accumulates timestamps as int64 arrays (8 bytes per interaction), which is
    fine for tens of millions of rows on one worker.
    """

    def __init__(self, fractions: Sequence[float]):
        self._fractions = list(fractions)

    def create_accumulator(self):
        return ([], [])  # (timestamps not yet packed, packed int64 arrays)

    def add_input(self, acc, ts):
        pending, packed = acc
        pending.append(ts)
        if len(pending) >= 65536:
            packed.append(np.asarray(pending, dtype=np.int64))
            pending.clear()
        return acc

    def merge_accumulators(self, accs):
        pending, packed = [], []
        for p, k in accs:
            pending.extend(p)
            packed.extend(k)
        return (pending, packed)

    def extract_output(self, acc):
        pending, packed = acc
        timestamps = np.concatenate(packed + [np.asarray(pending, dtype=np.int64)])
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
    """Attaches item features and the item's point-in-time popularity (`F.item_features_at`)."""

    UNKNOWN_ITEM = "unknown_item"

    def __init__(self, require_known_items: bool):
        self._require_known = require_known_items

    def process(self, element):
        item_id, grouped = element
        items = list(grouped["items"])
        interactions = sorted(grouped["interactions"], key=lambda r: (r.timestamp, r.user_id))
        if not interactions:
            return
        item = items[0] if items else None
        if item is None and self._require_known:
            for row in interactions:
                yield beam.pvalue.TaggedOutput(
                    self.UNKNOWN_ITEM,
                    {
                        "table": "interactions",
                        "reason": f"item id {item_id!r} is not in the item table",
                        "line": f"{row.user_id},{row.item_id},{row.rating},{row.timestamp}",
                    },
                )
            return
        item_features = _item_feature_dict(item)
        timestamps = [r.timestamp for r in interactions]
        for row in interactions:
            yield row.user_id, (row, F.item_features_at(timestamps, row.timestamp), item_features)


class _BuildUserExamples(beam.DoFn):
    """Builds every example of one user with the shared history function."""

    def __init__(self, split: SplitConfig, history_length: int):
        self._split = split
        self._history_length = history_length

    def process(self, element, cutoffs=None):
        user_id, grouped = element
        joined = list(grouped["interactions"])
        if not joined:
            return
        users = list(grouped["users"])
        user_features = _user_feature_dict(users[0] if users else None)
        # The deterministic order used everywhere: (timestamp, item_id).
        joined.sort(key=lambda j: (j[0].timestamp, j[0].item_id))
        history = F.UserHistory([F.Event(j[0].timestamp, j[0].item_id, j[0].rating) for j in joined])
        if self._split.strategy == LEAVE_LAST_N:
            labels = assign_splits_leave_last_n(len(joined), self._split.leave_last_n)
        else:
            labels = [assign_split_global_time(j[0].timestamp, cutoffs) for j in joined]
        for (row, item_popularity, item_features), split in zip(joined, labels):
            example = {
                F.USER_ID: row.user_id,
                F.ITEM_ID: row.item_id,
                F.RATING: float(row.rating),
                F.TIMESTAMP: int(row.timestamp),
                F.LIKED: int(row.rating >= F.LIKED_THRESHOLD),
                **item_popularity,
                **user_features,
                **item_features,
                **history.features(row.timestamp, self._history_length),
                **F.context_features(row.timestamp),
            }
            yield beam.pvalue.TaggedOutput(split, example)


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
        elif kind in ("num_items", "num_users", "deleted_users_excluded"):
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
):
    """Adds the ingestion graph to `pipeline`; run the pipeline to execute it.

    Rows of `deleted_users` (the deletion ledger) are dropped right after parsing, from the
    interactions and the users table alike, and counted as `deleted_users_excluded`.
    """
    specs = {table: readers.resolve_spec(data_dir, fmt_name, table) for table in readers.TABLES}
    interactions, bad_interactions, line_count = _read_table(pipeline, data_dir, specs["interactions"], "interactions")
    malformed = [bad_interactions]
    counts = [line_count]
    dropped_users = []
    if deleted_users is not None:
        interactions, dropped = _drop_deleted(interactions, deleted_users, "Interactions")
        dropped_users.append(dropped)

    if specs["items"] is not None:
        items, bad_items, line_count = _read_table(pipeline, data_dir, specs["items"], "items")
        malformed.append(bad_items)
        counts.append(line_count)
        keyed_items = items | "KeyItems" >> beam.Map(lambda it: (it.item_id, it))
    else:
        keyed_items = pipeline | "NoItems" >> beam.Create([])
    if specs["users"] is not None:
        users, bad_users, line_count = _read_table(pipeline, data_dir, specs["users"], "users")
        if deleted_users is not None:
            users, dropped = _drop_deleted(users, deleted_users, "Users")
            dropped_users.append(dropped)
        malformed.append(bad_users)
        counts.append(line_count)
        keyed_users = users | "KeyUsers" >> beam.Map(lambda u: (u.user_id, u))
    else:
        keyed_users = pipeline | "NoUsers" >> beam.Create([])

    by_item = {
        "interactions": interactions | "KeyByItem" >> beam.Map(lambda r: (r.item_id, r)),
        "items": keyed_items,
    }
    item_joined = (
        by_item
        | "GroupByItem" >> beam.CoGroupByKey()
        | "JoinItems"
        >> beam.ParDo(_JoinItem(require_known_items=specs["items"] is not None)).with_outputs(
            _JoinItem.UNKNOWN_ITEM, main="joined"
        )
    )
    malformed.append(item_joined[_JoinItem.UNKNOWN_ITEM])

    cutoffs = None
    if split.strategy == GLOBAL_TIME:
        cutoffs = (
            interactions
            | "Timestamps" >> beam.Map(lambda r: r.timestamp)
            | "Cutoffs" >> beam.CombineGlobally(_ExactQuantiles(split.fractions))
        )
    by_user = {"interactions": item_joined.joined, "users": keyed_users}
    grouped = by_user | "GroupByUser" >> beam.CoGroupByKey()
    build = _BuildUserExamples(split, history_length)
    if cutoffs is not None:
        examples = grouped | "BuildExamples" >> beam.ParDo(
            build, cutoffs=beam.pvalue.AsSingleton(cutoffs)
        ).with_outputs(*SPLITS)
    else:
        examples = grouped | "BuildExamples" >> beam.ParDo(build).with_outputs(*SPLITS)

    for name in SPLITS:
        split_examples = examples[name]
        counts.append(_count(split_examples, f"Split{name}", lambda _, n=name: f"split:{n}"))
        _ = (
            split_examples
            | f"Serialize{name}" >> beam.Map(_serialize)
            | f"Write{name}"
            >> beam.io.WriteToTFRecord(
                os.path.join(examples_uri, f"Split-{name}", EXAMPLES_PREFIX), file_name_suffix=".gz"
            )
        )
    counts.append(
        _count(
            grouped | "UsersWithRows" >> beam.Filter(lambda kv: any(True for _ in kv[1]["interactions"])),
            "Users",
            lambda _: "num_users",
        )
    )

    # The catalog is the item table when there is one, else the items seen in logs.
    if specs["items"] is not None:
        catalog = items | "CatalogRecords" >> beam.Map(_catalog_record)
    else:
        catalog = (
            interactions
            | "ItemIds" >> beam.Map(lambda r: r.item_id)
            | "DistinctItems" >> beam.Distinct()
            | "BareItems" >> beam.Map(lambda i: {F.ITEM_ID: i, **_item_feature_dict(None)})
        )
    counts.append(_count(catalog, "Catalog", lambda _: "num_items"))
    if dropped_users:
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
