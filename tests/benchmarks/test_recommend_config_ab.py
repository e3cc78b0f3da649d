"""The interleaved config A/B's bookkeeping: block order and the per-config sums (no servers)."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import recommend_config_ab as ab  # noqa: E402


def test_each_config_goes_first_in_half_of_the_rounds():
    assert ab.block_order(["a", "b"], 4) == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert ab.block_order(["a", "b"], 1) == ["a", "b"]


def _result(latencies, ranking, errors=0, fallbacks=0):
    return {
        "e2e": np.array(latencies),
        "stages": {"ranking": np.array(ranking)},
        "n": len(latencies),
        "errors": ["x"] * errors,
        "fallbacks": fallbacks,
    }


def test_a_side_adds_up_its_blocks_and_reports_cpu_per_request():
    side = ab.Side("a")
    zero = dict.fromkeys(ab.PROCESSES, 0.0)
    side.add(_result([10.0, 20.0], [4.0, 6.0], fallbacks=1), 0.5, zero, {**zero, "service": 0.02, "client": 0.002})
    side.add(_result([30.0, 40.0], [8.0, 10.0], errors=1), 0.5, {**zero, "service": 1.0}, {**zero, "service": 1.02})
    assert side.requests == 4 and side.errors == 1 and side.fallbacks == 1
    assert side.cpu["service"] == pytest.approx(0.04)
    cells = [c.strip() for c in side.row().strip("|").split("|")]
    # label, requests, req/s, errors, fallbacks, p50, p95, p99, ranking p50, 4 x CPU, CPU total
    assert cells[:5] == ["a", "4", "4.0", "1", "1"]
    assert float(cells[5]) == pytest.approx(25.0, abs=0.05)  # the median of 10, 20, 30, 40
    assert float(cells[8]) == pytest.approx(7.0, abs=0.05)
    assert float(cells[9]) == pytest.approx(10.0, abs=0.05)  # 40 ms of service CPU over 4 requests
    assert float(cells[12]) == pytest.approx(0.5, abs=0.05)  # 2 ms of client CPU over 4 requests
    assert float(cells[13]) == pytest.approx(10.5, abs=0.05)
    assert len(cells) == ab.HEADER.splitlines()[0].count("|") - 1


def test_a_config_the_service_would_refuse_is_refused_before_anything_starts(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("retrieval: {top_n: 0}\n")
    with pytest.raises(SystemExit):
        ab.main(["--run-dir", str(tmp_path), "--config-a", str(bad)])
    assert "--config-a" in capsys.readouterr().err and "retrieval.top_n" in ab.rb.check_service_config(str(bad))
    assert "cannot read" in ab.rb.check_service_config(str(tmp_path / "missing.yaml"))
    assert ab.rb.check_service_config("") is None and ab.rb.check_service_config(None) is None
    with pytest.raises(SystemExit):
        ab.main(["--run-dir", str(tmp_path), "--rounds", "0"])


def test_the_service_config_file_keeps_the_rules_file_where_the_given_config_points(tmp_path):
    import yaml

    (tmp_path / "conf").mkdir()
    given = tmp_path / "conf" / "service.yaml"
    given.write_text("reranking: {rules_file: rules.yaml}\nretrieval: {top_n: 300}\n")
    out = tmp_path / "out.yaml"
    ab.rb.service_config_file(str(given), out, tmp_path / "log")
    written = yaml.safe_load(out.read_text())
    assert written["reranking"]["rules_file"] == str((tmp_path / "conf" / "rules.yaml").resolve())
    assert written["retrieval"] == {"top_n": 300}
    assert written["experiments"]["log"]["dir"] == str(tmp_path / "log")
    ab.rb.service_config_file(None, out, tmp_path / "log")
    assert yaml.safe_load(out.read_text()) == {"experiments": {"log": {"dir": str(tmp_path / "log")}}}
