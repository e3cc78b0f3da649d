"""`towerflow report`: where the latest ModelEvaluator report is, what it says, and opening it.

    towerflow report                          # path + summary of the newest report in runs/local
    towerflow report --output-dir runs/ml1m --open

The newest report is the newest live artifact published by a ModelEvaluator execution (any node
whose output directory holds model_evaluation.json) in `<output-dir>/metadata.sqlite`.
`add_commands` registers the sub-command on the `towerflow` parser.
"""

from __future__ import annotations

import os
from pathlib import Path


def latest_report_dir(metadata_path: str) -> str:
    """The blessing directory of the newest ModelEvaluator output recorded in the MLMD store."""
    from ml_metadata.proto import metadata_store_pb2

    from towerflow.components.evaluation.model_evaluator import EVALUATION_FILE
    from towerflow.pipeline.mlmd import execution_nodes, open_store

    if not Path(metadata_path).is_file():
        raise FileNotFoundError(f"no ML Metadata store at {metadata_path}; run `towerflow run` first")
    store = open_store(metadata_path)
    nodes = execution_nodes(store)
    outputs = [
        e.artifact_id
        for e in store.get_events_by_execution_ids(list(nodes))
        if e.type == metadata_store_pb2.Event.OUTPUT
    ]
    artifacts = store.get_artifacts_by_id(sorted(set(outputs))) if outputs else []
    candidates = [
        a
        for a in artifacts
        if a.state == metadata_store_pb2.Artifact.LIVE and os.path.isfile(os.path.join(a.uri, EVALUATION_FILE))
    ]
    if not candidates:
        raise FileNotFoundError(
            f"no ModelEvaluator report recorded in {metadata_path}; run the pipeline with the ModelEvaluator first"
        )
    return max(candidates, key=lambda a: a.id).uri


def _report(args) -> None:
    import webbrowser

    from towerflow.components.evaluation.model_evaluator import REPORT_FILE, read_result
    from towerflow.components.evaluation.report import format_summary

    out = Path(args.output_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"no run directory {out}; give the --output-dir of `towerflow run`")
    report_dir = latest_report_dir(str(out / "metadata.sqlite"))
    html_path = Path(report_dir, REPORT_FILE).resolve()
    if not html_path.is_file():
        raise FileNotFoundError(f"the evaluation in {report_dir} has no {REPORT_FILE}")
    print(html_path)
    print(format_summary(read_result(report_dir)))
    if args.open:
        if not webbrowser.open(html_path.as_uri()):
            print("(no browser available here; open the path above)")


def add_commands(subparsers) -> None:
    """Registers `report` on the `towerflow` sub-command parsers."""
    rep = subparsers.add_parser("report", help="path and summary of the latest model evaluation report")
    rep.add_argument("--output-dir", default="runs/local", help="the --output-dir of `towerflow run`")
    rep.add_argument("--open", action="store_true", help="open the HTML report in a web browser")
    rep.set_defaults(func=_report)
