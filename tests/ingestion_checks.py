"""Helpers shared by the ingestion tests: run the Beam graph, read its outputs, check leakage.

The leakage checks recompute everything from the raw interactions with plain
Python (no shared code with ingestion beyond the feature names), so a bug in
the pipeline cannot hide behind the same bug in the check.
"""

from __future__ import annotations

import glob
import json
import os
from collections import defaultdict

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions

from towerflow.components.ingestion import beam_ingest
from towerflow.components.ingestion.component import check_rows_kept
from towerflow.components.ingestion.splits import SPLITS, SplitConfig
from towerflow.models import features as F


def run_ingestion(data_dir, out_dir, fmt="towerflow", split=None, history_length=20, shards=1):
    """Runs the ingestion graph in-process and returns its parsed outputs."""
    split = split or SplitConfig()
    paths = {name: os.path.join(out_dir, name) for name in ("examples", "catalog", "quarantine")}
    summary_path = os.path.join(paths["examples"], beam_ingest.SUMMARY_FILE)
    with beam.Pipeline(options=PipelineOptions(["--direct_running_mode=in_memory"])) as pipeline:
        beam_ingest.build_ingestion(
            pipeline,
            data_dir=str(data_dir),
            fmt_name=fmt,
            split=split,
            history_length=history_length,
            examples_uri=paths["examples"],
            catalog_uri=paths["catalog"],
            quarantine_uri=paths["quarantine"],
            summary_path=summary_path,
            shards=shards,
        )
    with open(summary_path) as f:
        summary = json.load(f)
    check_rows_kept(summary)  # every graph run by the tests accounts for each row it read
    return {
        "summary": summary,
        "splits": {s: read_examples(os.path.join(paths["examples"], f"Split-{s}")) for s in SPLITS},
        "catalog": read_examples(paths["catalog"]),
        "quarantine": read_quarantine(paths["quarantine"]),
    }


def read_examples(directory) -> list[dict]:
    """Every tf.Example under `directory` as a plain dict (lists for list features)."""
    rows = []
    for path in sorted(glob.glob(os.path.join(directory, "*.gz"))):
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            example = tf.train.Example.FromString(record.numpy())
            row = {}
            for key, feature in example.features.feature.items():
                kind = feature.WhichOneof("kind")
                values = list(getattr(feature, kind).value)
                if kind == "bytes_list":
                    values = [v.decode("utf-8") for v in values]
                row[key] = values if key in F.LIST_FEATURES else values[0]
            rows.append(row)
    return rows


def read_quarantine(directory) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(directory, "*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            rows.extend(json.loads(line) for line in f if line.strip())
    return rows


def assert_no_leakage(splits: dict[str, list[dict]], raw_events, history_length: int, cutoffs=None) -> int:
    """Checks every example against a brute-force recomputation from `raw_events`.

    raw_events: iterable of (user_id, item_id, rating, timestamp) of the valid rows.
    Returns the number of examples checked.
    """
    by_user, by_item = defaultdict(list), defaultdict(list)
    for user, item, rating, ts in raw_events:
        by_user[user].append((int(ts), item, float(rating)))
        by_item[item].append(int(ts))
    item_times = {item: np.array(times, dtype=np.int64) for item, times in by_item.items()}
    window = int(F.RECENT_WINDOW_DAYS * F.SECONDS_PER_DAY)
    checked = 0
    for split, rows in splits.items():
        for row in rows:
            t = row[F.TIMESTAMP]
            earlier = sorted(e for e in by_user[row[F.USER_ID]] if e[0] < t)
            expected = [item for _, item, _ in earlier][-history_length:]
            assert row[F.HIST_ITEM_IDS] == expected, (split, row)
            assert row[F.USER_PRIOR_COUNT] == len(earlier)
            # every history item was interacted with strictly before the example
            first_seen = {}
            for ts, item, _ in earlier:
                first_seen.setdefault(item, ts)
            assert all(first_seen[item] < t for item in row[F.HIST_ITEM_IDS])
            # the item's popularity counts only interactions strictly before the example
            times = item_times[row[F.ITEM_ID]]
            before = times[times < t]
            assert row[F.ITEM_PRIOR_COUNT] == len(before), (split, row)
            assert row[F.ITEM_RECENT_COUNT] == int((before >= t - window).sum()), (split, row)
            first = (t - before.min()) / F.SECONDS_PER_DAY if len(before) else 0.0
            assert abs(row[F.ITEM_DAYS_SINCE_FIRST] - first) < 1e-3, (split, row)
            checked += 1
    if cutoffs is not None:
        lo, hi = cutoffs
        assert all(r[F.TIMESTAMP] < lo for r in splits["train"])
        assert all(lo <= r[F.TIMESTAMP] < hi for r in splits["eval"])
        assert all(r[F.TIMESTAMP] >= hi for r in splits["test"])
    # no test-window interaction appears in train or eval
    test_keys = {(r[F.USER_ID], r[F.ITEM_ID], r[F.TIMESTAMP]) for r in splits["test"]}
    for split in ("train", "eval"):
        assert not test_keys & {(r[F.USER_ID], r[F.ITEM_ID], r[F.TIMESTAMP]) for r in splits[split]}
    return checked
