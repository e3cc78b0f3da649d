"""`towerflow run` and `towerflow compile`: the pipeline run locally or compiled for Kubeflow / Vertex AI.

    towerflow run --data-dir data/ml-100k --output-dir runs/local
    towerflow compile --target kubeflow --image gcr.io/p/towerflow:1 --pipeline-root gs://b/root \\
        --data-dir data/ml-100k --data-uri gs://b/data/ml-100k --output build/towerflow_kfp.json

Both take the same pipeline flags (`add_pipeline_flags`), every one defaulting
to None, and build their config with the same `PipelineConfig.from_args`, so a
Kubeflow spec expresses exactly what a local run does; only where it runs
(roots, metadata, Beam runner, push target) differs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_pipeline_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that decide what the pipeline computes. None everywhere: the defaults live in pipeline/config.py."""
    group = parser.add_argument_group("pipeline settings (defaults: pipeline/config.py)")
    group.add_argument("--data-dir", default=None, help="raw logs (default: data/ml-100k)")
    group.add_argument("--pipeline-name", default=None, help="default: towerflow")
    group.add_argument("--format", default=None, help="dataset format (default: detected from the files)")
    group.add_argument("--split", default=None, choices=["global_time", "leave_last_n"], help="default: global_time")
    group.add_argument("--train-fraction", type=float, default=None, help="global_time train quantile (default 0.8)")
    group.add_argument("--eval-fraction", type=float, default=None, help="global_time eval quantile (default 0.9)")
    group.add_argument("--leave-last-n", type=int, default=None, help="leave_last_n: test rows per user (default 1)")
    group.add_argument("--history-length", type=int, default=None, help="history items per example (default 20)")
    group.add_argument("--max-bad-fraction", type=float, default=None, help="malformed rows tolerated (default 0.01)")
    group.add_argument(
        "--stats-sample-rate", type=float, default=None, help="StatisticsGen's sample of large data (default 0.1)"
    )
    group.add_argument(
        "--stats-sample-above",
        type=int,
        default=None,
        help="sample statistics above this many raw interactions (default 500000; 0: always)",
    )
    group.add_argument(
        "--no-stats-sketch", action="store_true", default=None, help="exact top-k/unique statistics (not TFDV's sketch)"
    )
    group.add_argument(
        "--transform-statistics",
        action="store_true",
        default=None,
        help="Transform also computes pre-/post-transform statistics (default off: nothing reads them)",
    )
    group.add_argument("--user-top-k", type=int, default=None, help="keep the k most frequent user ids (default all)")
    group.add_argument("--user-min-count", type=int, default=None, help="drop user ids seen fewer times (default 1)")
    group.add_argument("--item-top-k", type=int, default=None, help="keep the k most frequent item ids (default all)")
    group.add_argument("--item-min-count", type=int, default=None, help="drop item ids seen fewer times (default 1)")
    group.add_argument("--title-token-top-k", type=int, default=None, help="title token vocabulary size (default all)")
    group.add_argument("--schema", default=None, help="schema to import (default: the checked-in one)")
    group.add_argument("--infer-schema", action="store_true", default=None, help="infer the schema with SchemaGen")
    group.add_argument("--no-cache", action="store_true", default=None, help="re-run every component")
    group.add_argument("--no-train", action="store_true", default=None, help="stop after validation")
    group.add_argument("--epochs", type=int, default=None, help="override both models' epochs")
    group.add_argument("--seed", type=int, default=None, help="the Trainers' random seed (default 0)")
    group.add_argument(
        "--example-budget",
        type=int,
        default=None,
        help="Trainers run min(epochs, max(1, budget // training examples)) epochs (default 2000000; 0: no budget)",
    )
    group.add_argument(
        "--memory-saving-above",
        type=int,
        default=None,
        help="above this many raw interactions, run the memory-heavy components in processes of their own "
        "(default 5000000)",
    )
    group.add_argument(
        "--train-splits",
        nargs="+",
        choices=("train", "eval"),
        default=None,
        help="splits the Trainers fit on (default: train eval; 'train' keeps eval held out)",
    )
    group.add_argument(
        "--beam-arg",
        action="append",
        default=None,
        help="Beam arg for every Beam component, e.g. --beam-arg=--runner=DataflowRunner (repeat)",
    )


def run_config(args):
    """`towerflow run`'s PipelineConfig: local roots under --output-dir, the multi-processing DirectRunner."""
    from towerflow.pipeline.config import PipelineConfig, default_beam_args

    out = Path(args.output_dir).resolve()
    beam_args = ["--direct_running_mode=in_memory"] if args.beam_in_memory else default_beam_args(args.beam_workers)
    return PipelineConfig.from_args(
        args,
        pipeline_root=str(out / "pipeline_root"),
        metadata_path=str(out / "metadata.sqlite"),
        beam_pipeline_args=beam_args + (args.beam_arg or []),
        serving_root=None if args.no_push else str(Path(args.serving_root or out / "serving").resolve()),
    )


def compile_config(args):
    """`towerflow compile`'s PipelineConfig: the cluster's pipeline root; KFP / Vertex record MLMD themselves."""
    from towerflow.pipeline import kubeflow_runner
    from towerflow.pipeline.config import PipelineConfig

    return PipelineConfig.from_args(
        args,
        pipeline_root=args.pipeline_root,
        metadata_path="",
        beam_pipeline_args=kubeflow_runner.kubeflow_beam_args(args.beam_arg or []),
    )


def _run(args) -> None:
    from towerflow.pipeline.local_runner import run_local

    config = run_config(args)
    print(f"Running pipeline {config.pipeline_name!r} on {config.data_dir} -> {Path(args.output_dir).resolve()}")
    summary = run_local(config)
    print(summary.format())


def _component_beam_args(values: list[str] | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for value in values or []:
        component, sep, arg = value.partition("=")
        if not sep or not arg.startswith("--"):
            raise ValueError(f"--component-beam-arg takes COMPONENT=--beam_flag=value, got {value!r}")
        out.setdefault(component, []).append(arg)
    return out


def _compile(args) -> None:
    from towerflow.pipeline import kubeflow_runner

    if args.target != "kubeflow":
        raise ValueError(f"unknown compile target {args.target!r}; supported: kubeflow")
    config = compile_config(args)
    cluster = None
    if args.training_project:
        from towerflow.pipeline.training_cluster import TrainingCluster

        given = {
            "region": args.training_region,
            "strategy": args.training_strategy,
            "workers": args.training_workers,
            "parameter_servers": args.training_parameter_servers,
            "machine_type": args.training_machine_type,
        }
        cluster = TrainingCluster(
            project=args.training_project, image=args.image, **{k: v for k, v in given.items() if v is not None}
        )
    compiled = kubeflow_runner.compile_pipeline(
        config,
        image=args.image,
        output_path=args.output,
        data_uri=args.data_uri,
        schema_uri=args.schema_uri,
        component_beam_args=_component_beam_args(args.component_beam_arg),
        training_cluster=cluster,
    )
    print(compiled.format())
    if cluster:
        print(f"  Trainers run on a Vertex AI training cluster: {cluster}")
    print(f"  Ingestion reads {args.data_uri or os.path.abspath(config.data_dir)}; make sure the cluster can too")


def add_commands(commands) -> None:
    """Registers `run` and `compile`."""
    from towerflow.pipeline.kubeflow_runner import IMAGE_SCHEMA_PATH

    run = commands.add_parser("run", help="run the pipeline locally (LocalDagRunner, SQLite MLMD)")
    add_pipeline_flags(run)
    run.add_argument("--output-dir", default="runs/local", help="pipeline root and metadata.sqlite go here")
    run.add_argument("--beam-workers", type=int, default=None, help="DirectRunner processes (default: cores)")
    run.add_argument("--beam-in-memory", action="store_true", help="single-process DirectRunner")
    run.add_argument("--serving-root", default=None, help="push blessed models here (default: <output-dir>/serving)")
    run.add_argument("--no-push", action="store_true", help="train and evaluate, but push nothing")
    run.set_defaults(func=_run)

    comp = commands.add_parser("compile", help="compile the pipeline for Kubeflow Pipelines v2 / Vertex AI")
    add_pipeline_flags(comp)
    comp.add_argument("--target", default="kubeflow", help="only kubeflow (KubeflowV2DagRunner) for now")
    comp.add_argument("--image", required=True, help="pipeline container image built from the Dockerfile")
    comp.add_argument("--pipeline-root", required=True, help="artifact root the cluster writes, e.g. gs://bucket/root")
    comp.add_argument("--output", default="build/towerflow_kubeflow.json", help="PipelineJob JSON to write")
    comp.add_argument("--data-uri", default=None, help="where the cluster reads the same data (default: --data-dir)")
    comp.add_argument("--schema-uri", default=IMAGE_SCHEMA_PATH, help="the schema's path inside the image or a URI")
    comp.add_argument(
        "--component-beam-arg",
        action="append",
        help="Beam arg for one component, e.g. --component-beam-arg=Ingestion=--runner=FlinkRunner (repeat)",
    )
    train = comp.add_argument_group("Trainers on a Vertex AI training cluster (docs/kubeflow.md)")
    train.add_argument("--training-project", default=None, help="GCP project; set to train on a cluster")
    train.add_argument("--training-region", default=None, help="default: us-central1")
    train.add_argument(
        "--training-strategy",
        default=None,
        choices=["multi_worker_mirrored", "parameter_server"],
        help="default: multi_worker_mirrored",
    )
    train.add_argument("--training-workers", type=int, default=None, help="replicas besides the chief (default 1)")
    train.add_argument("--training-parameter-servers", type=int, default=None, help="default 0")
    train.add_argument("--training-machine-type", default=None, help="default: n1-standard-8")
    comp.set_defaults(func=_compile)
