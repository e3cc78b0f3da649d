"""Running the real `tensorflow_model_server` on the serving root, when it is installed.

The command line is the one the official image and docs use; the config is
the Pusher's `models.config`, re-read every `config_poll_seconds` so pushes
and rollbacks take effect without a restart.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from towerflow.serving.servables import BatchingOptions

BINARY = "tensorflow_model_server"


def find_binary() -> str | None:
    return shutil.which(os.environ.get("TOWERFLOW_TFSERVING_BINARY", BINARY))


def batching_parameters_text(options: BatchingOptions) -> str:
    """A BatchingParameters text proto for --batching_parameters_file."""
    return (
        f"max_batch_size {{ value: {options.max_batch_size} }}\n"
        f"batch_timeout_micros {{ value: {options.batch_timeout_micros} }}\n"
        f"num_batch_threads {{ value: {os.cpu_count() or 1} }}\n"
        f"pad_variable_length_inputs: {str(options.pad_variable_length_inputs).lower()}\n"
    )


def command(
    model_config_file: str,
    port: int = 8500,
    rest_api_port: int = 8501,
    poll_seconds: float = 1.0,
    config_poll_seconds: int = 5,
    batching: BatchingOptions | None = None,
    batching_file: str | None = None,
    binary: str = BINARY,
    extra: list[str] | None = None,
) -> list[str]:
    """The tensorflow_model_server argv (writes the batching parameters file when batching is on)."""
    args = [
        binary,
        f"--port={port}",
        f"--rest_api_port={rest_api_port}",
        f"--model_config_file={model_config_file}",
        f"--model_config_file_poll_wait_seconds={config_poll_seconds}",
        f"--file_system_poll_wait_seconds={max(1, round(poll_seconds))}",
        # labels are rewritten with the policy in one config change; let them name versions still loading
        "--allow_version_labels_for_unavailable_models=true",
    ]
    if batching is not None:
        if batching_file is None:
            batching_file = os.path.join(tempfile.mkdtemp(prefix="towerflow-batching-"), "batching.config")
        Path(batching_file).write_text(batching_parameters_text(batching))
        args += ["--enable_batching=true", f"--batching_parameters_file={batching_file}"]
    return args + list(extra or [])


def start(args: list[str], log_path: str | None = None) -> subprocess.Popen:
    """Starts the server process (stdout/stderr to log_path, or inherited)."""
    if shutil.which(args[0]) is None:
        raise FileNotFoundError(f"{args[0]} is not on PATH; use the embedded server (--backend embedded)")
    out = open(log_path, "ab") if log_path else None  # noqa: SIM115  (owned by the child process)
    return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT if out else None)
