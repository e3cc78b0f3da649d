"""The ModelEvaluator TFX component: offline metrics of the trained models and the blessing gate.

ModelEvaluator(examples, item_catalog, model[, ranker_model, baseline_model, baseline_blessing, index])
    -> blessing (standard ModelBlessing)

Runs the DESIGN.md protocol (components/evaluation/protocol.py) on the test split for
  popularity       train+eval counts, the floor every model must beat
  two_tower        retrieval alone: exact top-K over the catalog minus seen items
  two_tower+dcn    retrieval, then the DCN ranker re-orders the top `rerank_depth`
  full_pipeline    retrieval + ranking + re-ranking: the hook for the serving re-ranker; set
                   `full_pipeline_fn` to the dotted name of a factory
                   `fn(data, retrieval, ranker_dir, as_of) -> recommend(user_ids, k, exclude)`
Metrics: Recall/HitRate/NDCG/MAP at each K, sliced by all/warm/cold users, gender and age bucket;
coverage, Gini of exposure, average popularity and intra-list genre diversity at the largest K.

The baseline is the last blessed two-tower model (and the ranker recorded on its blessing), which
the pipeline resolves from MLMD with TFX's LatestBlessedModelStrategy; it is re-evaluated on this
run's test split so both are measured on the same users. The model is blessed only if, for every
gated model present, every guarded metric beats popularity by `min_lift` (value > popularity *
(1 + min_lift)) and does not fall more than `tolerance` (relative) below the baseline.

The blessing follows TFX's Evaluator conventions, so LatestBlessedModelStrategy and pushers read
it: custom properties `blessed` (1/0), `current_model` / `current_model_id` (the two-tower model),
`baseline_model` / `baseline_model_id`, plus `ranker_model`, `reason`, `failures` and the headline
metrics (`two_tower:recall@100`, ...); a BLESSED or NOT_BLESSED file; `model_evaluation.json`
(everything) and `model_evaluation.html` (the report, components/evaluation/report.py).

The report also carries the ANN recall-vs-latency frontier: a sweep of ScaNN query settings
(leaves searched x re-order pool) over the served index's embeddings when the IndexBuilder's
`index` is given, else over the model's catalog embeddings.

This module must not use `from __future__ import annotations`: TFX reads the component
signature's annotations at import time.
"""

import datetime
import importlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from towerflow.components.evaluation import metrics as M
from towerflow.components.evaluation import report as report_html
from towerflow.components.evaluation.offline import (
    DEFAULT_KS,
    DEFAULT_RERANK_SCORE,
    DEFAULT_RERANK_WEIGHT,
    OfflineData,
    RerankedRecommender,
    TwoTowerRecommender,
    evaluate_sliced,
    user_slicings,
)
from towerflow.components.evaluation.protocol import EvalReport, PopularityRecommender
from towerflow.components.index.component import RetrievalIndex, tower_dir
from towerflow.components.ingestion.component import ItemCatalog
from towerflow.models import features as F

EVALUATION_FILE = "model_evaluation.json"
REPORT_FILE = "model_evaluation.html"
BLESSED_FILE = "BLESSED"
NOT_BLESSED_FILE = "NOT_BLESSED"

POPULARITY = "popularity"
TWO_TOWER = "two_tower"
TWO_TOWER_DCN = "two_tower+dcn"
FULL_PIPELINE = "full_pipeline"
RANKER_PROPERTY = "ranker_model"  # URI of the ranker evaluated with the blessed two-tower

CURVE_KS = (1, 2, 5, 10, 20, 50, 100, 200, 500)
HEADLINE_PROPERTIES = ("recall@10", "recall@50", "recall@100", "ndcg@10", "hit_rate@10", "map@10")

# factory(data, retrieval, ranker_dir, as_of) -> recommend(user_ids, k, exclude)
FullPipelineFactory = Callable[[OfflineData, TwoTowerRecommender, str, int], Callable]


# --------------------------------------------------------------------------- the gate


def parse_metric(spec: str) -> tuple[str, str]:
    """ "recall@100" -> ("all", "recall@100"); "warm:ndcg@10" -> ("warm", "ndcg@10")."""
    slice_name, _, metric = spec.strip().rpartition(":")
    name, sep, k = metric.partition("@")
    if not sep or name not in M.METRIC_NAMES or not k.isdigit() or int(k) < 1:
        raise ValueError(
            f"bad guarded metric {spec!r}: expected [slice:]name@K with name in {M.METRIC_NAMES}, e.g. 'recall@100'"
        )
    return slice_name or "all", f"{name}@{int(k)}"


def _split(text: str | Sequence[str]) -> tuple[str, ...]:
    items = text.split(",") if isinstance(text, str) else text
    return tuple(s.strip() for s in items if s and s.strip())


@dataclass
class GateConfig:
    """When a model is blessed. Relative `tolerance` vs the baseline; `min_lift` over popularity."""

    guarded_metrics: tuple[str, ...] = ("recall@100", "ndcg@10")
    tolerance: float = 0.02
    min_lift: float = 0.0
    gated_models: tuple[str, ...] = (TWO_TOWER, TWO_TOWER_DCN)

    def __post_init__(self):
        self.guarded_metrics = _split(self.guarded_metrics)
        self.gated_models = _split(self.gated_models)
        if not self.guarded_metrics:
            raise ValueError("guarded_metrics must name at least one metric, e.g. 'recall@100,ndcg@10'")
        for spec in self.guarded_metrics:
            parse_metric(spec)
        if not self.gated_models:
            raise ValueError(f"gated_models must name at least one of {TWO_TOWER}, {TWO_TOWER_DCN}, {FULL_PIPELINE}")
        if POPULARITY in self.gated_models:
            raise ValueError("popularity is the reference, it cannot be gated")
        if not (math.isfinite(self.tolerance) and 0.0 <= self.tolerance < 1.0):
            raise ValueError(f"tolerance must be in [0, 1), got {self.tolerance}")
        if not (math.isfinite(self.min_lift) and self.min_lift > -1.0):
            raise ValueError(f"min_lift must be > -1, got {self.min_lift}")

    def describe(self) -> str:
        return (
            f"Blessed only if, for each of {', '.join(self.gated_models)} that was evaluated, every guarded metric "
            f"({', '.join(self.guarded_metrics)}) is above popularity x (1 + {self.min_lift:g}) and at least "
            f"baseline x (1 - {self.tolerance:g})."
        )


def _value(report: Mapping, spec: str) -> float:
    slice_name, metric = parse_metric(spec)
    value = report["metrics"].get(slice_name, {}).get(metric)
    return float("nan") if value is None else float(value)


def decide_blessing(
    reports: Mapping[str, Mapping],
    baseline_reports: Mapping[str, Mapping] | None,
    gate: GateConfig,
) -> tuple[bool, list[str], list[dict]]:
    """(blessed, reasons, checks) from report dicts (`EvalReport.to_dict()`), keyed by model name.

    `reports` must hold "popularity". A missing or NaN value fails its check.
    """
    if POPULARITY not in reports:
        raise ValueError("the popularity report is required: it is the floor every model must beat")
    checks: list[dict] = []
    gated = [m for m in gate.gated_models if m in reports]
    for model in gated:
        for spec in gate.guarded_metrics:
            value = _value(reports[model], spec)
            pop = _value(reports[POPULARITY], spec)
            bound = pop * (1 + gate.min_lift)
            checks.append(
                dict(
                    model=model,
                    metric=spec,
                    against=POPULARITY,
                    value=value,
                    reference=pop,
                    op=">",
                    bound=bound,
                    passed=bool(value > bound),
                )
            )
            if baseline_reports and model in baseline_reports:
                base = _value(baseline_reports[model], spec)
                bound = base * (1 - gate.tolerance)
                checks.append(
                    dict(
                        model=model,
                        metric=spec,
                        against="baseline",
                        value=value,
                        reference=base,
                        op=">=",
                        bound=bound,
                        passed=bool(value >= bound),  # NaN compares False
                    )
                )
    reasons = []
    if not gated:
        reasons.append(f"none of the gated models ({', '.join(gate.gated_models)}) was evaluated")
    for c in checks:
        if not c["passed"]:
            if c["against"] == POPULARITY:
                reasons.append(
                    f"{c['model']} {c['metric']} = {c['value']:.4f} does not beat popularity {c['reference']:.4f} "
                    f"by the required lift {gate.min_lift:g} (needs > {c['bound']:.4f})"
                )
            else:
                reasons.append(
                    f"{c['model']} {c['metric']} = {c['value']:.4f} regresses more than {gate.tolerance:.1%} "
                    f"vs the last blessed model's {c['reference']:.4f} (needs >= {c['bound']:.4f})"
                )
    blessed = not reasons
    if blessed:
        compared = "and the last blessed model" if baseline_reports else "(no blessed baseline yet)"
        reasons.append(
            f"{', '.join(gated)} beat popularity {compared} on {', '.join(gate.guarded_metrics)} "
            f"(tolerance {gate.tolerance:.1%}, min lift {gate.min_lift:g})"
        )
    return blessed, reasons, checks


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


def evaluate_stages(
    data: OfflineData,
    two_tower_dir: str,
    ranker_dir: str | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    rerank_depth: int = 100,
    rerank_score: str = DEFAULT_RERANK_SCORE,
    full_pipeline: FullPipelineFactory | None = None,
    include_popularity: bool = True,
    rerank_weight: float = DEFAULT_RERANK_WEIGHT,
) -> tuple[dict[str, EvalReport], TwoTowerRecommender]:
    """Reports of popularity, two_tower, two_tower+dcn (with a ranker) and full_pipeline (with a
    factory), sliced by all/warm/cold, gender and age bucket; also returns the retrieval model."""
    eval_set = data.eval_set()
    as_of = int(np.ceil(eval_set.cutoff))
    genres = {item: g for item, g in data.catalog[F.ITEM_GENRES].items()}
    slicings = user_slicings(data.users)
    eval_ks = curve_ks(ks, len(eval_set.catalog))

    def run(recommend) -> EvalReport:
        return evaluate_sliced(recommend, eval_set, eval_ks, item_genres=genres, slicings=slicings)

    reports: dict[str, EvalReport] = {}
    if include_popularity:
        train_eval = data.frame[data.frame["split"] != "test"]
        reports[POPULARITY] = run(PopularityRecommender(train_eval, catalog=eval_set.catalog))
    retrieval = TwoTowerRecommender(two_tower_dir, data, as_of)
    reports[TWO_TOWER] = run(retrieval)
    if ranker_dir:
        ranked = RerankedRecommender(
            retrieval, ranker_dir, data, as_of, depth=rerank_depth, score=rerank_score, weight=rerank_weight
        )
        reports[TWO_TOWER_DCN] = run(ranked)
    if full_pipeline is not None:
        reports[FULL_PIPELINE] = run(full_pipeline(data, retrieval, ranker_dir, as_of))
    return reports, retrieval


# --------------------------------------------------------------------------- ANN sweep


def _grid(values: Sequence[float], upper: int) -> list[int]:
    return sorted({max(1, min(upper, int(math.ceil(v)))) for v in values})


def ann_frontier(
    ids: Sequence[str],
    embeddings: np.ndarray,
    queries: np.ndarray,
    k: int = 10,
    latency_queries: int = 100,
    served=None,
) -> dict:
    """Recall@k vs single-query latency of ScaNN (tree + AH + re-ordering) over a grid of
    leaves searched x re-order pool, all from one index built with the search-time maxima.

    `served` (a ScannIndex, e.g. the IndexBuilder's) adds its own operating point on its own
    embeddings. `frontier` lists the indices of the Pareto-optimal points.
    """
    from towerflow.components.index.scann_index import (
        TREE_AH,
        ScannIndex,
        ScannParams,
        brute_force_top_k,
        latency_ms,
        numpy_single_query,
        recall_at_k,
    )

    embeddings = np.asarray(embeddings, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.float32)
    n = len(ids)
    k = max(1, min(k, n))
    num_leaves = max(2, min(round(math.sqrt(n)), n // 10 or 2))
    leaves_grid = _grid(
        [1, 2, num_leaves * 0.05, num_leaves * 0.1, num_leaves * 0.25, num_leaves * 0.5, num_leaves], num_leaves
    )
    reorder_grid = _grid([k, 2.5 * k, 5 * k, 10 * k, 25 * k], n)
    params = ScannParams(
        mode=TREE_AH,
        num_neighbors=k,
        num_leaves=num_leaves,
        num_leaves_to_search=num_leaves,
        training_sample_size=n,
        reorder_num_neighbors=max(reorder_grid),
    )
    index = ScannIndex.build(list(ids), embeddings, params)
    exact, _ = brute_force_top_k(queries, embeddings, k)
    sample = queries[:latency_queries]
    points = []
    for leaves in leaves_grid:
        for pool in reorder_grid:
            approx, _ = index.search(queries, k, leaves_to_search=leaves, pre_reorder_num_neighbors=pool)

            def one(q, leaves=leaves, pool=pool):
                return index.search_one(q, k, leaves_to_search=leaves, pre_reorder_num_neighbors=pool)

            lat = latency_ms(one, sample)
            points.append(
                dict(
                    leaves_to_search=leaves,
                    reorder=pool,
                    recall=recall_at_k(approx, exact, k),
                    p50_ms=lat["p50"],
                    p99_ms=lat["p99"],
                )
            )
    brute = latency_ms(numpy_single_query(embeddings, k), sample)
    frontier, best = [], -1.0
    for i in sorted(range(len(points)), key=lambda i: (points[i]["p50_ms"], -points[i]["recall"])):
        if points[i]["recall"] > best:
            frontier.append(i)
            best = points[i]["recall"]
    result = dict(
        k=k,
        num_items=n,
        num_queries=len(queries),
        num_leaves=num_leaves,
        points=points,
        frontier=frontier,
        brute_force=dict(p50_ms=brute["p50"], p99_ms=brute["p99"]),
        served=None,
    )
    if served is not None:
        served_exact, _ = served.exact(queries, k)
        served_approx, _ = served.search(queries, k)
        lat = latency_ms(lambda q: served.search_one(q, k), sample)
        result["served"] = dict(
            recall=recall_at_k(served_approx, served_exact, k),
            p50_ms=lat["p50"],
            p99_ms=lat["p99"],
            mode=served.params.mode,
            params=served.params.to_dict(),
        )
    return result


# --------------------------------------------------------------------------- the whole evaluation


@dataclass
class EvaluatorConfig:
    """Every ModelEvaluator setting; the component's parameters map onto these fields."""

    ks: tuple[int, ...] = DEFAULT_KS
    gate: GateConfig = field(default_factory=GateConfig)
    rerank_depth: int = 100
    rerank_score: str = DEFAULT_RERANK_SCORE
    rerank_weight: float = DEFAULT_RERANK_WEIGHT
    full_pipeline_fn: str = ""
    ann_k: int = 10
    ann_queries: int = 200  # 0 = no ANN sweep
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.ks, str):
            try:
                self.ks = tuple(int(k) for k in _split(self.ks))
            except ValueError:
                raise ValueError(f"ks must be comma-separated integers, e.g. '10,50,100', got {self.ks!r}") from None
        self.ks = tuple(sorted({M.check_k(int(k)) for k in self.ks}))
        if not self.ks:
            raise ValueError("ks must not be empty")
        for spec in self.gate.guarded_metrics:
            k = int(parse_metric(spec)[1].split("@")[1])
            if k not in self.ks:
                raise ValueError(f"guarded metric {spec!r} uses K={k}, which is not among ks {self.ks}")
        if self.rerank_depth < 1:
            raise ValueError(f"rerank_depth must be >= 1, got {self.rerank_depth}")
        if not self.rerank_weight >= 0:
            raise ValueError(f"rerank_weight must be >= 0, got {self.rerank_weight}")
        if self.ann_k < 1 or self.ann_queries < 0:
            raise ValueError(f"need ann_k >= 1 and ann_queries >= 0, got {self.ann_k}, {self.ann_queries}")


def _to_dicts(reports: Mapping[str, EvalReport]) -> dict[str, dict]:
    return {name: r.to_dict() for name, r in reports.items()}


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
) -> dict:
    """Everything ModelEvaluator does except recording MLMD properties; returns the result dict
    (also written to `<output_dir>/model_evaluation.json`, with the HTML report next to it)."""
    config = config or EvaluatorConfig()
    data = data or OfflineData.from_artifacts(examples_uri, catalog_uri)
    factory = load_factory(config.full_pipeline_fn) if config.full_pipeline_fn else None
    reports, retrieval = evaluate_stages(
        data,
        model_dir,
        ranker_dir,
        config.ks,
        config.rerank_depth,
        config.rerank_score,
        factory,
        rerank_weight=config.rerank_weight,
    )
    baseline_reports = {}
    if baseline_dir:
        baseline_reports, _ = evaluate_stages(
            data,
            baseline_dir,
            baseline_ranker_dir,
            config.ks,
            config.rerank_depth,
            config.rerank_score,
            factory,
            include_popularity=False,
            rerank_weight=config.rerank_weight,
        )
    result_reports, result_baseline = _to_dicts(reports), _to_dicts(baseline_reports)
    blessed, reasons, checks = decide_blessing(result_reports, result_baseline or None, config.gate)

    ann = None
    if config.ann_queries:
        eval_set = data.eval_set()
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

    eval_set = data.eval_set()
    result = {
        "blessed": blessed,
        "reasons": reasons,
        "checks": checks,
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
        "curve_ks": list(curve_ks(config.ks, len(eval_set.catalog))),
        "reports": result_reports,
        "baseline_reports": result_baseline,
        "ann": ann,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    write_outputs(result, output_dir)
    return result


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
    ks: Parameter[str] = "10,50,100",
    guarded_metrics: Parameter[str] = "recall@100,ndcg@10",
    gated_models: Parameter[str] = "two_tower,two_tower+dcn",
    tolerance: Parameter[float] = 0.02,
    min_lift: Parameter[float] = 0.0,
    rerank_depth: Parameter[int] = 100,
    rerank_score: Parameter[str] = DEFAULT_RERANK_SCORE,
    rerank_weight: Parameter[float] = DEFAULT_RERANK_WEIGHT,
    full_pipeline_fn: Parameter[str] = "",
    ann_k: Parameter[int] = 10,
    ann_queries: Parameter[int] = 200,
):
    """Evaluates the two-tower model (alone, with the DCN ranker, and through `full_pipeline_fn`)
    on the test split against popularity and the last blessed model, and blesses it or not.

    `guarded_metrics`: comma-separated [slice:]metric@K, e.g. "recall@100,warm:ndcg@10";
    `tolerance`: relative regression allowed vs the baseline; `min_lift`: relative lift over
    popularity required; `gated_models`: which evaluated models the gate applies to.
    `baseline_model`/`baseline_blessing` come from a LatestBlessedModelStrategy resolver; the
    baseline's ranker is the `ranker_model` property of its blessing.
    """
    config = EvaluatorConfig(
        ks=ks,
        gate=GateConfig(guarded_metrics, tolerance, min_lift, gated_models),
        rerank_depth=rerank_depth,
        rerank_score=rerank_score,
        rerank_weight=rerank_weight,
        full_pipeline_fn=full_pipeline_fn,
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
