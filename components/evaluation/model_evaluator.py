"""The ModelEvaluator TFX component: offline metrics of the trained models against strong baselines, and the gate.

ModelEvaluator(examples, item_catalog, model[, ranker_model, baseline_model, baseline_blessing, index,
               index_evaluation]) -> blessing (standard ModelBlessing)

Scores, by the one protocol path (`offline.evaluate_models` over `protocol.evaluate`), on the test split:
  baselines        popularity (train+eval counts), recent popularity, segment popularity, item-kNN and
                   EASE (components/evaluation/baselines.py; settings chosen on the eval window with
                   train-only fits, then refit on train+eval)
  two_tower        retrieval alone: exact top-K over the catalog minus seen items
  two_tower+dcn    retrieval, then the DCN ranker re-orders the top `rerank_depth`
  two_tower+dcn+pop  retrieval logit + rerank_weight x DCN interaction score + popularity_weight x
                   log(1 + the item's recent count), over the retrieval's top `rerank_depth` and the
                   `rerank_depth` most recently popular items (offline.BlendedRecommender); only
                   with popularity_weight > 0
  full_pipeline    retrieval + ranking + re-ranking: the hook for the serving re-ranker; set
                   `full_pipeline_fn` to the dotted name of a factory
                   `fn(data, retrieval, ranker_dir, as_of) -> recommend(user_ids, k, exclude)`
Metrics: Recall/HitRate/NDCG/MAP at each K, sliced by all/warm/cold users, gender and age bucket;
coverage, Gini of exposure, average popularity and intra-list genre diversity at the largest K.
Per-user values are kept, and every model is compared with the best baseline (and the last blessed
model) by a paired bootstrap 95% CI of the difference and a permutation p-value, overall and for
warm and cold users (components/evaluation/statistics.py).

The last blessed two-tower model (and the ranker recorded on its blessing) is resolved by the pipeline
from MLMD with TFX's LatestBlessedModelStrategy and re-evaluated on this run's users. The gate
(components/evaluation/gate.py) blesses only if every gated model beats popularity, does not regress
beyond `tolerance` and is not significantly worse than the last blessed model, and is not below the
best baseline on NDCG@10 over all users (by `baseline_min_lift`, default 0).

The blessing follows TFX's Evaluator conventions, so LatestBlessedModelStrategy and pushers read
it: custom properties `blessed` (1/0), `current_model` / `current_model_id` (the two-tower model),
`baseline_model` / `baseline_model_id`, plus `ranker_model`, `reason`, `failures`, `best_baseline`
and the headline metrics (`two_tower:recall@100`, ...); a BLESSED or NOT_BLESSED file;
`model_evaluation.json` (everything) and `model_evaluation.html` (the report,
components/evaluation/report.py). When the models are NOT blessed, `baseline_fallback.json` holds
the best baseline refit on every interaction as ready-to-serve ranked lists (`baselines.serving_lists`).
`score_distribution` in the JSON (decile bins of the served score's first 10 per test user: two_tower+dcn+pop,
or two_tower+dcn without a popularity weight) travels
with the pushed models; the service's canary watcher measures score drift (PSI) against it.

The report also shows the ANN recall-vs-latency frontier that the IndexEvaluator measured
(`index_evaluation`, components/index/frontier.py). Without it, `ann_queries` > 0 still sweeps the
served index (or the model's catalog embeddings) here with the same function.

This module must not use `from __future__ import annotations`: TFX reads the component
signature's annotations at import time.
"""

import datetime
import importlib
import json
import math
import os
import pickle
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from tfx import types
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from towerflow.components.evaluation import baselines as baseline_models
from towerflow.components.evaluation import metrics as M
from towerflow.components.evaluation import report as report_html
from towerflow.components.evaluation.gate import (  # noqa: F401 - FULL_PIPELINE, parse_metric: the gate's API here too
    FULL_PIPELINE,
    POPULARITY,
    TWO_TOWER,
    TWO_TOWER_DCN,
    GateConfig,
    best_baseline,
    compare_to_baselines,
    compare_to_last_blessed,
    decide_blessing,
    parse_metric,
    split_list,
)
from towerflow.components.evaluation.offline import (
    BLENDED,
    DEFAULT_KS,
    DEFAULT_POPULARITY_WEIGHT,
    DEFAULT_RERANK_SCORE,
    DEFAULT_RERANK_WEIGHT,
    FullPipelineFactory,
    OfflineData,
    TwoTowerRecommender,
    evaluate_models,
    release_freed_memory,
    user_slicings,
)
from towerflow.components.evaluation.protocol import EvalReport, catalog_ids
from towerflow.components.evaluation.statistics import SCORED_ITEMS, paired_comparison, quantile_bins
from towerflow.components.index.component import RetrievalIndex, tower_dir
from towerflow.components.index.component import read_evaluation as read_index_evaluation
from towerflow.components.index.frontier import ann_frontier
from towerflow.components.ingestion.component import ItemCatalog

EVALUATION_FILE = "model_evaluation.json"
REPORT_FILE = "model_evaluation.html"
FALLBACK_FILE = "baseline_fallback.json"  # the best baseline's ranked lists, written when not blessed
BLESSED_FILE = "BLESSED"
NOT_BLESSED_FILE = "NOT_BLESSED"
RANKER_PROPERTY = "ranker_model"  # URI of the ranker evaluated with the blessed two-tower

CURVE_KS = (1, 2, 5, 10, 20, 50, 100, 200, 500)
HEADLINE_PROPERTIES = ("recall@10", "recall@50", "recall@100", "ndcg@10", "hit_rate@10", "map@10")
# What the report compares (each model vs the best baseline) and keeps per user.
COMPARED_METRICS = ("recall@100", "ndcg@10", "hit_rate@10")
COMPARED_SLICES = ("all", "warm", "cold")
DEFAULT_BASELINES = ",".join(baseline_models.BASELINES)
BASELINE_EVALUATION_FILE = "baseline_evaluation.pkl"


class BaselineEvaluation(types.Artifact):
    """The baselines' selection and test-window reports (BaselineEvaluator), and the best one's fallback lists."""

    TYPE_NAME = "towerflow.BaselineEvaluation"


# --------------------------------------------------------------------------- evaluating


def curve_ks(ks: Sequence[int], num_items: int) -> tuple[int, ...]:
    """The reported Ks plus a few more for smooth Recall@K curves, none above the largest reported K."""
    kmax = max(ks)
    return tuple(sorted({*ks, *(k for k in CURVE_KS if k <= min(kmax, max(num_items, 1)))}))


def load_factory(dotted: str) -> FullPipelineFactory:
    module, _, name = dotted.rpartition(".")
    if not module:
        raise ValueError(f"full_pipeline_fn must be a dotted name 'package.module.function', got {dotted!r}")
    return getattr(importlib.import_module(module), name)


def compare_reports(
    reports: Mapping[str, EvalReport],
    reference: EvalReport,
    against: str,
    metrics: Sequence[str],
    slices: Sequence[str] = COMPARED_SLICES,
    n_resamples: int = 1000,
) -> list[dict]:
    """Each report against `reference` on every metric and slice: paired bootstrap CI and p-value."""
    out = []
    for model, report in reports.items():
        for metric in (m for m in metrics if m in report.per_user):
            for slice_name in slices:
                mask = report.masks[slice_name]
                stats = paired_comparison(report.per_user[metric][mask], reference.per_user[metric][mask], n_resamples)
                out.append(dict(model=model, against=against, metric=metric, slice=slice_name, **stats))
    return out


@dataclass
class EvaluatorConfig:
    """Every ModelEvaluator setting; the component's parameters map onto these fields."""

    ks: tuple[int, ...] = DEFAULT_KS
    gate: GateConfig = field(default_factory=GateConfig)
    rerank_depth: int = 100
    rerank_score: str = DEFAULT_RERANK_SCORE
    rerank_weight: float = DEFAULT_RERANK_WEIGHT
    popularity_weight: float = DEFAULT_POPULARITY_WEIGHT  # 0: no two_tower+dcn+pop
    full_pipeline_fn: str = ""
    baselines: tuple[str, ...] = baseline_models.BASELINES
    bootstrap_resamples: int = 1000
    ann_k: int = 10
    ann_queries: int = 200  # 0 = no ANN sweep here (the IndexEvaluator's frontier is shown when given)
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.ks, str):
            try:
                self.ks = tuple(int(k) for k in split_list(self.ks))
            except ValueError:
                raise ValueError(f"ks must be comma-separated integers, e.g. '10,50,100', got {self.ks!r}") from None
        self.ks = tuple(sorted({M.check_k(int(k)) for k in self.ks}))
        if not self.ks:
            raise ValueError("ks must not be empty")
        for spec in (*self.gate.guarded_metrics, self.gate.baseline_metric):
            k = int(parse_metric(spec)[1].split("@")[1])
            if k not in self.ks:
                raise ValueError(f"guarded metric {spec!r} uses K={k}, which is not among ks {self.ks}")
        # popularity always: it is the floor of the gate
        self.baselines = tuple(dict.fromkeys((POPULARITY, *split_list(self.baselines))))
        unknown = set(self.baselines) - set(baseline_models.BASELINES)
        if unknown:
            raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {baseline_models.BASELINES}")
        if self.rerank_depth < 1:
            raise ValueError(f"rerank_depth must be >= 1, got {self.rerank_depth}")
        if not self.rerank_weight >= 0:
            raise ValueError(f"rerank_weight must be >= 0, got {self.rerank_weight}")
        if not (math.isfinite(self.popularity_weight) and self.popularity_weight >= 0):
            raise ValueError(f"popularity_weight must be a finite number >= 0, got {self.popularity_weight}")
        if self.bootstrap_resamples < 100:
            raise ValueError(f"bootstrap_resamples must be >= 100, got {self.bootstrap_resamples}")
        if self.ann_k < 1 or self.ann_queries < 0:
            raise ValueError(f"need ann_k >= 1 and ann_queries >= 0, got {self.ann_k}, {self.ann_queries}")


def _to_dicts(reports: Mapping[str, EvalReport]) -> dict[str, dict]:
    return {name: r.to_dict() for name, r in reports.items()}


def _ann_sweep(data: OfflineData, model_dir: str, index_dir: str | None, config: EvaluatorConfig) -> dict:
    """The frontier measured here (until the pipeline passes the IndexEvaluator's): queries of test users."""
    eval_set = data.eval_set()
    retrieval = TwoTowerRecommender(model_dir, data, int(np.ceil(eval_set.cutoff)))
    rng = np.random.default_rng(config.seed)
    users = list(eval_set.user_ids)
    chosen = sorted(rng.choice(len(users), size=min(config.ann_queries, len(users)), replace=False))
    queries = retrieval.query_embeddings([users[i] for i in chosen])
    served = None
    ids, embeddings, source = retrieval.item_ids, retrieval.item_embeddings, "model catalog"
    if index_dir:
        from towerflow.components.index.component import INDEX_DIR
        from towerflow.components.index.scann_index import ScannIndex

        served = ScannIndex.load(os.path.join(index_dir, INDEX_DIR))
        ids, embeddings, source = served.ids, served.embeddings, "served index"
    ann = ann_frontier(ids, embeddings, queries, k=config.ann_k, served=served)
    ann["source"] = source
    return ann


def run_evaluation(
    examples_uri: str,
    catalog_uri: str,
    model_dir: str,
    output_dir: str,
    ranker_dir: str | None = None,
    baseline_dir: str | None = None,
    baseline_ranker_dir: str | None = None,
    index_dir: str | None = None,
    config: EvaluatorConfig | None = None,
    data: OfflineData | None = None,
    index_evaluation_dir: str | None = None,
    baseline_evaluation_dir: str | None = None,
) -> dict:
    """Everything ModelEvaluator does except recording MLMD properties; returns the result dict
    (also written to `<output_dir>/model_evaluation.json`, with the HTML report next to it).

    `baseline_evaluation_dir`: a BaselineEvaluator's output for the same data and settings, used
    instead of selecting and scoring the baselines here (the same computation, done earlier).
    """
    config = config or EvaluatorConfig()
    data = data or OfflineData.from_artifacts(examples_uri, catalog_uri)
    eval_set = data.eval_set()
    factory = load_factory(config.full_pipeline_fn) if config.full_pipeline_fn else None
    ks = curve_ks(config.ks, len(eval_set.catalog))
    precomputed = read_baseline_evaluation(baseline_evaluation_dir, config, ks, len(eval_set))
    if precomputed:
        fitted, baselines = precomputed["fitted"], precomputed["reports"]
        print(f"ModelEvaluator: baselines {', '.join(fitted)} from {baseline_evaluation_dir}", flush=True)
    else:
        fitted, baselines = evaluate_baselines(data, config, ks)
    common = dict(
        ks=ks,
        rerank_depth=config.rerank_depth,
        rerank_scores=(config.rerank_score,),
        weight=config.rerank_weight,
        blend=(config.rerank_weight, config.popularity_weight) if config.popularity_weight > 0 else None,
        full_pipeline=factory,
        slicings=user_slicings(data.users),
    )
    models = evaluate_models(data, model_dir, ranker_dir, baselines={}, **common)
    everything = {**baselines, **models}
    reports = {POPULARITY: baselines[POPULARITY], **models}
    last_blessed = (
        evaluate_models(data, baseline_dir, baseline_ranker_dir, baselines={}, **common) if baseline_dir else {}
    )

    resamples = config.bootstrap_resamples
    gating = compare_to_baselines(models, baselines, config.gate, resamples, config.seed)
    gating += compare_to_last_blessed(models, last_blessed, config.gate, resamples, config.seed)
    result_reports, result_baseline = _to_dicts(reports), _to_dicts(last_blessed)
    blessed, reasons, checks = decide_blessing(result_reports, result_baseline or None, config.gate, gating)

    best = best_baseline(_to_dicts(baselines), config.gate.baseline_metric)
    metrics = [m for m in COMPARED_METRICS if int(m.split("@")[1]) in ks]
    comparisons = compare_reports(models, baselines[best], best, metrics, n_resamples=resamples) if best else []
    comparisons += [
        c
        for name, report in last_blessed.items()
        if name in models
        for c in compare_reports({name: models[name]}, report, "last_blessed", metrics, n_resamples=resamples)
    ]

    ann = None
    if index_evaluation_dir:
        ann = read_index_evaluation(index_evaluation_dir).get("frontier")
    elif config.ann_queries:
        ann = _ann_sweep(data, model_dir, index_dir, config)

    result = {
        "blessed": blessed,
        "reasons": reasons,
        "checks": checks,
        "gate_comparisons": gating,
        "gate": asdict(config.gate),
        "gate_description": config.gate.describe(),
        "config": {k: v for k, v in asdict(config).items() if k != "gate"},
        "models": {
            "two_tower": model_dir,
            "ranker": ranker_dir,
            "baseline_two_tower": baseline_dir,
            "baseline_ranker": baseline_ranker_dir,
            "index": index_dir,
        },
        "data": {
            "test_users": len(eval_set),
            "warm_users": eval_set.n_warm,
            "cold_users": eval_set.n_cold,
            "catalog_items": len(eval_set.catalog),
            "test_cutoff": eval_set.cutoff,
        },
        "ks": list(config.ks),
        "curve_ks": list(ks),
        "reports": result_reports,
        "baseline_reports": result_baseline,
        "baselines": {name: {**fitted[name], **baselines[name].to_dict()} for name in fitted},
        "best_baseline": None,
        "comparisons": comparisons,
        "per_user": {
            "user_ids": list(eval_set.user_ids),
            "is_warm": [bool(w) for w in eval_set.is_warm],
            "metrics": {name: r.per_user_dict(metrics) for name, r in everything.items()},
        },
        "ann": ann,
        "score_distribution": score_distribution(
            models.get(served_score_model(config)), len(eval_set), served_score_model(config)
        ),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if best:
        result["best_baseline"] = {
            **_best_baseline_entry(best, fitted, baselines, config),
            "fallback_file": None if blessed else FALLBACK_FILE,
        }
    write_outputs(result, output_dir)
    if best and not blessed:
        made = precomputed and precomputed["fallback"]
        if made and made["best"] == result["best_baseline"] | {"fallback_file": None} and made["n"] == max(config.ks):
            shutil.copyfile(
                os.path.join(baseline_evaluation_dir, FALLBACK_FILE), os.path.join(output_dir, FALLBACK_FILE)
            )
        else:
            write_fallback(result["best_baseline"], data, output_dir, n=max(config.ks))
    return result


def _best_baseline_entry(best: str, fitted: Mapping, reports: Mapping[str, EvalReport], config) -> dict:
    metric = config.gate.baseline_metric
    value = reports[best].to_dict()["metrics"]["all"][parse_metric(metric)[1]]
    return {
        "name": best,
        "settings": fitted[best]["settings"],
        "describe": fitted[best]["describe"],
        "metric": metric,
        "value": value,
    }


def evaluate_baselines(data: OfflineData, config: "EvaluatorConfig", ks: Sequence[int]) -> tuple[dict, dict]:
    """The baselines' settings chosen on the eval window (train-only fits) and their test-window reports:
    ({name: {"settings", "selection", "describe"}}, {name: EvalReport}); needs no model."""
    fitted = baseline_models.select(data.frame, data.users, data.catalog.index, config.baselines)
    release_freed_memory()  # the eval window's frames, eval set and train-only fits
    recommenders = {name: b.recommend for name, b in fitted.items()}
    reports = evaluate_models(data, None, None, ks=ks, baselines=recommenders, slicings=user_slicings(data.users))
    info = {
        name: {"settings": b.settings, "selection": b.selection, "describe": b.describe()} for name, b in fitted.items()
    }
    return info, reports


def _baseline_key(config: "EvaluatorConfig", ks: Sequence[int], test_users: int) -> dict:
    """What a BaselineEvaluator's output must match to stand in for the ModelEvaluator's own computation."""
    return {"ks": tuple(ks), "baselines": tuple(config.baselines), "test_users": test_users}


def write_baseline_evaluation(data: OfflineData, config: "EvaluatorConfig", output_dir: str) -> dict:
    """BaselineEvaluator's work: `evaluate_baselines`, and the best baseline's fallback lists (ModelEvaluator
    copies them when it does not bless the models)."""
    # the test window's eval set only once the baselines are chosen (it and the eval window's would
    # otherwise be held at once)
    ks = curve_ks(config.ks, len(catalog_ids(data.catalog.index)))
    fitted, reports = evaluate_baselines(data, config, ks)
    eval_set = data.eval_set()
    best = best_baseline(_to_dicts(reports), config.gate.baseline_metric)
    fallback = None
    if best:
        entry = _best_baseline_entry(best, fitted, reports, config)
        write_fallback(entry, data, output_dir, n=max(config.ks))
        fallback = {"best": {**entry, "fallback_file": None}, "n": max(config.ks)}
    payload = {
        "key": _baseline_key(config, ks, len(eval_set)),
        "fitted": fitted,
        "reports": reports,
        "fallback": fallback,
    }
    with open(os.path.join(output_dir, BASELINE_EVALUATION_FILE), "wb") as f:
        pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
    return payload


def read_baseline_evaluation(path: str | None, config: "EvaluatorConfig", ks: Sequence[int], test_users: int):
    """A BaselineEvaluator's output if it was made for these settings and test users, else None."""
    if not path or not os.path.isfile(os.path.join(path, BASELINE_EVALUATION_FILE)):
        return None
    with open(os.path.join(path, BASELINE_EVALUATION_FILE), "rb") as f:
        payload = pickle.load(f)  # written by this pipeline's own BaselineEvaluator
    return payload if payload["key"] == _baseline_key(config, ks, test_users) else None


def served_score_model(config: "EvaluatorConfig") -> str:
    """The report whose score the recommend service serves: two_tower+dcn+pop when the evaluation has a
    popularity weight (the pushed evaluation.json carries it to the service), else two_tower+dcn."""
    return BLENDED if config.popularity_weight > 0 else "two_tower+dcn"


def score_distribution(report: EvalReport | None, n_users: int, name: str = "two_tower+dcn") -> dict | None:
    """{edges, fractions, source}: decile bins of the served models' scores (retrieval logit + w x ranker;
    two_tower+dcn+pop's popularity term left out: it is data, not model) of each test user's first
    SCORED_ITEMS items of the served score's list -- the offline reference for the canary's PSI check.
    None without a re-ranked report or with fewer than 10 scores."""
    if report is None or report.top_scores is None or np.isfinite(report.top_scores).sum() < 10:
        return None
    edges, fractions = quantile_bins(report.top_scores)
    part = ", models' part (retrieval + w x ranker)" if name == BLENDED else ""
    source = f"offline evaluation: {name}{part}, first {SCORED_ITEMS} scores of {n_users} test users' lists"
    return {"edges": edges, "fractions": fractions, "source": source}


def write_fallback(best: Mapping, data: OfflineData, output_dir: str, n: int) -> str:
    """`baseline_fallback.json`: the best baseline refit on every interaction, as ranked lists to serve.

    {"name", "settings", "describe", "metric", "value", "as_of", "default": [item ids], "users":
    {user_id: [item ids]}} -- "default" for a user the baseline knows nothing about; each user's list
    leaves out what they interacted with.
    """
    lists = baseline_models.serving_lists(best["name"], best["settings"], data.frame, data.users, data.catalog.index, n)
    payload = {k: best[k] for k in ("name", "settings", "describe", "metric", "value")} | lists
    path = os.path.join(output_dir, FALLBACK_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_json_safe(payload), f)
    return path


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def write_outputs(result: dict, output_dir: str) -> dict[str, str]:
    """model_evaluation.json, model_evaluation.html and BLESSED / NOT_BLESSED in `output_dir`."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {"json": os.path.join(output_dir, EVALUATION_FILE), "html": os.path.join(output_dir, REPORT_FILE)}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(_json_safe(result), f, indent=2)
    with open(paths["html"], "w", encoding="utf-8") as f:
        f.write(report_html.render_html(_json_safe(result)))
    for name in (BLESSED_FILE, NOT_BLESSED_FILE):
        if os.path.exists(os.path.join(output_dir, name)):
            os.remove(os.path.join(output_dir, name))
    open(os.path.join(output_dir, BLESSED_FILE if result["blessed"] else NOT_BLESSED_FILE), "w").close()
    return paths


def read_result(blessing_uri: str) -> dict:
    """The result dict a ModelEvaluator stored in its blessing artifact."""
    path = os.path.join(blessing_uri, EVALUATION_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {EVALUATION_FILE} in {blessing_uri}: not a ModelEvaluator output")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def blessing_properties(result: dict) -> dict:
    """Custom properties for the blessing: verdict, reason, failures and headline metrics per model."""
    props: dict = {
        "blessed": int(bool(result["blessed"])),
        "reason": "; ".join(result["reasons"]),
        "failures": [] if result["blessed"] else list(result["reasons"]),
        "report": os.path.basename(REPORT_FILE),
    }
    for model, report in result["reports"].items():
        for metric in HEADLINE_PROPERTIES:
            value = report["metrics"]["all"].get(metric)
            if value is not None and math.isfinite(value):
                props[f"{model}:{metric}"] = float(value)
        for key, value in report.get("beyond_accuracy", {}).items():
            if value is not None and math.isfinite(value):
                props[f"{model}:{key}"] = float(value)
    for model, report in (result.get("baseline_reports") or {}).items():
        for metric in HEADLINE_PROPERTIES:
            value = report["metrics"]["all"].get(metric)
            if value is not None and math.isfinite(value):
                props[f"baseline:{model}:{metric}"] = float(value)
    for name, report in (result.get("baselines") or {}).items():
        for metric in HEADLINE_PROPERTIES:
            value = report["metrics"]["all"].get(metric)
            if name not in result["reports"] and value is not None and math.isfinite(value):
                props[f"{name}:{metric}"] = float(value)
    best = result.get("best_baseline")
    if best:
        props["best_baseline"] = best["describe"]
        if best.get("fallback_file"):
            props["fallback"] = best["fallback_file"]  # what to serve instead of the models
    return props


def _set_property(artifact, key: str, value) -> None:
    if isinstance(value, bool | int | np.integer):
        artifact.set_int_custom_property(key, int(value))
    elif isinstance(value, float | np.floating):
        artifact.set_float_custom_property(key, float(value))
    elif isinstance(value, str):
        artifact.set_string_custom_property(key, value)
    else:
        artifact.set_json_value_custom_property(key, value)


@component
def ModelEvaluator(  # noqa: N802 - TFX names components like classes
    examples: InputArtifact[standard_artifacts.Examples],
    item_catalog: InputArtifact[ItemCatalog],
    model: InputArtifact[standard_artifacts.Model],
    blessing: OutputArtifact[standard_artifacts.ModelBlessing],
    ranker_model: InputArtifact[standard_artifacts.Model] = None,
    baseline_model: InputArtifact[standard_artifacts.Model] = None,
    baseline_blessing: InputArtifact[standard_artifacts.ModelBlessing] = None,
    index: InputArtifact[RetrievalIndex] = None,
    index_evaluation: InputArtifact[standard_artifacts.ModelBlessing] = None,
    baseline_evaluation: InputArtifact[BaselineEvaluation] = None,
    ks: Parameter[str] = "10,50,100",
    guarded_metrics: Parameter[str] = "recall@100,ndcg@10",
    gated_models: Parameter[str] = "two_tower,two_tower+dcn,two_tower+dcn+pop",
    tolerance: Parameter[float] = 0.02,
    min_lift: Parameter[float] = 0.0,
    rerank_depth: Parameter[int] = 100,
    rerank_score: Parameter[str] = DEFAULT_RERANK_SCORE,
    rerank_weight: Parameter[float] = DEFAULT_RERANK_WEIGHT,
    popularity_weight: Parameter[float] = DEFAULT_POPULARITY_WEIGHT,
    full_pipeline_fn: Parameter[str] = "",
    baselines: Parameter[str] = DEFAULT_BASELINES,
    baseline_min_lift: Parameter[float] = 0.0,
    bootstrap_resamples: Parameter[int] = 1000,
    ann_k: Parameter[int] = 10,
    ann_queries: Parameter[int] = 200,
):
    """Evaluates the two-tower model (alone, with the DCN ranker, and through `full_pipeline_fn`)
    on the test split against popularity and the last blessed model, and blesses it or not.

    `guarded_metrics`: comma-separated [slice:]metric@K, e.g. "recall@100,warm:ndcg@10";
    `tolerance`: relative regression allowed vs the baseline; `min_lift`: relative lift over
    popularity required; `gated_models`: which evaluated models the gate applies to;
    `baselines`: which baselines to fit and score (popularity always); `baseline_min_lift`: relative
    NDCG@10 lift over the best baseline required (0 = not below it).
    `index_evaluation`: the IndexEvaluator's blessing, whose recall/latency frontier the report shows;
    without it `ann_queries` > 0 measures the frontier here.
    `baseline_model`/`baseline_blessing` come from a LatestBlessedModelStrategy resolver; the
    baseline's ranker is the `ranker_model` property of its blessing.
    """
    config = EvaluatorConfig(
        ks=ks,
        gate=GateConfig(guarded_metrics, tolerance, min_lift, gated_models, baseline_min_lift=baseline_min_lift),
        rerank_depth=rerank_depth,
        rerank_score=rerank_score,
        rerank_weight=rerank_weight,
        popularity_weight=popularity_weight,
        full_pipeline_fn=full_pipeline_fn,
        baselines=baselines,
        bootstrap_resamples=bootstrap_resamples,
        ann_k=ann_k,
        ann_queries=ann_queries,
    )
    baseline_ranker = None
    if baseline_blessing is not None and baseline_blessing.has_custom_property(RANKER_PROPERTY):
        baseline_ranker = baseline_blessing.get_string_custom_property(RANKER_PROPERTY) or None
    result = run_evaluation(
        examples.uri,
        item_catalog.uri,
        tower_dir(model.uri),
        blessing.uri,
        ranker_dir=tower_dir(ranker_model.uri) if ranker_model is not None else None,
        baseline_dir=tower_dir(baseline_model.uri) if baseline_model is not None else None,
        baseline_ranker_dir=tower_dir(baseline_ranker) if baseline_ranker else None,
        index_dir=index.uri if index is not None else None,
        config=config,
        index_evaluation_dir=index_evaluation.uri if index_evaluation is not None else None,
        baseline_evaluation_dir=baseline_evaluation.uri if baseline_evaluation is not None else None,
    )
    # TFX Evaluator conventions: LatestBlessedModelStrategy pairs blessings to models by current_model_id.
    blessing.set_string_custom_property("current_model", model.uri)
    blessing.set_int_custom_property("current_model_id", int(model.id))
    if ranker_model is not None:
        blessing.set_string_custom_property(RANKER_PROPERTY, ranker_model.uri)
        blessing.set_int_custom_property("ranker_model_id", int(ranker_model.id))
    if baseline_model is not None:
        blessing.set_string_custom_property("baseline_model", baseline_model.uri)
        blessing.set_int_custom_property("baseline_model_id", int(baseline_model.id))
    for key, value in blessing_properties(result).items():
        _set_property(blessing, key, value)


@component
def BaselineEvaluator(  # noqa: N802 - TFX names components like classes
    examples: InputArtifact[standard_artifacts.Examples],
    item_catalog: InputArtifact[ItemCatalog],
    evaluation: OutputArtifact[BaselineEvaluation],
    ks: Parameter[str] = "10,50,100",
    baselines: Parameter[str] = DEFAULT_BASELINES,
    guarded_metrics: Parameter[str] = "recall@100,ndcg@10",
):
    """The ModelEvaluator's baseline half, which needs no model: each baseline's settings chosen on the
    eval window, its test-window report and the best one's fallback lists (`write_baseline_evaluation`).
    It runs while the models train; the ModelEvaluator (`baseline_evaluation`) uses it when made with its
    own `ks` and `baselines`, and otherwise computes the same itself. `guarded_metrics` only as the
    ModelEvaluator's (its Ks must be among `ks`)."""
    config = EvaluatorConfig(ks=ks, gate=GateConfig(guarded_metrics), baselines=baselines)
    write_baseline_evaluation(OfflineData.from_artifacts(examples.uri, item_catalog.uri), config, evaluation.uri)
