"""`towerflow service` over a run whose models were not blessed: it starts, says why, and serves the fallback."""

import json

import pytest
from mlmd_fakes import TfxLikeStore

from towerflow.cli.service_commands import _serving_root


def _evaluated_run(tmp_path, blessed: bool):
    report = tmp_path / "pipeline_root" / "ModelEvaluator" / "blessing" / "7"
    report.mkdir(parents=True)
    (report / "model_evaluation.json").write_text(
        json.dumps({"blessed": blessed, "reasons": [] if blessed else ["two_tower+dcn ndcg@10 below recent_pop"]})
    )
    (report / "baseline_fallback.json").write_text(json.dumps({"name": "recent_pop", "default": ["50"]}))
    s = TfxLikeStore(tmp_path / "metadata.sqlite")
    s.execute(
        "run-1", "ModelEvaluator", "towerflow.ModelEvaluator", outputs={"blessing": s.artifact("ModelBlessing", report)}
    )
    return tmp_path


def test_an_unblessed_run_is_served_from_the_fallback_with_the_reason(tmp_path):
    root, reason = _serving_root(_evaluated_run(tmp_path, blessed=False))
    assert root == tmp_path / "serving"
    assert "not blessed" in reason and "ndcg@10 below recent_pop" in reason and "recent_pop" in reason


def test_a_run_that_was_never_evaluated_or_was_blessed_but_pushed_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no pushed models"):
        _serving_root(tmp_path)  # no MLMD at all
    with pytest.raises(FileNotFoundError, match="no pushed models"):
        _serving_root(_evaluated_run(tmp_path / "blessed", blessed=True))
