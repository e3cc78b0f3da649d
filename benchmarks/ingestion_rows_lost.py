"""Where an ingestion run's missing rows went: per user shard, per item and per user.

    .venv/bin/python benchmarks/ingestion_rows_lost.py \\
        --data-dir runs/scaling/data-20m \\
        --examples runs/scaling-r9/scale-20m/pipeline_root/Ingestion/examples/3

Compares the raw interactions (towerflow CSV format) with the examples the run wrote: each user
shard's expected rows (`beam_ingest._user_shard` of every raw row's user) against the rows in that
shard's files (`data_tfrecord-SS-*` in every split), then, for each shard that lost rows, which
(user, item, timestamp) rows are missing: how many items lost all / part of their rows in that shard,
how many users, and the item ids involved (the item shuffle hands items to the two workers
alternately, so a stretch of one worker's output shows as every other item id over a range).
Reads only the id and timestamp features; a few minutes and ~4 GB at 20M rows.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402
from machine import cores, cpu_model, memory_gib  # noqa: E402

from towerflow.components.ingestion import beam_ingest  # noqa: E402

KEYS = ("user_id", "item_id", "timestamp")
SPEC = {
    "user_id": tf.io.FixedLenFeature([], tf.string),
    "item_id": tf.io.FixedLenFeature([], tf.string),
    "timestamp": tf.io.FixedLenFeature([], tf.int64),
}


def shard_files(examples: str) -> dict[int, list[str]]:
    """{shard: its files in every split}; an unsharded run is shard 0."""
    files: dict[int, list[str]] = {}
    for path in sorted(glob.glob(os.path.join(examples, "Split-*", "*.gz"))):
        match = re.match(rf"{beam_ingest.EXAMPLES_PREFIX}-(\d\d)-\d{{5}}-of-", os.path.basename(path))
        files.setdefault(int(match.group(1)) if match else 0, []).append(path)
    return files


def read_rows(paths: list[str]) -> pd.DataFrame:
    parts = []
    for batch in (
        tf.data.TFRecordDataset(paths, compression_type="GZIP").batch(65536).map(lambda x: tf.io.parse_example(x, SPEC))
    ):
        parts.append(pd.DataFrame({k: v.numpy() for k, v in batch.items()}))
    rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(KEYS))
    for key in ("user_id", "item_id"):
        rows[key] = rows[key].str.decode("utf-8")
    return rows


def _all_some_none(share: pd.Series) -> str:
    counts = int((share == 1).sum()), int(((share > 0) & (share < 1)).sum()), int((share == 0).sum())
    return "{:,} all, {:,} some, {:,} none".format(*counts)


def describe_loss(raw: pd.DataFrame, written: pd.DataFrame) -> list[str]:
    merged = raw.merge(written.assign(kept=True), on=list(KEYS), how="left")
    lost = merged["kept"].isna()
    per_item = lost.groupby(merged["item_id"]).mean()
    per_user = lost.groupby(merged["user_id"]).mean()
    lines = [
        f"  {name}: {_all_some_none(share)} of their rows in this shard lost"
        for name, share in (("items", per_item), ("users", per_user))
    ]
    gone = per_item[per_item > 0].index
    numbers = pd.to_numeric(gone.str.extract(r"(\d+)$")[0], errors="coerce").dropna().astype(int).sort_values()
    if len(numbers):
        steps = np.unique(np.diff(numbers.to_numpy()))
        first, last = numbers.iloc[0], numbers.iloc[-1]
        lines.append(f"  ids of items with lost rows: {first}..{last}, steps between them {steps[:5].tolist()}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="the raw data the run read (towerflow CSV format)")
    parser.add_argument("--examples", required=True, help="the run's Ingestion examples directory (Split-*/)")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.data_dir, "interactions.csv")):
        parser.error(f"{args.data_dir} has no interactions.csv (the towerflow CSV format)")
    if not glob.glob(os.path.join(args.examples, "Split-*", "*.gz")):
        parser.error(f"{args.examples} has no Split-*/*.gz example files")
    started = time.time()
    print(f"machine: {cpu_model()}, {cores()} cores, {memory_gib()}")
    files = shard_files(args.examples)
    shards = max(files) + 1 if files else 1
    raw = pd.read_csv(
        os.path.join(args.data_dir, "interactions.csv"), usecols=list(KEYS), dtype={"user_id": str, "item_id": str}
    )
    shard_of = {u: beam_ingest._user_shard(u, shards) for u in raw["user_id"].unique()}
    raw["shard"] = raw["user_id"].map(shard_of)
    print(f"{len(raw):,} raw rows, {shards} user shard(s)\n")
    print("| shard | raw rows | written | lost |\n|---:|---:|---:|---:|")
    lossy = []
    for shard in range(shards):
        expected = raw[raw["shard"] == shard]
        written = read_rows(files.get(shard, []))
        print(f"| {shard} | {len(expected):,} | {len(written):,} | {len(expected) - len(written):,} |")
        if len(written) != len(expected):
            lossy.append((shard, expected[list(KEYS)], written))
    for shard, expected, written in lossy:
        print(f"\nshard {shard}:")
        print("\n".join(describe_loss(expected, written)))
    total_lost = sum(len(e) - len(w) for _, e, w in lossy)
    print(
        f"\nSummary: {total_lost:,} of {len(raw):,} rows missing, in {len(lossy)} of {shards} shard(s) "
        f"({time.time() - started:.0f} s)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
