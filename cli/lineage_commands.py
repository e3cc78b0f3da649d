"""`towerflow lineage` and `towerflow runs`: what ML Metadata knows about models and runs.

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


def add_commands(subparsers) -> None:
    """Registers `lineage` and `runs` on the `towerflow` sub-command parsers."""
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
