"""`towerflow abtest`: flag checks, the report, and the A/B and A/A replays on ml-100k through a live service."""

import argparse
import json

import numpy as np
import pytest

from towerflow.cli import abtest_commands
from towerflow.cli.main import main


def _args(**overrides):
    values = dict(
        service="http://127.0.0.1:1",
        run_dir="nowhere",
        control="popularity",
        treatment="stable",
        aa=False,
        salt="abtest",
        k=100,
        concurrency=2,
        bootstrap=2000,
        seed=0,
        output=None,
    )
    values.update(overrides)
    return argparse.Namespace(**values)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"control": "random"}, "pipeline run directory"),
        ({"aa": True}, "leave out --treatment"),
        ({"treatment": None}, "--aa"),
        ({"k": 10}, "Recall@100"),
    ],
)
def test_bad_flags_are_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        abtest_commands.run_abtest(_args(**overrides))


def test_bad_arm_exits_2_with_one_line(capsys):
    code = main(["abtest", "--service", "http://127.0.0.1:1", "--run-dir", "x", "--control", "nope", "--aa"])
    assert code == 2 and "abtest: error" in capsys.readouterr().err


def test_report_shows_difference_ci_and_p_value():
    rng = np.random.default_rng(0)
    control = {"hit_rate@10": rng.random(80) < 0.6, "ndcg@10": rng.random(80) * 0.5, "recall@100": rng.random(80)}
    treatment = {
        "hit_rate@10": rng.random(86) < 0.8,
        "ndcg@10": rng.random(86) * 0.5 + 0.2,
        "recall@100": rng.random(86),
    }
    comparisons = abtest_commands.compare(control, treatment, 2000, 0)
    arms = {
        "control": abtest_commands.ArmResult("popularity", ["u"] * 80, []),
        "treatment": abtest_commands.ArmResult("stable", ["u"] * 86, []),
    }
    text = abtest_commands.format_report(arms, comparisons, "A/B test")
    assert "hit_rate@10" in text and "two-proportion z-test" in text and "bootstrap" in text and "95% CI" in text
    ndcg = comparisons[1]
    assert ndcg.metric == "ndcg@10" and ndcg.ci_low > 0 and ndcg.p_value < 0.01


SHADOW_ARMS = [{"name": "control", "source": "stable"}, {"name": "treatment", "source": "popularity"}]


def _shadow_mode_keeps_the_served_list(service, run_dir) -> int:
    """Users in the shadow experiment get exactly stable's list; their popularity list only goes to the log."""
    import httpx

    from towerflow.serving.experiments.event_log import read_lines

    eval_set, _, as_of = abtest_commands.load_protocol(str(run_dir))
    users = list(eval_set.user_ids[:40])
    with httpx.Client(timeout=60) as client:
        for user in users:
            body = {"user_id": user, "k": 20, "explore": False, "context": {"timestamp": as_of}}
            served = client.post(f"{service.url}/v1/recommend", json=body).json()
            stable = client.post(f"{service.url}/v1/recommend", json={**body, "source": "stable"}).json()
            assert [i["item_id"] for i in served["items"]] == [i["item_id"] for i in stable["items"]]
            assert served["model_versions"] == stable["model_versions"]
    service.experiments.router.drain()
    shadows = [r for r in read_lines(service.log_dir / "impressions.jsonl") if not r["served"]]
    assert shadows and {r["source"] for r in shadows} == {"popularity"}
    assert {r["user_id"] for r in shadows} < set(users)
    return len(shadows)


@pytest.mark.e2e
def test_ab_and_aa_replays_through_the_live_service(pipeline_run, tmp_path, capsys):
    from tests.serving.experiments.live_service import live_service, prepare_run

    config, _, _ = pipeline_run
    run_dir, serving_root = prepare_run(config, tmp_path)
    shadow = {"tests": [{"name": "shadow-pop", "shadow": True, "arms": SHADOW_ARMS}]}
    with live_service(run_dir, serving_root, tmp_path / "service", shadow) as service:
        served_lists = _shadow_mode_keeps_the_served_list(service, run_dir)
        out = tmp_path / "ab.json"
        code = main(
            [
                "abtest",
                "--service",
                service.url,
                "--run-dir",
                str(run_dir),
                "--control",
                "popularity",
                "--treatment",
                "stable",
                "--output",
                str(out),
                "--score-reference",
                str(tmp_path / "reference.json"),
            ]
        )
        ab_text = capsys.readouterr().out
        assert code == 0, ab_text
        ab = json.loads(out.read_text())
        code = main(
            [
                "abtest",
                "--service",
                service.url,
                "--run-dir",
                str(run_dir),
                "--control",
                "stable",
                "--aa",
                "--output",
                str(tmp_path / "aa.json"),
            ]
        )
        aa_text = capsys.readouterr().out
        assert code == 0, aa_text
        aa = json.loads((tmp_path / "aa.json").read_text())
    assert served_lists > 0
    print(ab_text, aa_text, sep="\n")  # kept in the test log (-s) as the measured example
    arms = ab["arms"]
    assert arms["control"]["users"] + arms["treatment"]["users"] == 166  # every ml-100k test user, split in two
    assert 50 < arms["control"]["users"] < 116
    assert arms["treatment"]["fallbacks"] == 0 and arms["control"]["fallbacks"] == 0
    assert arms["treatment"]["model_versions"]["two_tower"] is not None
    by_metric = {c["metric"]: c for c in ab["comparisons"]}
    assert set(by_metric) == {"hit_rate@10", "ndcg@10", "recall@100"}
    for c in by_metric.values():
        assert c["ci_low"] <= c["difference"] <= c["ci_high"] and 0 < c["p_value"] <= 1
    assert "two-proportion z-test" in ab_text and "bootstrap" in ab_text
    reference = json.loads((tmp_path / "reference.json").read_text())
    assert len(reference["fractions"]) == 10 and abs(sum(reference["fractions"]) - 1) < 1e-6
    # A/A: the same source on both halves finds no significant difference
    for c in aa["comparisons"]:
        assert c["p_value"] > 0.05 and c["ci_low"] <= 0 <= c["ci_high"], c
