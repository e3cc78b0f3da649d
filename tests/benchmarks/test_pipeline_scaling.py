"""The scaling benchmark's verdicts (no pipeline runs): a run started from another run's cache claims no goal."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import pipeline_scaling as ps  # noqa: E402


def _result(seeded_from=""):
    stages = [
        ps.Stage("Ingestion", wall=3.0, cpu=1.0, peak_rss=int(1e9), unobserved_start=True),
        ps.Stage("Transform", wall=2000.0, cpu=3000.0, peak_rss=int(9e9), start=3.0),
    ]
    return ps.SizeResult(ps.SIZES["20m"], stages, seeded_from=seeded_from)


def test_an_end_to_end_run_is_held_to_the_goals():
    report = ps.format_results([_result()], "cmd")
    assert "20m: end to end" in report and "goal <= 5400 s: met" in report
    assert "peak RSS 9.00 GB (summed over the process tree), goal <= 12 GB: met" in report


def test_a_run_from_another_runs_cache_meets_and_misses_no_goal():
    report = ps.format_results([_result("runs/x/metadata.sqlite")], "cmd")
    goals = report[report.index("## Goals") : report.index("## Conditions")]
    assert "started from the cached components of runs/x/metadata.sqlite" in goals
    assert "not end-to-end figures" in goals
    assert ": met" not in goals and "missed by" not in goals


def test_the_seed_survives_the_json_round_trip():
    from dataclasses import asdict

    assert ps._load_result(asdict(_result("s.sqlite"))).seeded_from == "s.sqlite"


def test_a_missing_seed_store_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(SystemExit):
        ps.main(["--sizes", "100k", "--work-dir", str(tmp_path), "--seed-metadata", str(tmp_path / "none.sqlite")])
    assert not (tmp_path / "scale-100k").exists()
