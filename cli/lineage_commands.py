"""`towerflow compile`, `towerflow lineage` and `towerflow runs`: the Kubeflow and ML Metadata commands.

    towerflow compile --target kubeflow --image gcr.io/p/towerflow:1 --pipeline-root gs://b/root \\
        --data-dir data/ml-100k --data-uri gs://b/data/ml-100k --output build/towerflow_kfp.json
    towerflow lineage --model two_tower --version 3            # a served model version
    towerflow lineage --uri runs/local/pipeline_root/TwoTowerTrainer/model/22 --format dot > lineage.dot
    towerflow runs --metadata runs/local/metadata.sqlite

The MLMD store is the local runner's SQLite file by default; `--mysql-host`
(password from $TOWERFLOW_MYSQL_PASSWORD) or `--grpc-host` reach a cluster's.
`add_commands` registers the sub-commands on the `towerflow` parser.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

MYSQL_PASSWORD_ENV = "TOWERFLOW_MYSQL_PASSWORD"


def _store_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ML Metadata store (default: the local runner's SQLite file)")
    group.add_argument("--metadata", default=None, help="SQLite MLMD file (default: runs/local/metadata.sqlite)")
    group.add_argument("--mysql-host", default=None, help=f"MySQL MLMD database host (password: ${MYSQL_PASSWORD_ENV})")
    group.add_argument("--mysql-port", type=int, default=3306)
    group.add_argument("--mysql-database", default="metadb", help="MySQL database (Kubeflow's is metadb)")
    group.add_argument("--mysql-user", default="root")
    group.add_argument("--grpc-host", default=None, help="MLMD gRPC server, e.g. metadata-grpc-service.kubeflow")
    group.add_argument("--grpc-port", type=int, default=8080)


def _open_store(args):
    from towerflow.pipeline import lineage

    remote = args.mysql_host or args.grpc_host
    if remote and args.metadata:
        raise ValueError("give either --metadata or a MySQL/gRPC store, not both")
    metadata = None if remote else (args.metadata or "runs/local/metadata.sqlite")
    return lineage.open_store(
        metadata,
        mysql_host=args.mysql_host,
        mysql_port=args.mysql_port,
        mysql_database=args.mysql_database,
        mysql_user=args.mysql_user,
        mysql_password=os.environ.get(MYSQL_PASSWORD_ENV),
        grpc_host=args.grpc_host,
        grpc_port=args.grpc_port,
    )


def _lineage(args) -> None:
    from towerflow.pipeline import lineage

    store = _open_store(args)
    if args.list:
        pushed = lineage.pushed_models(store)
        print("\n".join(f"{p.name:<20} version {p.version:<12} {p.destination}" for p in pushed) or "No pushed models.")
        return
    if bool(args.model) == bool(args.uri):
        raise ValueError("give a served model (--model NAME [--version V]) or an artifact --uri, not both or neither")
    if args.version and not args.model:
        raise ValueError("--version needs --model")
    if args.model:
        artifact_id = lineage.find_pushed_model(store, args.model, args.version)
    else:
        artifact_id = lineage.find_artifact(store, args.uri)
    graph = lineage.trace(store, artifact_id)
    text = lineage.render(graph, args.format)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + ("" if text.endswith("\n") else "\n"), encoding="utf-8")
        print(
            f"Lineage of {graph.root.label}: {len(graph.artifacts)} artifacts, {len(graph.steps)} executions "
            f"-> {args.output} ({args.format})"
        )
    else:
        print(text)


def _runs(args) -> None:
    from towerflow.pipeline import lineage

    runs = lineage.list_runs(_open_store(args), args.pipeline_name)
    if args.last:
        runs = runs[-args.last :]
    print(lineage.format_runs(runs, verbose=not args.brief))


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
    from towerflow.pipeline.config import IngestionConfig, PipelineConfig

    if args.target != "kubeflow":
        raise ValueError(f"unknown compile target {args.target!r}; supported: kubeflow")
    config = PipelineConfig(
        data_dir=args.data_dir,
        pipeline_root=args.pipeline_root,
        metadata_path="",  # KFP / Vertex record MLMD themselves
        pipeline_name=args.pipeline_name,
        ingestion=IngestionConfig(
            dataset_format=args.format,
            split_strategy=args.split,
            train_fraction=args.train_fraction,
            eval_fraction=args.eval_fraction,
        ),
        beam_pipeline_args=kubeflow_runner.kubeflow_beam_args(args.beam_arg or []),
        train_models=not args.no_train,
        two_tower={"epochs": args.epochs} if args.epochs else {},
        ranking={"epochs": args.epochs} if args.epochs else {},
    )
    compiled = kubeflow_runner.compile_pipeline(
        config,
        image=args.image,
        output_path=args.output,
        data_uri=args.data_uri,
        schema_uri=args.schema_uri,
        component_beam_args=_component_beam_args(args.component_beam_arg),
    )
    print(compiled.format())
    print(f"  Ingestion reads {args.data_uri or os.path.abspath(args.data_dir)}; make sure the cluster can too")


def add_commands(subparsers) -> None:
    """Registers `compile`, `lineage` and `runs` on the `towerflow` sub-command parsers."""
    from towerflow.pipeline.kubeflow_runner import IMAGE_SCHEMA_PATH

    comp = subparsers.add_parser("compile", help="compile the pipeline for Kubeflow Pipelines v2 / Vertex AI")
    comp.add_argument("--target", default="kubeflow", help="only kubeflow (KubeflowV2DagRunner) for now")
    comp.add_argument("--image", required=True, help="pipeline container image built from the Dockerfile")
    comp.add_argument("--pipeline-root", required=True, help="artifact root the cluster writes, e.g. gs://bucket/root")
    comp.add_argument("--output", default="build/towerflow_kubeflow.json", help="PipelineJob JSON to write")
    comp.add_argument("--data-dir", default="data/ml-100k", help="local copy of the data (format, fingerprint)")
    comp.add_argument("--data-uri", default=None, help="where the cluster reads the same data (default: --data-dir)")
    comp.add_argument("--schema-uri", default=IMAGE_SCHEMA_PATH, help="the schema's path inside the image or a URI")
    comp.add_argument("--pipeline-name", default="towerflow")
    comp.add_argument("--format", default=None, help="dataset format (default: detected from --data-dir)")
    comp.add_argument("--split", default="global_time", choices=["global_time", "leave_last_n"])
    comp.add_argument("--train-fraction", type=float, default=0.8)
    comp.add_argument("--eval-fraction", type=float, default=0.9)
    comp.add_argument("--epochs", type=int, default=None, help="override both models' epochs")
    comp.add_argument("--no-train", action="store_true", help="data-only pipeline (no Transform/Trainers)")
    comp.add_argument(
        "--beam-arg",
        action="append",
        help="Beam arg for every Beam component, e.g. --beam-arg=--runner=DataflowRunner (repeat)",
    )
    comp.add_argument(
        "--component-beam-arg",
        action="append",
        help="Beam arg for one component, e.g. --component-beam-arg=Ingestion=--runner=FlinkRunner (repeat)",
    )
    comp.set_defaults(func=_compile)

    lin = subparsers.add_parser("lineage", help="where a served model came from, read from ML Metadata")
    lin.add_argument("--model", default=None, help="served model name (the Pusher's <serving_root>/<name>)")
    lin.add_argument("--version", default=None, help="served version (default: the newest pushed)")
    lin.add_argument("--uri", default=None, help="an artifact's URI or a path inside it, e.g. a model directory")
    lin.add_argument("--list", action="store_true", help="list the pushed models and versions instead")
    lin.add_argument("--format", default="tree", choices=["tree", "dot", "html", "json"])
    lin.add_argument("--output", default=None, help="write to this file instead of stdout")
    _store_args(lin)
    lin.set_defaults(func=_lineage)

    runs = subparsers.add_parser("runs", help="pipeline runs in ML Metadata with each component's outcome")
    runs.add_argument("--pipeline-name", default=None, help="only runs of this pipeline")
    runs.add_argument("--last", type=int, default=None, help="only the newest N runs")
    runs.add_argument("--brief", action="store_true", help="one line per run")
    _store_args(runs)
    runs.set_defaults(func=_runs)
