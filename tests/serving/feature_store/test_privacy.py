"""Privacy delete: the store forgets the user, the ledger names them only as a salted hash, and ingestion
(the Beam graph, fed the same ledger) drops their rows."""

import csv
import json
import os

import pytest

from towerflow.components.ingestion import deletions
from towerflow.serving.feature_store.event_log import read_events
from towerflow.serving.feature_store.privacy import DeletionLedger


def test_delete_user_removes_every_trace_from_the_store(store, tiny):
    tiny.load(store.client)
    store.record_event("u1", "i2", "rating", rating=2, timestamp=tiny.T0 + 22 * tiny.DAY, event_id="live-1")
    store.set_cached_embedding("query", "u1", 1, [1.0], ttl_seconds=60)
    result = store.delete_user("u1")
    assert result["found"] and result["events_removed"] == 4 and result["versions"] == ["test-1"]
    assert store.user_profile("u1") is None and store.user_events("u1") == []
    assert store.get_cached_embedding("query", "u1", 1) is None
    assert not [k for k in store.client.scan_iter(match="*u:u1}*")]
    # popularity as if u1 had never been there: only u2's and u3's i1
    assert store.popular_items(2**40, 5) == [("i1", 2.0)]
    assert store.popular_items(2**40, 5, segment={"gender": "F"}) == []
    assert (
        store.item_features_at(["i2", "i3"], 2**40)
        == [{"item_prior_count": 0, "item_recent_count": 0, "item_days_since_first": 0.0}] * 2
    )
    # ledger: one salted hash, no user id in clear; event-log reads skip the user from now on
    ledger = DeletionLedger(result["ledger"])
    text = open(result["ledger"]).read()
    assert "u1" not in text and ledger.contains("u1") and not ledger.contains("u2")
    assert len(text.splitlines()) == 1 and json.loads(text)["algorithm"] == deletions.ALGORITHM
    assert os.stat(ledger.path.parent / "salt").st_mode & 0o077 == 0
    assert list(read_events(store.event_log.directory)) != []
    assert list(read_events(store.event_log.directory, ledger.excluder())) == []
    # deleting again is harmless and keeps one ledger line
    assert store.delete_user("u1")["events_removed"] == 0 and len(open(result["ledger"]).readlines()) == 1


def test_materialize_skips_users_in_the_ledger(backend, tiny, tmp_path):
    ledger = DeletionLedger(tmp_path / "ledger.jsonl")
    ledger.append("u1")
    summary = tiny.load(backend[1], excluded=ledger.excluder())
    assert summary.users == 2 and summary.events_of_deleted_users == 4  # u1's d0, d1, d3 and d6 (unknown item)
    assert not list(backend[1].scan_iter(match="*u:u1}*"))


def test_ingestion_reads_the_ledger_the_store_writes(tmp_path):
    """The two sides of the ledger (serving writes, components/ingestion reads) agree on salt and hash."""
    ledger = DeletionLedger(tmp_path / "privacy" / deletions.LEDGER_FILE)
    for user in ("u1", "u7"):
        ledger.append(user)
    deleted = deletions.load(str(ledger.path))
    assert deleted.excluded("u1") and deleted.excluded("u7") and not deleted.excluded("u2")
    assert deletions.load(str(tmp_path / "missing.jsonl")) is None
    assert deletions.fingerprint(str(ledger.path)) != "" and deletions.fingerprint("") == ""
    assert deletions.ledger_for_pipeline_root(str(tmp_path / "pipeline_root")) == str(ledger.path)


def test_the_ingestion_graph_drops_deleted_users_and_counts_them(tmp_path):
    pytest.importorskip("apache_beam")
    from ingestion_checks import read_examples

    from towerflow.components.ingestion.component import check_rows_kept

    data = tmp_path / "data"
    data.mkdir()
    rows = {
        "users.csv": [["user_id", "age", "gender", "occupation", "zip_code"], ["u1", 25, "M", "x", "1"],
                      ["u2", 40, "F", "y", "2"]],
        "items.csv": [["item_id", "title", "release_year", "genres"], ["i1", "One", 1990, "Drama"],
                      ["i2", "Two", 1995, ""]],
        "interactions.csv": [["user_id", "item_id", "rating", "timestamp"], ["u1", "i1", 5, 100], ["u1", "i2", 4, 200],
                             ["u2", "i1", 3, 300], ["u3", "i2", 2, 400]],
    }  # fmt: skip
    for name, table in rows.items():
        with open(data / name, "w", newline="") as f:
            csv.writer(f).writerows(table)
    ledger = DeletionLedger(tmp_path / "privacy" / deletions.LEDGER_FILE)
    ledger.append("u1")
    ledger.append("u3")
    summary = _run_ingestion(data, tmp_path / "out", deletions.load(str(ledger.path)))
    assert summary["deleted_users_excluded"] == 2 and summary["num_users"] == 1
    assert summary["deleted_interaction_rows"] == 3  # u1's two rows and u3's one
    check_rows_kept(summary)
    examples = [
        r for s in ("train", "eval", "test") for r in read_examples(tmp_path / "out" / "examples" / f"Split-{s}")
    ]
    assert {r["user_id"] for r in examples} == {"u2"}
    assert all(r["hist_item_ids"] == [] and r["item_prior_count"] == 0 for r in examples)  # u1's rows gone too


def _run_ingestion(data_dir, out, deleted_users):
    """The ingestion graph in-process; returns its summary."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from towerflow.components.ingestion import beam_ingest
    from towerflow.components.ingestion.splits import SplitConfig

    summary_path = str(out / "examples" / beam_ingest.SUMMARY_FILE)
    with beam.Pipeline(options=PipelineOptions(["--direct_running_mode=in_memory"])) as pipeline:
        beam_ingest.build_ingestion(
            pipeline,
            data_dir=str(data_dir),
            fmt_name="towerflow",
            split=SplitConfig(),
            history_length=20,
            examples_uri=str(out / "examples"),
            catalog_uri=str(out / "catalog"),
            quarantine_uri=str(out / "quarantine"),
            summary_path=summary_path,
            deleted_users=deleted_users,
        )
    with open(summary_path) as f:
        return json.load(f)
