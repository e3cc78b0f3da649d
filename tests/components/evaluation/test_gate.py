"""The gate against the strongest baseline and the last blessed model, with per-user statistics."""

import json
import os

import pytest

from towerflow.components.evaluation import gate as G
from towerflow.components.evaluation import model_evaluator as ME
from towerflow.components.evaluation.protocol import EvalSet, evaluate

N_USERS = 40
CATALOG = tuple(f"i{j}" for j in range(10))
# every user wants "i0"; even users also "i1"
EVAL_SET = EvalSet(
    user_ids=tuple(f"u{n:02d}" for n in range(N_USERS)),
    relevant=tuple(frozenset({"i0", "i1"} if n % 2 == 0 else {"i0"}) for n in range(N_USERS)),
    seen=(frozenset(),) * N_USERS,
    is_warm=[n < N_USERS // 2 for n in range(N_USERS)],
    cutoff=0.0,
    catalog=CATALOG,
)


def _ranked(first: str):
    """A recommender putting `first` on top, the rest of the catalog after it."""

    def recommend(user_ids, k, exclude):
        return [[first] + [i for i in CATALOG if i != first][: k - 1] for _ in user_ids]

    return recommend


def _reversed(user_ids, k, exclude):
    """The catalog backwards: what everyone wants comes last."""
    return [list(reversed(CATALOG))[:k] for _ in user_ids]


def _reports(**recommenders):
    return {name: evaluate(rec, EVAL_SET, (1, 10)) for name, rec in recommenders.items()}


GATE = G.GateConfig(guarded_metrics=("ndcg@10",), baseline_metric="ndcg@10", gated_models=("two_tower",))


def test_gate_refuses_a_model_that_loses_to_the_best_baseline():
    # "i0" on top (what everyone wants) beats "i5" on top for every user
    baselines = _reports(popularity=_reversed, ease=_ranked("i0"))
    models = _reports(two_tower=_ranked("i5"))
    comparisons = G.compare_to_baselines(models, baselines, GATE, n_resamples=500)
    assert len(comparisons) == 1
    c = comparisons[0]
    assert c["against"] == "ease" and c["kind"] == G.BEST_BASELINE and not c["passed"]
    assert c["difference"] < 0 and c["ci_high"] < 0 and c["p_value"] < 0.05
    reports = {"popularity": baselines["popularity"].to_dict(), "two_tower": models["two_tower"].to_dict()}
    # it beats popularity, so without the baseline comparison it would be blessed
    assert G.decide_blessing(reports, None, GATE)[0]
    blessed, reasons, _ = G.decide_blessing(reports, None, GATE, comparisons)
    assert not blessed
    assert len(reasons) == 1 and "below the best baseline ease" in reasons[0]


def test_the_strongest_baseline_check_applies_to_the_served_model():
    # the towers alone lose to the best baseline, the served blend beats it: blessed, judged by what is served
    baselines = _reports(popularity=_reversed, ease=_ranked("i1"))
    models = _reports(two_tower=_ranked("i5"), **{"two_tower+dcn": _ranked("i5"), "two_tower+dcn+pop": _ranked("i0")})
    gate = G.GateConfig(guarded_metrics=("ndcg@10",), baseline_metric="ndcg@10")
    assert G.served_model(models, gate) == "two_tower+dcn+pop"
    (c,) = G.compare_to_baselines(models, baselines, gate, n_resamples=500)
    assert c["model"] == "two_tower+dcn+pop" and c["passed"]
    reports = {"popularity": baselines["popularity"].to_dict(), **{n: r.to_dict() for n, r in models.items()}}
    blessed, reasons, checks = G.decide_blessing(reports, None, gate, [c])
    assert blessed, reasons
    assert {check["model"] for check in checks} == set(models)  # the floor still applies to every gated model
    # without the blend (popularity weight 0) the served model is two_tower+dcn, and it loses
    del models["two_tower+dcn+pop"]
    (c,) = G.compare_to_baselines(models, baselines, gate, n_resamples=500)
    assert c["model"] == "two_tower+dcn" and not c["passed"]
    assert G.served_model({}, gate) is None and G.compare_to_baselines({}, baselines, gate) == []


def test_required_lift_over_the_best_baseline():
    baselines = _reports(popularity=_reversed, ease=_ranked("i1"))
    models = _reports(two_tower=_ranked("i0"))  # better than ease: i0 is relevant to everyone
    assert G.compare_to_baselines(models, baselines, GATE, n_resamples=500)[0]["passed"]
    strict = G.GateConfig(guarded_metrics="ndcg@10", gated_models="two_tower", baseline_min_lift=1.0)
    (c,) = G.compare_to_baselines(models, baselines, strict, n_resamples=500)
    assert c["bound"] == pytest.approx(2 * baselines["ease"].metric("ndcg", 10)) and not c["passed"]


def test_significantly_worse_than_the_last_blessed_model_is_refused_even_within_tolerance():
    models = _reports(two_tower=_ranked("i1"))
    last = _reports(two_tower=_ranked("i0"))
    loose = G.GateConfig(guarded_metrics="ndcg@10", gated_models="two_tower", tolerance=0.9)
    (c,) = G.compare_to_last_blessed(models, last, loose, n_resamples=500)
    assert c["kind"] == G.LAST_BLESSED and not c["passed"] and c["ci_high"] < 0
    pop = _reports(popularity=_reversed)["popularity"].to_dict()
    reports = {"popularity": pop, "two_tower": models["two_tower"].to_dict()}
    blessed, reasons, checks = G.decide_blessing(reports, {"two_tower": last["two_tower"].to_dict()}, loose, [c])
    assert all(check["passed"] for check in checks)  # within the 90% tolerance
    assert not blessed and "significantly worse than the last blessed model" in reasons[0]
    # the same model again is not significantly worse
    (same,) = G.compare_to_last_blessed(last, last, loose, n_resamples=500)
    assert same["passed"] and same["p_value"] == 1.0


def test_gate_config_checks_the_new_settings():
    with pytest.raises(ValueError, match="baseline_min_lift"):
        G.GateConfig(baseline_min_lift=-1.5)
    with pytest.raises(ValueError, match="alpha"):
        G.GateConfig(alpha=0.0)
    with pytest.raises(ValueError, match="bad guarded metric"):
        G.GateConfig(baseline_metric="ndcg")


def test_unblessed_run_ends_cleanly_and_leaves_the_best_baseline_to_serve(world, model_dirs, artifact_dirs, tmp_path):
    # the good model doubles popularity's NDCG@10 on this world; demanding +500% over the best baseline fails it
    config = ME.EvaluatorConfig(
        ks=(5, 10, 20),
        gate=ME.GateConfig(guarded_metrics=("recall@20", "ndcg@10"), baseline_min_lift=5.0),
        ann_queries=0,
        bootstrap_resamples=200,
    )
    result = ME.run_evaluation(
        artifact_dirs["examples"],
        artifact_dirs["catalog"],
        os.path.join(model_dirs["good"], "Format-Serving"),
        str(tmp_path),
        config=config,
        data=world,
    )
    assert not result["blessed"]
    best = result["best_baseline"]
    assert best["name"] in result["baselines"] and best["fallback_file"] == ME.FALLBACK_FILE
    assert any(f"below the best baseline {best['name']}" in r for r in result["reasons"])
    assert set(result["baselines"]) == set(ME.baseline_models.BASELINES)
    assert {c["slice"] for c in result["comparisons"]} == {"all", "warm", "cold"}
    assert all("ci_low" in c and "p_value" in c for c in result["comparisons"])
    assert len(result["per_user"]["user_ids"]) == 48
    assert len(result["per_user"]["metrics"]["two_tower"]["ndcg@10"]) == 48
    assert os.path.exists(tmp_path / "NOT_BLESSED")
    with open(tmp_path / ME.FALLBACK_FILE) as f:
        fallback = json.load(f)
    assert fallback["name"] == best["name"] and fallback["metric"] == "ndcg@10"
    assert len(fallback["default"]) == 20 and len(set(fallback["default"])) == 20
    seen = set(world.frame.loc[world.frame["user_id"] == "u0", "item_id"])
    assert fallback["users"]["u0"] and not seen & set(fallback["users"]["u0"])
    props = ME.blessing_properties(result)
    assert props["blessed"] == 0 and props["fallback"] == ME.FALLBACK_FILE and props["best_baseline"]
    html = open(tmp_path / ME.REPORT_FILE).read()
    assert "Baselines" in html and best["name"] in html
