"""The real `tensorflow_model_server`: running it on the serving root, and speaking its flags.

The command line is the one the official image and docs use; the config is
the Pusher's `models.config`, re-read every `config_poll_seconds` so pushes
and rollbacks take effect without a restart.

`add_tfserving_flags` teaches `towerflow serve` the binary's own flag spelling
(`--rest_api_port=8501`, `--model_config_file=...`, `--enable_batching`, ...),
so it drops into scripts and manifests written for the binary, whichever
backend then serves.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported for annotations only: the CLI imports this module to build its parser
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


# -- tensorflow_model_server's own flag spelling ---------------------------------------------------------
# The flags of tensorflow_model_server 2.16 (tensorflow_serving/model_servers/main.cc). The binary takes
# `--flag=value` and bare `--flag` for a true bool; argparse also takes `--flag value`.

# flags that are `towerflow serve` options under another spelling: flag -> (option, value type)
TFSERVING_OPTION_FLAGS: dict[str, tuple[str, type]] = {
    "rest_api_port": ("rest_api_port", int),
    "model_config_file": ("model_config_file", str),
    "model_name": ("model_name", str),
    "model_base_path": ("model_base_path", str),
    "file_system_poll_wait_seconds": ("poll_seconds", float),
    "enable_batching": ("enable_batching", bool),
}
# Flags that tune, secure or extend the binary and have no embedded counterpart: accepted (value checked),
# noted on stderr, and kept as `--flag=value` in `args.tfserving_passthrough` to hand to the real binary.
TFSERVING_PASSTHROUGH_FLAGS: dict[str, type] = {
    "allow_version_labels_for_unavailable_models": bool,
    "enable_model_warmup": bool,
    "enable_per_model_batching_parameters": bool,
    "enable_profiler": bool,
    "enable_signature_method_name_check": bool,
    "flush_filesystem_caches": bool,
    "grpc_channel_arguments": str,
    "grpc_max_threads": int,
    "grpc_socket_path": str,
    "load_retry_interval_micros": int,
    "max_num_load_retries": int,
    "model_config_file_poll_wait_seconds": int,
    "monitoring_config_file": str,
    "num_load_threads": int,
    "num_request_iterations_for_warmup": int,
    "num_unload_threads": int,
    "per_process_gpu_memory_fraction": float,
    "platform_config_file": str,
    "remove_unused_fields_from_bundle_metagraph": bool,
    "rest_api_enable_cors_support": bool,
    "rest_api_num_threads": int,
    "rest_api_timeout_in_ms": int,
    "saved_model_tags": str,
    "ssl_config_file": str,
    "tensorflow_inter_op_parallelism": int,
    "tensorflow_intra_op_parallelism": int,
    "tensorflow_session_config_file": str,
    "tensorflow_session_parallelism": int,
    "thread_pool_factory_config_file": str,
    "use_alts_credentials": bool,
    "xla_cpu_compilation_enabled": bool,
}
# what the embedded server does instead, where a script's author would want to know
_EMBEDDED_INSTEAD = {
    "allow_version_labels_for_unavailable_models": "a label may always name any version in the config",
    "model_config_file_poll_wait_seconds": "the config file is re-read on every --file_system_poll_wait_seconds poll",
    "rest_api_timeout_in_ms": "REST calls are not timed out",
    "ssl_config_file": "gRPC and REST are plain text",
    "use_alts_credentials": "gRPC is plain text",
}


def _convert(flag: str, text: str, kind: type):
    """A flag's value as the binary reads it (bools: true/false/1/0); ValueError naming the flag otherwise."""
    if kind is bool:
        if text.lower() in ("true", "1"):
            return True
        if text.lower() in ("false", "0"):
            return False
        raise ValueError(f"--{flag} takes true or false, not {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"--{flag} takes {'an integer' if kind is int else 'a number'}, not {text!r}") from None


def _batching_parameters_class():
    """The BatchingParameters message (tensorflow_serving/servables/tensorflow/session_bundle_config.proto).

    The tensorflow-serving-api wheel does not ship that proto, so its fields are
    declared here, with their numbers, for protobuf's own text-format parser.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="towerflow/tfserving_batching_parameters.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=[wrappers_pb2.DESCRIPTOR.name],
    )
    message = proto.message_type.add(name="BatchingParameters")
    for name, number, wrapper in (
        ("max_batch_size", 1, "Int64Value"),
        ("batch_timeout_micros", 2, "Int64Value"),
        ("max_enqueued_batches", 3, "Int64Value"),
        ("num_batch_threads", 4, "Int64Value"),
        ("thread_pool_name", 5, "StringValue"),
    ):
        message.field.add(
            name=name,
            number=number,
            type=field.TYPE_MESSAGE,
            type_name=f".google.protobuf.{wrapper}",
            label=field.LABEL_OPTIONAL,
        )
    message.field.add(name="allowed_batch_sizes", number=6, type=field.TYPE_INT64, label=field.LABEL_REPEATED)
    message.field.add(name="pad_variable_length_inputs", number=7, type=field.TYPE_BOOL, label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def read_batching_parameters(path: str) -> dict[str, int]:
    """The settings of a --batching_parameters_file the embedded batcher has: {max_batch_size, batch_timeout_micros}.

    Only the fields the file sets are returned. ValueError for a missing or
    unparsable file. The thread-pool, queue and allowed-size fields have no
    embedded counterpart (fields newer than 2.16's are skipped too).
    """
    from google.protobuf import text_format

    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ValueError(f"cannot read the batching parameters file: {err}") from None
    params = _batching_parameters_class()()
    try:
        text_format.Parse(text, params, allow_unknown_field=True)
    except text_format.ParseError as err:
        raise ValueError(f"{path} is not a BatchingParameters text proto: {err}") from None
    return {
        name: getattr(params, name).value
        for name in ("max_batch_size", "batch_timeout_micros")
        if params.HasField(name)
    }


def apply_tfserving_flag(namespace: argparse.Namespace, flag: str, text: str) -> None:
    """Sets the towerflow serve options one of the binary's flags stands for, with the binary's rules.

    `--model_config_file` wins over `--model_name`/`--model_base_path` whatever
    their order (the binary ignores those then); `--model_base_path` alone
    serves the model "default"; `--batching_parameters_file` sets the batch size
    and timeout. ValueError for a value the binary would reject.
    """
    given = dict(getattr(namespace, "tfserving_flags", None) or {})
    given[flag] = text
    if flag in TFSERVING_OPTION_FLAGS:
        option, kind = TFSERVING_OPTION_FLAGS[flag]
        value = _convert(flag, text, kind)
        ignored = flag in ("model_name", "model_base_path") and "model_config_file" in given  # so does the binary
        if not ignored:
            setattr(namespace, option, value)
        if flag == "model_config_file":
            namespace.model_name = namespace.model_base_path = None
        elif flag == "model_base_path" and "model_config_file" not in given and namespace.model_name is None:
            namespace.model_name = "default"  # the binary's default --model_name
    elif flag == "batching_parameters_file":
        for option, value in read_batching_parameters(text).items():
            setattr(namespace, option, int(value))
    else:
        _convert(flag, text, TFSERVING_PASSTHROUGH_FLAGS[flag])
        namespace.tfserving_passthrough = (*getattr(namespace, "tfserving_passthrough", ()), f"--{flag}={text}")
    namespace.tfserving_flags = given


class _TfservingFlag(argparse.Action):
    """One tensorflow_model_server flag: applied with `apply_tfserving_flag`; stores nothing under its own name."""

    def __call__(self, parser, namespace, values, option_string=None):
        flag = self.option_strings[0][2:]
        text = "true" if values is None else values  # a bare bool flag
        try:
            apply_tfserving_flag(namespace, flag, text)
        except ValueError as err:
            raise argparse.ArgumentError(self, str(err)) from None
        if flag in TFSERVING_PASSTHROUGH_FLAGS:
            instead = _EMBEDDED_INSTEAD.get(flag)
            print(
                f"towerflow serve: note: the embedded server has no --{flag}{f' ({instead})' if instead else ''}",
                file=sys.stderr,
            )
        elif flag == "rest_api_port" and int(text) == 0:
            print(
                "towerflow serve: note: --rest_api_port=0 turns REST off in tensorflow_model_server; "
                "the embedded server listens on a free port instead",
                file=sys.stderr,
            )


def add_tfserving_flags(parser: argparse.ArgumentParser) -> None:
    """Adds tensorflow_model_server's flag spelling to the `towerflow serve` parser.

    Needs the parser's options rest_api_port, model_config_file, model_name,
    model_base_path, poll_seconds, enable_batching, max_batch_size and
    batch_timeout_micros (`--port` is spelled alike already). Flags without a
    towerflow counterpart end up in `args.tfserving_passthrough`.
    """
    group = parser.add_argument_group(
        "tensorflow_model_server flags",
        "The binary's own spelling is accepted too (--port is spelled alike), so scripts and manifests written "
        "for it work unchanged. Its other flags (--rest_api_timeout_in_ms, --enable_model_warmup, "
        "--tensorflow_intra_op_parallelism, ...) are accepted and noted; the embedded server has no such settings.",
    )
    metavars = {int: "N", float: "SECONDS", bool: "true|false", str: "VALUE"}
    for flag, (option, kind) in TFSERVING_OPTION_FLAGS.items():
        group.add_argument(
            f"--{flag}",
            action=_TfservingFlag,
            nargs="?" if kind is bool else None,
            default=argparse.SUPPRESS,
            metavar=metavars[kind],
            help=f"same as --{option.replace('_', '-')}",
        )
    group.add_argument(
        "--batching_parameters_file",
        action=_TfservingFlag,
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="a BatchingParameters text proto: its max_batch_size and batch_timeout_micros",
    )
    for flag, kind in TFSERVING_PASSTHROUGH_FLAGS.items():
        group.add_argument(
            f"--{flag}",
            action=_TfservingFlag,
            nargs="?" if kind is bool else None,
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )
    parser.set_defaults(tfserving_passthrough=())
