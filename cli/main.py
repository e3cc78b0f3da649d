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
import tempfile
import time
import traceback
from pathlib import Path

# The cli/ modules that register sub-commands, each with `add_commands(subparsers)`.
COMMAND_MODULES = (
    "data_commands",
    "pipeline_commands",
    "evaluate_commands",
    "report_commands",
    "serving_commands",
    "reranking_commands",
    "lineage_commands",
    "features_commands",
    "abtest_commands",
    "service_commands",
    "train_commands",
)


def build_parser() -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(prog="towerflow", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

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


def _origin(err: BaseException) -> str:
    """The file the exception was raised in."""
    frames = traceback.extract_tb(err.__traceback__)
    return frames[-1].filename if frames else "?"


def _is_input_error(err: BaseException) -> bool:
    """A ValueError / FileNotFoundError that towerflow's own code raised about its input: one line says it all.

    The same exception types raised deep inside TensorFlow, TFX or Beam, and every RuntimeError (a failed
    component), may be bugs, so those also get their traceback written down.
    """
    if not isinstance(err, ValueError | FileNotFoundError):
        return False
    origin = Path(_origin(err)).resolve()
    return any(origin.is_relative_to(folder) for folder in _package_folders())


def _package_folders() -> list[Path]:
    import towerflow

    return [Path(importlib.import_module(f"towerflow.{name}").__file__).parent for name in towerflow.LAYERS]


def _write_traceback(command: str, err: BaseException) -> Path:
    log = Path(tempfile.gettempdir()) / f"towerflow-{command}-{os.getpid()}.log"
    log.write_text("".join(traceback.format_exception(err)), encoding="utf-8")
    return log


def main(argv: list[str] | None = None) -> int:
    _quiet_logs()
    args = build_parser().parse_args(argv)
    started = time.time()
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"towerflow {args.command}: error: {err}", file=sys.stderr)
        if not _is_input_error(err):
            log = _write_traceback(args.command, err)
            print(f"  it was raised inside {_origin(err)}; the traceback is in {log}", file=sys.stderr)
        return 2
    print(f"({time.time() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
