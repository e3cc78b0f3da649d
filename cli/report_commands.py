"""`towerflow report`: where the latest ModelEvaluator report is, what it says, and opening it.

    towerflow report                          # path + summary of the newest report in runs/local
    towerflow report --output-dir runs/ml1m --open

The newest report is the newest `ModelEvaluator.blessing` artifact in `<output-dir>/metadata.sqlite`
(the same lookup `towerflow evaluate` makes).
`add_commands` registers the sub-command on the `towerflow` parser.
"""

from __future__ import annotations

import os
from pathlib import Path

EVALUATOR_OUTPUT = "ModelEvaluator.blessing"


def latest_report_dir(metadata_path: str) -> str:
    """The blessing directory of the newest ModelEvaluator output recorded in the MLMD store."""
    from towerflow.components.evaluation.model_evaluator import EVALUATION_FILE
    from towerflow.pipeline.mlmd import latest_artifacts

    if not Path(metadata_path).is_file():
        raise FileNotFoundError(f"no ML Metadata store at {metadata_path}; run `towerflow run` first")
    uri = latest_artifacts(metadata_path).get(EVALUATOR_OUTPUT)
    if not uri or not os.path.isfile(os.path.join(uri, EVALUATION_FILE)):
        raise FileNotFoundError(
            f"no ModelEvaluator report recorded in {metadata_path}; run the pipeline with the ModelEvaluator first"
        )
    return uri


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
