"""Typed configuration of a towerflow pipeline run: one place where defaults live."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from towerflow.components.ingestion import readers
from towerflow.components.ingestion.component import DEFAULT_MAX_BAD_FRACTION
from towerflow.components.ingestion.splits import (
    DEFAULT_EVAL_FRACTION,
    DEFAULT_LEAVE_LAST_N,
    DEFAULT_TRAIN_FRACTION,
    GLOBAL_TIME,
    SPLIT_STRATEGIES,
)
from towerflow.models.features import DEFAULT_HISTORY_LENGTH
from towerflow.models.vocabulary import VocabularyLimits

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCHEMA = REPO_ROOT / "schemas" / "schema.pbtxt"
DEFAULT_DATA_DIR = "data/ml-100k"


def default_beam_args(workers: int | None = None) -> list[str]:
    """DirectRunner in multi-processing mode, one worker per core."""
    workers = workers or os.cpu_count() or 1
    return ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]


@dataclass
class IngestionConfig:
    """How raw logs become examples. See components/ingestion/beam_ingest.py."""

    dataset_format: str | None = None  # None: detected from the files
    split_strategy: str = GLOBAL_TIME
    train_fraction: float = DEFAULT_TRAIN_FRACTION
    eval_fraction: float = DEFAULT_EVAL_FRACTION
    leave_last_n: int = DEFAULT_LEAVE_LAST_N
    history_length: int = DEFAULT_HISTORY_LENGTH
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION

    def __post_init__(self):
        if self.split_strategy not in SPLIT_STRATEGIES:
            raise ValueError(f"split_strategy must be one of {SPLIT_STRATEGIES}, got {self.split_strategy!r}")
        if not 0.0 < self.train_fraction <= self.eval_fraction <= 1.0:
            raise ValueError(
                f"need 0 < train_fraction <= eval_fraction <= 1, got {self.train_fraction}, {self.eval_fraction}"
            )
        if self.leave_last_n < 1:
            raise ValueError(f"leave_last_n must be >= 1, got {self.leave_last_n}")
        if self.history_length < 1:
            raise ValueError(f"history_length must be >= 1, got {self.history_length}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")


@dataclass
class StatisticsConfig:
    """StatisticsGen's TFDV options (ExampleValidator checks the statistics they give).

    Large data is summarised from a uniform sample: with more than `sample_above_rows` raw
    interactions, TFDV computes the statistics of `sample_rate` of the examples. TFDV samples after
    decoding, so sampling saves the statistics' own work, not the reading (benchmarks/results/
    pipeline_scaling.md: 59 -> 44 us per example at 0.1, 39 us with the sketch, no anomaly changed).
    The default threshold keeps ml-100k's statistics exact; ml-1m and larger are sampled.
    """

    sample_rate: float = 0.1
    sample_above_rows: int = 500_000
    # TFDV's sketch-based top-k and unique counts (Misra-Gries, KMV) instead of exact ones, at every size.
    sketch_top_k: bool = True
    # Transform's own pre- and post-transform TFDV statistics: two more statistics passes (over the
    # analysed and all transformed splits) that nothing in the pipeline reads, so off by default.
    transform_statistics: bool = False

    def __post_init__(self):
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(f"statistics sample_rate must be in (0, 1], got {self.sample_rate}")
        if self.sample_above_rows < 0:
            raise ValueError(f"statistics sample_above_rows must be >= 0, got {self.sample_above_rows}")

    def stats_options(self, rows: int) -> dict:
        """Keyword arguments of `tfdv.StatsOptions` for a dataset of `rows` raw interactions."""
        options: dict = {"use_sketch_based_topk_uniques": self.sketch_top_k}
        if rows > self.sample_above_rows and self.sample_rate < 1.0:
            options["sample_rate"] = self.sample_rate
        return options


@dataclass
class _ComponentParameters:
    """Settings of one custom component; None leaves the component's own default (its signature is the
    one place a default lives), so only what the user set becomes a parameter."""

    def parameters(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        return {k: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for k, v in values.items()}


@dataclass
class IndexBuilderConfig(_ComponentParameters):
    """IndexBuilder settings (components/index/component.py)."""

    num_neighbors: int | None = None
    scann_overrides: dict | None = None  # ScaNN builder settings by name, e.g. {"num_leaves": 200}
    brute_force_below: int | None = None
    tree_from: int | None = None
    leaves_to_search_fraction: float | None = None
    batch_size: int | None = None


@dataclass
class IndexEvaluatorConfig(_ComponentParameters):
    """IndexEvaluator settings: the ANN blessing thresholds and how they are measured."""

    split: str | None = None
    num_queries: int | None = None
    latency_queries: int | None = None
    ks: str | None = None
    min_recall_at_10: float | None = None
    min_recall_at_100: float | None = None
    max_p99_latency_ms: float | None = None
    seed: int | None = None
    frontier_queries: int | None = None


@dataclass
class ModelEvaluatorConfig(_ComponentParameters):
    """ModelEvaluator settings (components/evaluation/model_evaluator.py): the gate and what it compares."""

    ks: str | None = None
    guarded_metrics: str | None = None
    gated_models: str | None = None
    tolerance: float | None = None
    min_lift: float | None = None
    rerank_depth: int | None = None
    rerank_weight: float | None = None
    baselines: str | None = None
    # NDCG@10 must reach the best baseline's x (1 + this); the component's default, 0, is "not below it".
    baseline_min_lift: float | None = None
    bootstrap_resamples: int | None = None


@dataclass
class PipelineConfig:
    """Everything a run needs; runners resolve paths, create_pipeline takes this."""

    data_dir: str
    pipeline_root: str
    metadata_path: str
    pipeline_name: str = "towerflow"
    ingestion: IngestionConfig = field(default_factory=IngestionConfig)
    schema_path: str | None = str(DEFAULT_SCHEMA)  # None or missing file: infer with SchemaGen
    statistics: StatisticsConfig = field(default_factory=StatisticsConfig)
    beam_pipeline_args: list[str] = field(default_factory=default_beam_args)
    enable_cache: bool = True
    # Transform and the two Trainers; off gives the data-only pipeline.
    train_models: bool = True
    # Bounds on Transform's id vocabularies (models/vocabulary.py); the defaults bound nothing.
    vocabulary: VocabularyLimits = field(default_factory=VocabularyLimits)
    # TwoTowerConfig / RankingConfig fields overriding their defaults (models/two_tower.py, models/ranking.py).
    two_tower: dict = field(default_factory=dict)
    ranking: dict = field(default_factory=dict)
    seed: int = 0
    # Both Trainers run min(epochs, max(1, example_budget // training examples)) epochs: fewer passes
    # over larger data, at least one (models/input_pipeline.budgeted_epochs). ml-100k's ~90k training
    # examples keep their 5 epochs; 1M interactions get 2, 20M get 1. None: always the configured epochs.
    example_budget: int | None = 2_000_000
    # The splits both Trainers fit on. Settings are chosen on the eval window with models fit on
    # train only (benchmarks/model_quality.py --window eval, --tune-weight); the final models are
    # then fit on train+eval, all the data before the test cut-off (on ml-100k: two-tower NDCG@10
    # 0.339 -> 0.351, benchmarks/results/model_quality.md). ("train",) keeps eval held out.
    train_splits: tuple[str, ...] = ("train", "eval")
    index_builder: IndexBuilderConfig = field(default_factory=IndexBuilderConfig)
    index_evaluator: IndexEvaluatorConfig = field(default_factory=IndexEvaluatorConfig)
    model_evaluator: ModelEvaluatorConfig = field(default_factory=ModelEvaluatorConfig)
    # Where blessed models are pushed in TF Serving's layout; None: no push.
    serving_root: str | None = None
    # With more raw interactions than this, the run saves memory for a little time: the nodes whose
    # memory grows with the data each run in a child process of their own (pipeline/local_runner.py)
    # and StatisticsGen runs its Beam pipeline in its own process, without worker processes.
    memory_saving_above_rows: int = 5_000_000

    def __post_init__(self):
        self.train_splits = tuple(self.train_splits)
        if "train" not in self.train_splits or not set(self.train_splits) <= {"train", "eval"}:
            raise ValueError(f"train_splits must be ('train',) or ('train', 'eval'), got {self.train_splits!r}")
        if not Path(self.data_dir).is_dir():
            raise ValueError(f"data_dir {self.data_dir!r} is not a directory; run `towerflow data fetch` first")
        if not self.pipeline_name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"pipeline_name must be alphanumeric with - or _, got {self.pipeline_name!r}")
        if self.memory_saving_above_rows < 0:
            raise ValueError(f"memory_saving_above_rows must be >= 0, got {self.memory_saving_above_rows}")

    @classmethod
    def from_args(cls, args, **runner_fields) -> PipelineConfig:
        """The config of `towerflow run` and `towerflow compile`: the one place where flags become settings.

        `args` holds the shared pipeline flags (cli/pipeline_flags.py), each None when not given, which
        leaves the default defined on the dataclasses above. `runner_fields` are what only the runner
        knows: pipeline_root, metadata_path, beam_pipeline_args, serving_root.
        """

        def given(name: str):
            return getattr(args, name, None)

        ingestion = {
            name: given(flag)
            for name, flag in (
                ("dataset_format", "format"),
                ("split_strategy", "split"),
                ("train_fraction", "train_fraction"),
                ("eval_fraction", "eval_fraction"),
                ("leave_last_n", "leave_last_n"),
                ("history_length", "history_length"),
                ("max_bad_fraction", "max_bad_fraction"),
            )
            if given(flag) is not None
        }
        statistics = {
            name: given(flag)
            for name, flag in (("sample_rate", "stats_sample_rate"), ("sample_above_rows", "stats_sample_above"))
            if given(flag) is not None
        }
        if given("no_stats_sketch"):
            statistics["sketch_top_k"] = False
        if given("transform_statistics"):
            statistics["transform_statistics"] = True
        vocabulary = {
            name: given(name)
            for name in ("user_top_k", "user_min_count", "item_top_k", "item_min_count", "title_token_top_k")
            if given(name) is not None
        }
        values: dict = {
            "ingestion": IngestionConfig(**ingestion),
            "statistics": StatisticsConfig(**statistics),
            "vocabulary": VocabularyLimits(**vocabulary),
            "data_dir": given("data_dir") or DEFAULT_DATA_DIR,
        }
        if given("pipeline_name"):
            values["pipeline_name"] = given("pipeline_name")
        if given("infer_schema"):
            values["schema_path"] = None
        elif given("schema"):
            values["schema_path"] = given("schema")
        if given("no_cache"):
            values["enable_cache"] = False
        if given("no_train"):
            values["train_models"] = False
        if given("epochs"):
            values["two_tower"] = {"epochs": given("epochs")}
            values["ranking"] = {"epochs": given("epochs")}
        if given("train_splits"):
            values["train_splits"] = tuple(given("train_splits"))
        if given("seed") is not None:
            values["seed"] = given("seed")
        if given("example_budget") is not None:
            values["example_budget"] = given("example_budget") or None
        if given("memory_saving_above") is not None:
            values["memory_saving_above_rows"] = given("memory_saving_above")
        return cls(**values, **runner_fields)

    def raw_interactions(self) -> int:
        """Lines of the raw interactions table: the data's size, known before ingestion runs."""
        fmt = self.ingestion.dataset_format or readers.detect_format(self.data_dir)
        return readers.count_lines(self.data_dir, fmt)

    @property
    def memory_saving(self) -> bool:
        return self.raw_interactions() > self.memory_saving_above_rows

    def settings(self) -> dict:
        """Every setting that decides what the pipeline computes (not where it runs), for comparisons."""
        runner_only = {
            "pipeline_root",
            "metadata_path",
            "beam_pipeline_args",
            "serving_root",
            "data_dir",
            "memory_saving_above_rows",
        }
        return {k: v for k, v in asdict(self).items() if k not in runner_only}


def code_fingerprint(*packages: str) -> str:
    """Hash of the Python sources of `packages` (dirs under the repo root).

    TFX keys its cache on component parameters, and module code referenced by
    dotted strings (run_fn, preprocessing_fn) is not one of them; passing this
    as a parameter makes a code change re-run the steps that use that code.
    """
    digest = hashlib.blake2b(digest_size=8)
    for package in packages:
        root = REPO_ROOT / package
        for file in [root] if root.is_file() else sorted(root.rglob("*.py")):
            digest.update(str(file.relative_to(REPO_ROOT)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def fingerprint_dir(path: str | os.PathLike) -> str:
    """Content hash of every file under `path` (names and bytes), for cache keys and lineage."""
    digest = hashlib.blake2b(digest_size=16)
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "MANIFEST.json"):
        digest.update(str(file.relative_to(root)).encode())
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
