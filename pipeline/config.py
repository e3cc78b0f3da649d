"""Typed configuration of a towerflow pipeline run: one place where defaults live."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from towerflow.components.ingestion.splits import SPLIT_STRATEGIES

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCHEMA = REPO_ROOT / "schemas" / "schema.pbtxt"


def default_beam_args(workers: int | None = None) -> list[str]:
    """DirectRunner in multi-processing mode, one worker per core."""
    workers = workers or os.cpu_count() or 1
    return ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]


@dataclass
class IngestionConfig:
    """How raw logs become examples. See components/ingestion/beam_ingest.py."""

    dataset_format: str | None = None  # None: detected from the files
    split_strategy: str = "global_time"
    train_fraction: float = 0.8
    eval_fraction: float = 0.9
    leave_last_n: int = 1
    history_length: int = 20
    max_bad_fraction: float = 0.01

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
class PipelineConfig:
    """Everything a run needs; runners resolve paths, create_pipeline takes this."""

    data_dir: str
    pipeline_root: str
    metadata_path: str
    pipeline_name: str = "towerflow"
    ingestion: IngestionConfig = field(default_factory=IngestionConfig)
    schema_path: str | None = str(DEFAULT_SCHEMA)  # None or missing file: infer with SchemaGen
    beam_pipeline_args: list[str] = field(default_factory=default_beam_args)
    enable_cache: bool = True
    # Transform and the two Trainers; off gives the data-only pipeline.
    train_models: bool = True
    # TwoTowerConfig / RankingConfig fields overriding their defaults (models/two_tower.py, models/ranking.py).
    two_tower: dict = field(default_factory=dict)
    ranking: dict = field(default_factory=dict)
    seed: int = 0
    # The splits both Trainers fit on. Settings are chosen on the eval window with models fit on
    # train only (benchmarks/model_quality.py --window eval, --tune-weight); the final models are
    # then fit on train+eval, all the data before the test cut-off (on ml-100k: two-tower NDCG@10
    # 0.339 -> 0.351, benchmarks/results/model_quality.md). ("train",) keeps eval held out.
    train_splits: tuple[str, ...] = ("train", "eval")
    # IndexBuilder / IndexEvaluator parameters overriding their defaults (components/index/component.py).
    index: dict = field(default_factory=dict)
    # Where blessed models are pushed in TF Serving's layout; None: no push.
    serving_root: str | None = None

    def __post_init__(self):
        self.train_splits = tuple(self.train_splits)
        if "train" not in self.train_splits or not set(self.train_splits) <= {"train", "eval"}:
            raise ValueError(f"train_splits must be ('train',) or ('train', 'eval'), got {self.train_splits!r}")
        if not Path(self.data_dir).is_dir():
            raise ValueError(f"data_dir {self.data_dir!r} is not a directory; run `towerflow data fetch` first")
        if not self.pipeline_name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"pipeline_name must be alphanumeric with - or _, got {self.pipeline_name!r}")


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
