"""Ingestion's Beam graph on hand-made edge cases: leakage, ties, tiny users, empty splits, quarantine."""

import csv
import json
import os
import zlib

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from ingestion_checks import assert_no_leakage, read_examples, run_ingestion

from towerflow.components.ingestion import beam_ingest
from towerflow.components.ingestion.component import (
    BadRowsError,
    RowsLostError,
    check_bad_rows,
    check_rows_kept,
    pipelines_like,
    run_checked,
)
from towerflow.components.ingestion.splits import SplitConfig
from towerflow.models import features as F

USERS = [("u1", 25, "M", "writer", "12345"), ("u2", 40, "F", "artist", "54321"), ("u3", 33, "F", "none", "99999")]
ITEMS = [("i1", "One", 1990, "Drama"), ("i2", "Two", 1995, "Comedy|Drama"), ("i3", "Three", 2001, "")]


def write_dataset(path, interactions, users=USERS, items=ITEMS, extra_lines=()):
    """A dataset in the towerflow CSV format; `extra_lines` are appended verbatim (bytes) to interactions."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "users.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "age", "gender", "occupation", "zip_code"])
        w.writerows(users)
    with open(path / "items.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title", "release_year", "genres"])
        w.writerows(items)
    with open(path / "interactions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "rating", "timestamp"])
        w.writerows(interactions)
    if extra_lines:
        with open(path / "interactions.csv", "ab") as f:
            for line in extra_lines:
                f.write(line + b"\n")
    return path


# u1 rates i1 and i2 in the same second (a tie), then i3; u2 has a single interaction; u3 two.
INTERACTIONS = [
    ("u1", "i2", 4, 100),
    ("u1", "i1", 5, 100),
    ("u1", "i3", 3, 300),
    ("u2", "i1", 2, 200),
    ("u3", "i3", 4, 150),
    ("u3", "i2", 1, 400),
    ("u3", "i1", 5, 500),
]


def _by_key(rows):
    return {(r[F.USER_ID], r[F.ITEM_ID]): r for r in rows}


def test_ties_single_interactions_and_features(tmp_path):
    data = write_dataset(tmp_path / "data", INTERACTIONS)
    out = run_ingestion(data, tmp_path / "out", split=SplitConfig("leave_last_n", leave_last_n=1))
    splits = out["splits"]
    assert assert_no_leakage(splits, INTERACTIONS, history_length=20) == len(INTERACTIONS)
    rows = _by_key([r for s in splits.values() for r in s])
    # same-second interactions never see each other
    assert rows[("u1", "i1")][F.HIST_ITEM_IDS] == []
    assert rows[("u1", "i2")][F.HIST_ITEM_IDS] == []
    # later ones see both, ordered by (timestamp, item_id)
    assert rows[("u1", "i3")][F.HIST_ITEM_IDS] == ["i1", "i2"]
    assert rows[("u1", "i3")][F.USER_PRIOR_MEAN_RATING] == pytest.approx(4.5)
    # item_prior_count: i1 was interacted with at t=100 (u1) and t=200 (u2) before u3's t=500
    assert rows[("u3", "i1")][F.ITEM_PRIOR_COUNT] == 2
    assert rows[("u1", "i1")][F.ITEM_PRIOR_COUNT] == 0
    # all of these are within the recent window; i1's first interaction was at t=100
    assert rows[("u3", "i1")][F.ITEM_RECENT_COUNT] == 2
    assert rows[("u3", "i1")][F.ITEM_DAYS_SINCE_FIRST] == pytest.approx(400 / F.SECONDS_PER_DAY)
    assert rows[("u1", "i1")][F.ITEM_DAYS_SINCE_FIRST] == 0.0
    # joins
    assert rows[("u2", "i1")][F.USER_OCCUPATION] == "artist"
    assert rows[("u3", "i2")][F.ITEM_GENRES] == ["Comedy", "Drama"]
    assert rows[("u3", "i3")][F.ITEM_GENRES] == []
    assert rows[("u3", "i3")][F.LIKED] == 1 and rows[("u3", "i2")][F.LIKED] == 0
    # leave_last_n=1: u2's single interaction stays in train; u3: train, eval, test
    assert rows[("u2", "i1")] in splits["train"]
    assert [r[F.ITEM_ID] for r in splits["test"] if r[F.USER_ID] == "u3"] == ["i1"]
    assert [r[F.ITEM_ID] for r in splits["eval"] if r[F.USER_ID] == "u3"] == ["i2"]
    # u1's tie at t=100 is ordered by item id, so i3@300 is last (test) and i2 is eval
    assert [r[F.ITEM_ID] for r in splits["eval"] if r[F.USER_ID] == "u1"] == ["i2"]
    assert out["summary"]["split_counts"] == {"train": 3, "eval": 2, "test": 2}
    assert out["summary"]["cutoffs"] is None
    assert len(out["catalog"]) == 3 and out["summary"]["num_items"] == 3
    assert out["summary"]["num_users"] == 3
    assert out["quarantine"] == []


def test_global_time_cutoffs_are_quantiles_and_honoured(tmp_path):
    data = write_dataset(tmp_path / "data", INTERACTIONS)
    out = run_ingestion(data, tmp_path / "out", split=SplitConfig("global_time", (0.5, 0.8)))
    # timestamps sorted: 100 100 150 200 300 400 500 -> q0.5 = 200, q0.8 = 380 (linear interpolation)
    assert out["summary"]["cutoffs"] == pytest.approx([200.0, 380.0])
    assert_no_leakage(out["splits"], INTERACTIONS, 20, cutoffs=(200.0, 380.0))
    assert out["summary"]["split_counts"] == {"train": 3, "eval": 2, "test": 2}
    # test examples still carry history from earlier splits (point in time, not split-bounded)
    [u3_test] = [r for r in out["splits"]["test"] if r[F.ITEM_ID] == "i1"]
    assert u3_test[F.HIST_ITEM_IDS] == ["i3", "i2"]


def test_empty_splits_when_every_timestamp_is_the_same(tmp_path):
    same = [(u, i, 3, 777) for u, i, _, _ in INTERACTIONS]
    data = write_dataset(tmp_path / "data", same)
    out = run_ingestion(data, tmp_path / "out")
    assert out["summary"]["split_counts"] == {"train": 0, "eval": 0, "test": len(same)}
    assert out["splits"]["train"] == [] and out["splits"]["eval"] == []
    assert all(r[F.HIST_ITEM_IDS] == [] for r in out["splits"]["test"])


def test_history_length_is_capped(tmp_path):
    many = [("u1", f"i{k % 3 + 1}", 3, 1000 + k) for k in range(10)]
    data = write_dataset(tmp_path / "data", many)
    out = run_ingestion(data, tmp_path / "out", history_length=4)
    assert_no_leakage(out["splits"], many, history_length=4)
    assert max(len(r[F.HIST_ITEM_IDS]) for s in out["splits"].values() for r in s) == 4


BAD_LINES = [
    b"u1,i1,5,",  # missing timestamp
    b"u1,i1,9,1000",  # rating out of range
    b"u 1,i1,3,1000",  # bad id
    b"u1,i1,abc,1000",  # non-numeric rating
    b"u1,i1,3",  # wrong field count
    b"u1,i\xff\xfe1,3,1000",  # not UTF-8
    b"u1,i9,3,1000",  # item not in the item table
]


def test_malformed_rows_are_quarantined_with_reasons_and_the_rest_survive(tmp_path):
    data = write_dataset(tmp_path / "data", INTERACTIONS, extra_lines=BAD_LINES)
    out = run_ingestion(data, tmp_path / "out")
    quarantined = out["quarantine"]
    assert len(quarantined) == len(BAD_LINES)
    assert all(q["table"] == "interactions" and q["reason"] for q in quarantined)
    reasons = " | ".join(sorted(q["reason"] for q in quarantined))
    for fragment in ("timestamp", "range", "id", "rating", "field", "decod", "item table"):
        assert fragment in reasons.lower(), (fragment, reasons)
    # the good rows are all there, untouched
    assert sum(out["summary"]["split_counts"].values()) == len(INTERACTIONS)
    assert out["summary"]["malformed_by_table"] == {"interactions": len(BAD_LINES)}
    assert out["summary"]["lines_read"]["interactions"] == len(INTERACTIONS) + len(BAD_LINES)
    assert_no_leakage(out["splits"], INTERACTIONS, 20)
    # 7 bad of 14 lines: a 60% threshold passes, a 10% one fails with a clear message
    check_bad_rows(out["summary"], 0.6)
    with pytest.raises(BadRowsError, match=r"7 of 14 rows of the interactions table are malformed"):
        check_bad_rows(out["summary"], 0.1, "/q")


def test_malformed_user_and_item_rows_are_quarantined_too(tmp_path):
    users = USERS + [("u4", "old", "M", "x", "1")]
    data = write_dataset(tmp_path / "data", INTERACTIONS, users=users)
    out = run_ingestion(data, tmp_path / "out")
    assert [q["table"] for q in out["quarantine"]] == ["users"]
    assert out["summary"]["malformed_by_table"] == {"users": 1}


def _random_log(n_users=40, n_items=25, n=900, seed=3):
    rng = np.random.default_rng(seed)
    users = [(f"u{k}", 20 + k % 40, "MF"[k % 2], "writer", f"{k:05d}") for k in range(n_users)]
    # titles and genres with commas, quotes and non-ASCII text travel through the packed shuffle rows
    items = [(f"i{k}", f'Título "{k}", Ünïcode ✓', 1950 + k, "Drama|Comedy" if k % 3 else "") for k in range(n_items)]
    rows = [
        (f"u{rng.integers(n_users)}", f"i{rng.integers(n_items)}", int(rng.integers(1, 6)), int(rng.integers(0, 50)))
        for _ in range(n)
    ]  # many ties in time: the order rule (timestamp, item_id, rating) decides
    return users, items, rows


def _examples_by_key(splits):
    return {
        split: sorted(tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in r.items())) for r in rows)
        for split, rows in splits.items()
    }


def test_a_sharded_user_shuffle_writes_exactly_the_unsharded_examples(tmp_path):
    users, items, rows = _random_log()
    data = write_dataset(tmp_path / "data", rows, users=users, items=items)
    one = run_ingestion(data, tmp_path / "one", history_length=5)
    three = run_ingestion(data, tmp_path / "three", history_length=5, shards=3)
    assert _examples_by_key(three["splits"]) == _examples_by_key(one["splits"])
    assert three["summary"] == one["summary"]
    assert sum(len(r) for r in one["splits"].values()) == len(rows)
    assert_no_leakage(three["splits"], rows, history_length=5, cutoffs=three["summary"]["cutoffs"])
    # each shard writes its own files in every split
    assert len(list((tmp_path / "three" / "examples" / "Split-train").glob("data_tfrecord-0[0-2]-*.gz"))) == 3
    by_id = {item[0]: item for item in items}
    for row in three["splits"]["train"]:
        _, title, year, genres = by_id[row[F.ITEM_ID]]
        assert (row[F.ITEM_TITLE], row[F.ITEM_RELEASE_YEAR]) == (title, year)
        assert row[F.ITEM_GENRES] == (genres.split("|") if genres else [])


def test_user_shards_grow_with_the_rows_and_a_user_always_lands_in_one_shard():
    assert [beam_ingest.user_shards(n) for n in (0, 100_000, 2_000_000, 2_000_001, 20_000_000)] == [1, 1, 1, 2, 10]
    # a stable hash: the same shard in every process (Python's own str hash is salted per process)
    assert beam_ingest._user_shard("u42", 10) == zlib.crc32(b"u42") % 10


def test_rows_that_vanish_between_reading_and_the_examples_stop_the_run():
    summary = {
        "lines_read": {"interactions": 1000, "users": 10},
        "split_counts": {"train": 800, "eval": 100, "test": 90},
        "malformed_by_table": {"interactions": 6},
        "deleted_interaction_rows": 4,
    }
    check_rows_kept(summary)  # 990 examples + 6 quarantined + 4 deleted = 1000 read
    summary["split_counts"]["train"] = 790
    with pytest.raises(RowsLostError, match="10 rows are unaccounted for"):
        check_rows_kept(summary)


class _LosesAUser(beam_ingest._BuildUserExamples):
    """Builds every user's examples but u1's: rows that vanish inside the graph, as the runner's did."""

    def process(self, element, cutoffs=None):
        if element[0] != "u1":
            yield from super().process(element, cutoffs)


def _lossy_then_clean(out, data, attempts_lossy):
    """(make_pipeline, build) whose first `attempts_lossy` graphs lose u1's rows and write 2 user shards."""
    uris = {name: str(out / name) for name in ("examples", "catalog", "quarantine")}
    built = []

    def build(pipeline):
        lossy = len(built) < attempts_lossy
        built.append(lossy)
        builder = _LosesAUser if lossy else beam_ingest._BuildUserExamples
        original = beam_ingest._BuildUserExamples
        beam_ingest._BuildUserExamples = builder  # the graph is built here: the DoFn is chosen now
        try:
            beam_ingest.build_ingestion(
                pipeline,
                data_dir=str(data),
                fmt_name="towerflow",
                split=SplitConfig(),
                history_length=5,
                examples_uri=uris["examples"],
                catalog_uri=uris["catalog"],
                quarantine_uri=uris["quarantine"],
                summary_path=os.path.join(uris["examples"], beam_ingest.SUMMARY_FILE),
                shards=2 if lossy else 1,
            )
        finally:
            beam_ingest._BuildUserExamples = original

    def make_pipeline(attempt):
        return beam.Pipeline(options=PipelineOptions(["--direct_running_mode=in_memory"]))

    return make_pipeline, build, uris, built


def test_a_run_that_loses_rows_is_run_again_from_empty_outputs(tmp_path):
    users, items, rows = _random_log()
    data = write_dataset(tmp_path / "data", rows, users=users, items=items)
    make_pipeline, build, uris, built = _lossy_then_clean(tmp_path / "out", data, attempts_lossy=1)
    summary_path = os.path.join(uris["examples"], beam_ingest.SUMMARY_FILE)
    summary, attempt = run_checked(make_pipeline, build, list(uris.values()), summary_path)
    assert (attempt, built) == (2, [True, False])
    clean = run_ingestion(data, tmp_path / "clean", history_length=5)
    assert summary == clean["summary"]
    with open(summary_path) as f:
        assert json.load(f) == summary
    splits = {s: read_examples(os.path.join(uris["examples"], f"Split-{s}")) for s in clean["splits"]}
    assert _examples_by_key(splits) == _examples_by_key(clean["splits"])
    # nothing of the lossy attempt is left: it wrote two user shards' files, the second attempt one set
    names = sorted(p.name for p in (tmp_path / "out" / "examples" / "Split-train").iterdir())
    assert names and all(name.startswith("data_tfrecord-0") for name in names)
    assert not any(name.startswith(("data_tfrecord-00-", "data_tfrecord-01-")) for name in names)


def test_rows_lost_on_every_attempt_stop_the_run(tmp_path):
    users, items, rows = _random_log(n=200)
    data = write_dataset(tmp_path / "data", rows, users=users, items=items)
    make_pipeline, build, uris, built = _lossy_then_clean(tmp_path / "out", data, attempts_lossy=3)
    summary_path = os.path.join(uris["examples"], beam_ingest.SUMMARY_FILE)
    with pytest.raises(RowsLostError, match="rows are unaccounted for"):
        run_checked(make_pipeline, build, list(uris.values()), summary_path, attempts=3)
    assert built == [True, True, True]


def test_later_attempts_get_a_new_pipeline_with_the_first_ones_options():
    first = beam.Pipeline(argv=["--direct_running_mode=in_memory", "--direct_num_workers=1"])
    make = pipelines_like(first)
    assert make(1) is first
    second = make(2)
    assert second is not first
    assert second.options.get_all_options()["direct_running_mode"] == "in_memory"
    with second as pipeline:  # and it runs
        _ = pipeline | beam.Create([1, 2]) | beam.Map(lambda x: x)


def test_zero_attempts_are_refused():
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        run_checked(lambda attempt: None, lambda pipeline: None, [], "unused", attempts=0)
