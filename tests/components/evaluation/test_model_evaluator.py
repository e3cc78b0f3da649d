"""ModelEvaluator: the gate both ways, slicing by gender and age bucket, the outputs and the executor."""

import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from towerflow.components.evaluation import model_evaluator as ME
from towerflow.components.evaluation.offline import (
    RecordedRecommender,
    age_bucket,
    evaluate_sliced,
    user_slicings,
)
from towerflow.components.evaluation.protocol import EvalSet
from towerflow.models import features as F

KS = (5, 10, 20)
GATE = ME.GateConfig(guarded_metrics=("recall@20", "ndcg@10"), tolerance=0.02, min_lift=0.0)


def _config(**kwargs) -> ME.EvaluatorConfig:
    return ME.EvaluatorConfig(**{"ks": KS, "gate": GATE, "ann_k": 5, "ann_queries": 30, **kwargs})


def _report(recall=0.5, ndcg=0.3) -> dict:
    return {"metrics": {"all": {"recall@100": recall, "ndcg@10": ndcg}}}


# --------------------------------------------------------------------------- the gate, by hand


def test_gate_blesses_a_model_above_popularity_and_baseline():
    blessed, reasons, checks = ME.decide_blessing(
        {"popularity": _report(0.3, 0.2), "two_tower": _report(0.5, 0.3)},
        {"two_tower": _report(0.5, 0.3)},
        ME.GateConfig(),
    )
    assert blessed, reasons
    assert len(checks) == 4 and all(c["passed"] for c in checks)  # 2 metrics x (popularity, baseline)


def test_gate_rejects_regression_beyond_tolerance_only():
    reports = {"popularity": _report(0.3, 0.2), "two_tower": _report(0.5, 0.3)}
    within = {"two_tower": _report(0.5 / 0.99, 0.3)}  # candidate is 1% below: allowed at 2%
    assert ME.decide_blessing(reports, within, ME.GateConfig(tolerance=0.02))[0]
    beyond = {"two_tower": _report(0.5 / 0.95, 0.3)}  # 5% below
    blessed, reasons, _ = ME.decide_blessing(reports, beyond, ME.GateConfig(tolerance=0.02))
    assert not blessed
    assert len(reasons) == 1 and "recall@100" in reasons[0] and "regresses" in reasons[0]


def test_gate_requires_beating_popularity_by_the_lift():
    reports = {"popularity": _report(0.4, 0.2), "two_tower": _report(0.42, 0.3)}
    assert ME.decide_blessing(reports, None, ME.GateConfig(min_lift=0.0))[0]
    blessed, reasons, _ = ME.decide_blessing(reports, None, ME.GateConfig(min_lift=0.10))  # needs > 0.44
    assert not blessed and "popularity" in reasons[0]
    tie = {"popularity": _report(0.4, 0.2), "two_tower": _report(0.4, 0.3)}
    assert not ME.decide_blessing(tie, None, ME.GateConfig())[0]  # equal is not beating


def test_gate_fails_nan_and_missing_models():
    nan = {"popularity": _report(0.3, 0.2), "two_tower": _report(float("nan"), 0.3)}
    assert not ME.decide_blessing(nan, None, ME.GateConfig())[0]
    only_pop = {"popularity": _report()}
    blessed, reasons, _ = ME.decide_blessing(only_pop, None, ME.GateConfig())
    assert not blessed and "none of the gated models" in reasons[0]
    # a gated model that was not evaluated (no ranker given) is skipped, the others still count
    assert ME.decide_blessing({"popularity": _report(0.3, 0.2), "two_tower": _report()}, None, ME.GateConfig())[0]


def test_sliced_guarded_metric():
    reports = {
        "popularity": {"metrics": {"all": {"ndcg@10": 0.2}, "warm": {"ndcg@10": 0.5}}},
        "two_tower": {"metrics": {"all": {"ndcg@10": 0.3}, "warm": {"ndcg@10": 0.4}}},
    }
    assert ME.decide_blessing(reports, None, ME.GateConfig(guarded_metrics="ndcg@10"))[0]
    blessed, reasons, _ = ME.decide_blessing(reports, None, ME.GateConfig(guarded_metrics="warm:ndcg@10"))
    assert not blessed and "warm:ndcg@10" in reasons[0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"guarded_metrics": "recall"},
        {"guarded_metrics": "precision@10"},
        {"guarded_metrics": ""},
        {"tolerance": -0.1},
        {"tolerance": 1.5},
        {"min_lift": -1.0},
        {"gated_models": "popularity"},
    ],
)
def test_gate_config_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        ME.GateConfig(**kwargs)


def test_evaluator_config_checks_guarded_k_is_evaluated():
    assert ME.EvaluatorConfig(ks="100,10,50").ks == (10, 50, 100)
    with pytest.raises(ValueError, match="K=20"):
        ME.EvaluatorConfig(ks=(10, 100), gate=ME.GateConfig(guarded_metrics="recall@20"))
    with pytest.raises(ValueError, match="comma-separated"):
        ME.EvaluatorConfig(ks="10,x")
    with pytest.raises(ValueError, match="rerank_weight"):
        ME.EvaluatorConfig(rerank_weight=-0.5)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="popularity_weight"):
            ME.EvaluatorConfig(popularity_weight=bad)


# --------------------------------------------------------------------------- slicing


def test_age_buckets():
    assert [age_bucket(a) for a in (1, 17, 18, 24, 25, 34, 35, 45, 49, 50, 56, 73)] == [
        "<18",
        "<18",
        "18-24",
        "18-24",
        "25-34",
        "25-34",
        "35-44",
        "45-49",
        "45-49",
        "50-55",
        "56+",
        "56+",
    ]
    assert age_bucket(-1) == age_bucket(0) == age_bucket(None) == "unknown"


def test_metrics_sliced_by_gender_and_age_bucket():
    users = pd.DataFrame(
        {F.USER_GENDER: ["F", "M", "F", ""], F.USER_AGE: [20, 20, 40, -1]},
        index=pd.Index(["a", "b", "c", "d"], name=F.USER_ID),
    )
    slicings = user_slicings(users)
    assert slicings["gender"] == {"a": "gender=F", "b": "gender=M", "c": "gender=F", "d": "gender=unknown"}
    assert slicings["age"] == {"a": "age=18-24", "b": "age=18-24", "c": "age=35-44", "d": "age=unknown"}

    eval_set = EvalSet(
        user_ids=("a", "b", "c", "d"),
        relevant=(frozenset({"x"}), frozenset({"y"}), frozenset({"x", "y"}), frozenset({"z"})),
        seen=(frozenset(),) * 4,
        is_warm=[True, True, False, False],
        cutoff=0.0,
        catalog=("x", "y", "z"),
    )
    calls = []

    def recommend(user_ids, k, exclude):
        calls.append(list(user_ids))
        return [["x", "y", "z"][:k] for _ in user_ids]

    report = evaluate_sliced(recommend, eval_set, (1, 2), slicings=slicings)
    assert len(calls) == 1  # the lists are replayed for the second slicing
    recall1 = report.metrics
    # per-user recall@1 (top item "x"): a 1, b 0, c 1/2, d 0
    assert recall1["gender=F"]["recall@1"] == pytest.approx((1 + 0.5) / 2)
    assert recall1["gender=M"]["recall@1"] == 0.0
    assert recall1["age=18-24"]["recall@1"] == pytest.approx(0.5)
    assert recall1["age=35-44"]["recall@2"] == 1.0
    assert recall1["all"]["recall@1"] == pytest.approx(1.5 / 4)
    assert report.n_users == {
        "all": 4,
        "warm": 2,
        "cold": 2,
        "gender=F": 2,
        "gender=M": 1,
        "gender=unknown": 1,
        "age=18-24": 2,
        "age=35-44": 1,
        "age=unknown": 1,
    }


def test_recorded_recommender_replays():
    n = []

    def recommend(users, k, exclude):
        n.append(1)
        return [["a"] for _ in users]

    recorded = RecordedRecommender(recommend)
    assert recorded(["u"], 3, [set()]) == recorded(["u"], 3, [set()]) == [["a"]]
    recorded(["u"], 4, [set()])
    assert len(n) == 2


# --------------------------------------------------------------------------- on tiny models


@pytest.fixture(scope="module")
def good_result(world, model_dirs, artifact_dirs, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("good_blessing"))
    result = ME.run_evaluation(
        artifact_dirs["examples"],
        artifact_dirs["catalog"],
        os.path.join(model_dirs["good"], "Format-Serving"),
        out,
        ranker_dir=os.path.join(model_dirs["ranker"], "Format-Serving"),
        config=_config(),
    )
    return result, out


def test_good_model_is_blessed(good_result):
    result, out = good_result
    assert result["blessed"], result["reasons"]
    assert set(result["reports"]) == {"popularity", "two_tower", "two_tower+dcn", "two_tower+dcn+pop"}
    two_tower = result["reports"]["two_tower"]["metrics"]["all"]
    popularity = result["reports"]["popularity"]["metrics"]["all"]
    assert two_tower["recall@20"] > popularity["recall@20"] and two_tower["ndcg@10"] > popularity["ndcg@10"]
    assert {c["against"] for c in result["checks"]} == {"popularity"}  # no baseline yet
    assert sorted(os.listdir(out)) == sorted(["BLESSED", ME.EVALUATION_FILE, ME.REPORT_FILE])
    assert json.load(open(os.path.join(out, ME.EVALUATION_FILE)))["blessed"] is True


def test_protocol_metrics_slices_and_beyond_accuracy(good_result):
    result = good_result[0]
    report = result["reports"]["two_tower"]
    for k in KS:
        for name in ("recall", "hit_rate", "ndcg", "map"):
            assert 0.0 <= report["metrics"]["all"][f"{name}@{k}"] <= 1.0
    assert {"all", "warm", "cold", "gender=F", "gender=M", "age=<18", "age=56+", "age=unknown"} <= set(
        report["metrics"]
    )
    assert report["n_users"]["gender=F"] + report["n_users"]["gender=M"] == report["n_users"]["all"] == 48
    assert set(report["beyond_accuracy"]) == {"coverage@20", "gini@20", "avg_popularity@20", "diversity@20"}
    assert result["curve_ks"] == [1, 2, 5, 10, 20]
    assert result["data"]["test_users"] == 48 and result["data"]["cold_users"] == 12


def test_score_distribution_is_the_deciles_of_the_served_scores_first_ten(good_result, world, model_dirs):
    from towerflow.components.evaluation.offline import BlendedRecommender, TwoTowerRecommender
    from towerflow.components.evaluation.statistics import quantile_bins

    result = good_result[0]
    distribution = result["score_distribution"]
    config = result["config"]
    # The service serves two_tower+dcn+pop when the evaluation has a popularity weight (the default).
    assert config["popularity_weight"] > 0
    assert "two_tower+dcn+pop" in distribution["source"] and "48 test users" in distribution["source"]
    # The same scores again, from the blended recommender the evaluation ran (same models, users, cut-off).
    eval_set = world.eval_set()
    as_of = int(np.ceil(eval_set.cutoff))
    retrieval = TwoTowerRecommender(os.path.join(model_dirs["good"], "Format-Serving"), world, as_of)
    blended = BlendedRecommender(
        retrieval,
        os.path.join(model_dirs["ranker"], "Format-Serving"),
        world,
        as_of,
        depth=config["rerank_depth"],
        rerank_weight=config["rerank_weight"],
        popularity_weight=config["popularity_weight"],
    )
    blended(list(eval_set.user_ids), max(result["curve_ks"]), [set(s) for s in eval_set.seen])
    scores = np.concatenate([blended.top_scores[u] for u in eval_set.user_ids])
    assert len(scores) == 48 * 10 and "models' part" in distribution["source"]
    edges, fractions = quantile_bins(scores)
    assert distribution["edges"] == pytest.approx(edges) and distribution["fractions"] == pytest.approx(fractions)
    assert len(edges) == 9 and sum(fractions) == pytest.approx(1.0)


def test_score_distribution_follows_the_served_score():
    assert ME.served_score_model(ME.EvaluatorConfig()) == "two_tower+dcn+pop"
    assert ME.served_score_model(ME.EvaluatorConfig(popularity_weight=0.0)) == "two_tower+dcn"


def test_ann_frontier_sweep(good_result):
    ann = good_result[0]["ann"]
    assert ann["num_items"] == 150 and ann["k"] == 5 and ann["source"] == "model catalog"
    leaves = {p["leaves_to_search"] for p in ann["points"]}
    pools = {p["reorder"] for p in ann["points"]}
    assert len(leaves) >= 3 and len(pools) >= 3 and len(ann["points"]) == len(leaves) * len(pools)
    full = [p for p in ann["points"] if p["leaves_to_search"] == ann["num_leaves"] and p["reorder"] == max(pools)]
    assert full[0]["recall"] >= 0.9  # every leaf, the biggest exact re-order pool: nearly exact
    assert all(0 <= p["recall"] <= 1 and p["p50_ms"] > 0 for p in ann["points"])
    recalls = [ann["points"][i]["recall"] for i in ann["frontier"]]
    assert recalls == sorted(recalls) and ann["frontier"]


def test_broken_model_is_not_blessed(world, model_dirs, artifact_dirs, tmp_path):
    result = ME.run_evaluation(
        artifact_dirs["examples"],
        artifact_dirs["catalog"],
        os.path.join(model_dirs["broken"], "Format-Serving"),
        str(tmp_path),
        config=_config(ann_queries=0),
        data=world,
    )
    assert not result["blessed"]
    assert any("two_tower recall@20" in r and "popularity" in r for r in result["reasons"])
    assert os.path.exists(tmp_path / "NOT_BLESSED") and not os.path.exists(tmp_path / "BLESSED")
    assert result["ann"] is None


def test_regression_vs_blessed_baseline_is_not_blessed(world, model_dirs, artifact_dirs, tmp_path):
    # the candidate re-ranks by the ranker's score alone, so it beats popularity; the baseline is better still
    result = ME.run_evaluation(
        artifact_dirs["examples"],
        artifact_dirs["catalog"],
        os.path.join(model_dirs["broken"], "Format-Serving"),
        str(tmp_path),
        ranker_dir=os.path.join(model_dirs["ranker"], "Format-Serving"),
        baseline_dir=os.path.join(model_dirs["good"], "Format-Serving"),
        baseline_ranker_dir=os.path.join(model_dirs["ranker"], "Format-Serving"),
        config=_config(
            ann_queries=0,
            rerank_score="liked_probability",
            gate=ME.GateConfig(("recall@20", "ndcg@10"), 0.02, 0.0, "two_tower+dcn"),
        ),
        data=world,
    )
    assert set(result["baseline_reports"]) == {"two_tower", "two_tower+dcn", "two_tower+dcn+pop"}
    pop_checks = [c for c in result["checks"] if c["against"] == "popularity"]
    assert all(c["passed"] for c in pop_checks)
    assert not result["blessed"]
    assert any("regresses more than 2.0%" in r for r in result["reasons"])


def test_same_model_as_baseline_is_blessed(world, model_dirs, artifact_dirs, tmp_path):
    good = os.path.join(model_dirs["good"], "Format-Serving")
    result = ME.run_evaluation(
        artifact_dirs["examples"],
        artifact_dirs["catalog"],
        good,
        str(tmp_path),
        baseline_dir=good,
        config=_config(ann_queries=0),
        data=world,
    )
    assert result["blessed"], result["reasons"]
    assert {c["against"] for c in result["checks"]} == {"popularity", "baseline"}
    assert "last blessed model" in result["reasons"][0]


def _recommend_popular_reversed(data, retrieval, ranker_dir, as_of):
    """A stand-in full pipeline for the hook test: the retrieval list, reversed."""

    def recommend(user_ids, k, exclude):
        return [list(reversed(r)) for r in retrieval(user_ids, k, exclude)]

    return recommend


def test_full_pipeline_hook(world, model_dirs, artifact_dirs, tmp_path):
    result = ME.run_evaluation(
        artifact_dirs["examples"],
        artifact_dirs["catalog"],
        os.path.join(model_dirs["good"], "Format-Serving"),
        str(tmp_path),
        config=_config(ann_queries=0, full_pipeline_fn=f"{__name__}._recommend_popular_reversed"),
        data=world,
    )
    assert ME.FULL_PIPELINE in result["reports"]
    full, retrieval = result["reports"][ME.FULL_PIPELINE], result["reports"]["two_tower"]
    assert full["metrics"]["all"]["recall@20"] == retrieval["metrics"]["all"]["recall@20"]  # same set
    assert full["metrics"]["all"]["ndcg@10"] < retrieval["metrics"]["all"]["ndcg@10"]  # worse order
    with pytest.raises(ValueError, match="dotted"):
        ME.load_factory("nodots")


# --------------------------------------------------------------------------- the component's executor


def test_executor_records_blessing_properties(model_dirs, artifact_dirs, tmp_path):
    from tfx.types import standard_artifacts

    from towerflow.components.ingestion.component import ItemCatalog

    def artifact(cls, uri, id_):
        a = cls()
        a.uri = uri
        a.id = id_
        return a

    examples = artifact(standard_artifacts.Examples, artifact_dirs["examples"], 1)
    catalog = artifact(ItemCatalog, artifact_dirs["catalog"], 2)
    model = artifact(standard_artifacts.Model, model_dirs["good"], 7)
    ranker = artifact(standard_artifacts.Model, model_dirs["ranker"], 8)
    blessing = artifact(standard_artifacts.ModelBlessing, str(tmp_path / "blessing"), 9)
    executor = ME.ModelEvaluator.EXECUTOR_SPEC.executor_class()
    executor.Do(
        {"examples": [examples], "item_catalog": [catalog], "model": [model], "ranker_model": [ranker]},
        {"blessing": [blessing]},
        {"ks": "5,10,20", "guarded_metrics": "recall@20,ndcg@10", "ann_k": 5, "ann_queries": 20},
    )
    assert blessing.get_int_custom_property("blessed") == 1
    assert blessing.get_int_custom_property("current_model_id") == 7  # what LatestBlessedModelStrategy reads
    assert blessing.get_string_custom_property("current_model") == model_dirs["good"]
    assert blessing.get_string_custom_property(ME.RANKER_PROPERTY) == model_dirs["ranker"]
    assert "beat popularity" in blessing.get_string_custom_property("reason")
    recall = blessing.get_float_custom_property("two_tower:recall@10")
    assert 0 < recall <= 1 and not math.isnan(recall)
    assert os.path.isfile(tmp_path / "blessing" / ME.REPORT_FILE)


def _without_created(path):
    with open(path) as f:
        result = json.load(f)
    result.pop("created")
    return result


def test_baseline_evaluator_output_gives_the_same_evaluation(world, model_dirs, artifact_dirs, tmp_path):
    # The BaselineEvaluator (run as the pipeline runs it: its executor, its own data load) makes what
    # ModelEvaluator would compute itself: the same model_evaluation.json and fallback lists, byte for byte.
    from tfx.types import standard_artifacts

    from towerflow.components.ingestion.component import ItemCatalog

    def artifact(cls, uri):
        a = cls()
        a.uri = uri
        return a

    made = tmp_path / "baselines"
    made.mkdir()
    ME.BaselineEvaluator.EXECUTOR_SPEC.executor_class().Do(
        {
            "examples": [artifact(standard_artifacts.Examples, artifact_dirs["examples"])],
            "item_catalog": [artifact(ItemCatalog, artifact_dirs["catalog"])],
        },
        {"evaluation": [artifact(ME.BaselineEvaluation, str(made))]},
        {"ks": ",".join(map(str, KS)), "guarded_metrics": "recall@20,ndcg@10"},
    )
    assert (made / ME.BASELINE_EVALUATION_FILE).is_file() and (made / ME.FALLBACK_FILE).is_file()
    outputs = {}
    for name, baseline_dir in (("own", None), ("given", str(made)), ("other_ks", str(made))):
        out = tmp_path / name
        out.mkdir()
        config = _config(ann_queries=0, **({"ks": (5, 10, 20, 50)} if name == "other_ks" else {}))
        result = ME.run_evaluation(
            artifact_dirs["examples"],
            artifact_dirs["catalog"],
            os.path.join(model_dirs["broken"], "Format-Serving"),
            str(out),
            config=config,
            data=world,
            baseline_evaluation_dir=baseline_dir,
        )
        assert not result["blessed"]  # so the fallback lists are written (copied when given)
        outputs[name] = out
    assert _without_created(outputs["given"] / ME.EVALUATION_FILE) == _without_created(
        outputs["own"] / ME.EVALUATION_FILE
    )
    assert (outputs["given"] / ME.FALLBACK_FILE).read_bytes() == (outputs["own"] / ME.FALLBACK_FILE).read_bytes()
    # made for other ks: not used, the evaluator computes its own (ks 5..50 reports K=50)
    other = _without_created(outputs["other_ks"] / ME.EVALUATION_FILE)
    assert "recall@50" in other["reports"]["popularity"]["metrics"]["all"]
