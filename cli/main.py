"""The `towerflow` command line: the user's way in.

    towerflow data fetch --dataset ml-100k --data-dir data
    towerflow data synth --users 10000 --items 5000 --interactions 500000 --out data/synth
    towerflow run --data-dir data/ml-100k --output-dir runs/local

Every command ends with a short summary of what it produced and where; a bad
flag or input gives one clear line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

# The cli/ modules that register sub-commands, each with `add_commands(subparsers)`.
COMMAND_MODULES = ("evaluate_commands", "report_commands", "serving_commands", "lineage_commands")


def _fetch(args) -> None:
    from towerflow.pipeline import datasets

    result = datasets.fetch(args.dataset, args.data_dir)
    print(f"Dataset {args.dataset} ({result.format} format, from {result.source}) is in {result.path}")


def _synth(args) -> None:
    from towerflow.pipeline import synthetic

    config = synthetic.SynthConfig(users=args.users, items=args.items, interactions=args.interactions, seed=args.seed)
    summary = synthetic.generate(args.out, config)
    print(
        f"Wrote {summary.interactions:,} interactions of {summary.users:,} users on {summary.items:,} items "
        f"to {summary.path} in {summary.seconds:.1f}s ({summary.rows_per_second:,.0f} rows/s)"
    )


def _run(args) -> None:
    from towerflow.pipeline.config import IngestionConfig, PipelineConfig, default_beam_args
    from towerflow.pipeline.local_runner import run_local

    out = Path(args.output_dir).resolve()
    beam_args = default_beam_args(args.beam_workers)
    if args.beam_in_memory:
        beam_args = ["--direct_running_mode=in_memory"]
    beam_args += args.beam_arg or []
    config = PipelineConfig(
        data_dir=args.data_dir,
        pipeline_root=str(out / "pipeline_root"),
        metadata_path=str(out / "metadata.sqlite"),
        pipeline_name=args.pipeline_name,
        ingestion=IngestionConfig(
            dataset_format=args.format,
            split_strategy=args.split,
            train_fraction=args.train_fraction,
            eval_fraction=args.eval_fraction,
            leave_last_n=args.leave_last_n,
            history_length=args.history_length,
            max_bad_fraction=args.max_bad_fraction,
        ),
        schema_path=None if args.infer_schema else args.schema,
        beam_pipeline_args=beam_args,
        enable_cache=not args.no_cache,
        train_models=not args.no_train,
        serving_root=None if args.no_push else str(Path(args.serving_root or out / "serving").resolve()),
        two_tower={"epochs": args.epochs} if args.epochs else {},
        ranking={"epochs": args.epochs} if args.epochs else {},
        train_splits=tuple(args.train_splits) if args.train_splits else PipelineConfig.train_splits,
    )
    print(f"Running pipeline {config.pipeline_name!r} on {config.data_dir} -> {out}")
    summary = run_local(config)
    print(summary.format())


def build_parser() -> argparse.ArgumentParser:
    from towerflow.pipeline.config import DEFAULT_SCHEMA

    parser = argparse.ArgumentParser(prog="towerflow", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="get or make interaction logs").add_subparsers(dest="data_command")
    data.required = True
    fetch = data.add_parser("fetch", help="download a MovieLens dataset (offline fallback for ml-100k)")
    fetch.add_argument("--dataset", default="ml-100k")
    fetch.add_argument("--data-dir", default="data")
    fetch.set_defaults(func=_fetch)
    synth = data.add_parser("synth", help="write a synthetic dataset in the towerflow format")
    synth.add_argument("--users", type=int, default=10_000)
    synth.add_argument("--items", type=int, default=5_000)
    synth.add_argument("--interactions", type=int, default=500_000)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", default="data/synth")
    synth.set_defaults(func=_synth)

    run = commands.add_parser("run", help="run the pipeline locally (LocalDagRunner, SQLite MLMD)")
    run.add_argument("--data-dir", default="data/ml-100k")
    run.add_argument("--output-dir", default="runs/local", help="pipeline root and metadata.sqlite go here")
    run.add_argument("--pipeline-name", default="towerflow")
    run.add_argument("--format", default=None, help="dataset format (default: detected)")
    run.add_argument("--split", default="global_time", choices=["global_time", "leave_last_n"])
    run.add_argument("--train-fraction", type=float, default=0.8)
    run.add_argument("--eval-fraction", type=float, default=0.9)
    run.add_argument("--leave-last-n", type=int, default=1)
    run.add_argument("--history-length", type=int, default=20)
    run.add_argument("--max-bad-fraction", type=float, default=0.01)
    run.add_argument("--schema", default=str(DEFAULT_SCHEMA), help="schema to import (default: the checked-in one)")
    run.add_argument("--infer-schema", action="store_true", help="infer the schema with SchemaGen instead")
    run.add_argument("--beam-workers", type=int, default=None, help="DirectRunner processes (default: cores)")
    run.add_argument("--beam-in-memory", action="store_true", help="single-process DirectRunner")
    run.add_argument(
        "--beam-arg", action="append", help="extra Beam pipeline arg, e.g. --beam-arg=--runner=DataflowRunner"
    )
    run.add_argument("--no-cache", action="store_true", help="re-run every component")
    run.add_argument("--no-train", action="store_true", help="stop after validation (no Transform/Trainers)")
    run.add_argument("--serving-root", default=None, help="push blessed models here (default: <output-dir>/serving)")
    run.add_argument("--no-push", action="store_true", help="train and evaluate, but push nothing")
    run.add_argument("--epochs", type=int, default=None, help="override both models' epochs")
    run.add_argument(
        "--train-splits",
        nargs="+",
        choices=("train", "eval"),
        default=None,
        help="splits the Trainers fit on (default: train eval; 'train' keeps eval held out)",
    )
    run.set_defaults(func=_run)

    for name in COMMAND_MODULES:
        importlib.import_module(f"towerflow.cli.{name}").add_commands(commands)
    return parser


def _quiet_logs() -> None:
    """Keep the terminal for progress and summaries: library INFO chatter and Beam worker warnings go."""
    import logging
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # Beam's worker processes inherit this, so their import-time warnings go too.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger().setLevel(logging.ERROR)
    for name in ("apache_beam", "absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    _quiet_logs()
    args = build_parser().parse_args(argv)
    started = time.time()
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"towerflow {args.command}: error: {err}", file=sys.stderr)
        return 2
    print(f"({time.time() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
