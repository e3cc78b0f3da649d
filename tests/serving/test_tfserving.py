"""serving/tfserving.py: the tensorflow_model_server command line, and its flag spelling on `towerflow serve`."""

import argparse
import socket
import threading

import pytest

from towerflow.cli import serving_commands
from towerflow.components.pusher import model_repository as repo
from towerflow.serving import tfserving
from towerflow.serving.client import RestClient
from towerflow.serving.servables import BatchingOptions


def serve_parser() -> argparse.ArgumentParser:
    """The CLI's own parser; its `serve` command takes the binary's spelling too."""
    parser = argparse.ArgumentParser(prog="towerflow")
    subparsers = parser.add_subparsers(dest="command")
    serving_commands.add_commands(subparsers)  # `towerflow serve` adds tensorflow_model_server's flags itself
    return parser


def options(args: argparse.Namespace) -> dict:
    """The towerflow serve options a parse produced (without the record of which binary flags were given)."""
    return {k: v for k, v in vars(args).items() if k not in ("tfserving_flags", "tfserving_passthrough", "func")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_binary_spelling_sets_the_same_options_as_towerflows():
    parser = serve_parser()
    binary = parser.parse_args(
        [
            "serve",
            "--port=9000",
            "--rest_api_port=9001",
            "--model_name=two_tower",
            "--model_base_path=/models/two_tower",
            "--file_system_poll_wait_seconds=5",
            "--enable_batching",
        ]
    )
    towerflow = parser.parse_args(
        [
            "serve",
            "--port",
            "9000",
            "--rest-api-port",
            "9001",
            "--model-name",
            "two_tower",
            "--model-base-path",
            "/models/two_tower",
            "--poll-seconds",
            "5",
            "--enable-batching",
        ]
    )
    assert options(binary) == options(towerflow)
    assert binary.rest_api_port == 9001 and binary.poll_seconds == 5.0 and binary.enable_batching is True
    assert binary.tfserving_passthrough == towerflow.tfserving_passthrough == ()
    # argparse's spelling of a value works too
    assert parser.parse_args(["serve", "--rest_api_port", "9001"]).rest_api_port == 9001


@pytest.mark.parametrize(
    ("flags", "enabled"),
    [(["--enable_batching"], True), (["--enable_batching=true"], True), (["--enable_batching=1"], True)]
    + [(["--enable_batching=false"], False), (["--enable_batching=0"], False), (["--enable_batching=FALSE"], False)]
    + [(["--enable-batching", "--enable_batching=false"], False), ([], False)],
)
def test_enable_batching_reads_bools_as_the_binary_does(flags, enabled):
    assert serve_parser().parse_args(["serve", *flags]).enable_batching is enabled


def test_model_config_file_wins_over_model_name_whatever_the_order():
    """The official image's entrypoint passes --model_name/--model_base_path before the user's own flags."""
    parser = serve_parser()
    for argv in (
        ["--model_name=model", "--model_base_path=/models/model", "--model_config_file=/m/models.config"],
        ["--model_config_file=/m/models.config", "--model_name=model", "--model_base_path=/models/model"],
    ):
        args = parser.parse_args(["serve", *argv])
        assert args.model_config_file == "/m/models.config"
        assert args.model_name is None and args.model_base_path is None


def test_model_base_path_alone_serves_the_model_default():
    args = serve_parser().parse_args(["serve", "--model_base_path=/models/x"])
    assert (args.model_name, args.model_base_path) == ("default", "/models/x")
    args = serve_parser().parse_args(["serve", "--model_base_path=/models/x", "--model_name=x"])
    assert args.model_name == "x"


def test_batching_parameters_file(tmp_path):
    # the file towerflow writes for the real binary reads back to the same settings
    written = tmp_path / "batching.config"
    written.write_text(tfserving.batching_parameters_text(BatchingOptions(max_batch_size=64, batch_timeout_micros=500)))
    assert tfserving.read_batching_parameters(str(written)) == {"max_batch_size": 64, "batch_timeout_micros": 500}
    # a hand-written one, as in TF Serving's docs, with fields the embedded batcher has no counterpart for
    handwritten = tmp_path / "hand.config"
    handwritten.write_text(
        "# tuned on the load test\nmax_batch_size { value: 128 }\nbatch_timeout_micros { value: 0 }\n"
        'thread_pool_name { value: "model_server_batch_threads" }\nnum_batch_threads { value: 8 }\n'
        "allowed_batch_sizes: 64\nallowed_batch_sizes: 128\nenable_large_batch_splitting { value: true }\n"
    )
    args = serve_parser().parse_args(["serve", "--enable_batching=true", f"--batching_parameters_file={handwritten}"])
    assert (args.enable_batching, args.max_batch_size, args.batch_timeout_micros) == (True, 128, 0)
    partial = tmp_path / "partial.config"
    partial.write_text("batch_timeout_micros { value: 100 }\n")
    args = serve_parser().parse_args(["serve", f"--batching_parameters_file={partial}"])
    assert (args.max_batch_size, args.batch_timeout_micros) == (32, 100)  # the unset one keeps its default


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--rest_api_port=http", "--rest_api_port takes an integer, not 'http'"),
        ("--enable_batching=yes", "--enable_batching takes true or false, not 'yes'"),
        ("--file_system_poll_wait_seconds=soon", "takes a number"),
        ("--rest_api_timeout_in_ms=5s", "--rest_api_timeout_in_ms takes an integer"),
        ("--batching_parameters_file=/no/such/file", "cannot read the batching parameters file"),
    ],
)
def test_bad_values_are_rejected_with_the_flag_named(flag, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        serve_parser().parse_args(["serve", flag])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_batching_parameters_file(tmp_path, capsys):
    bad = tmp_path / "bad.config"
    bad.write_text("max_batch_size: many\n")
    with pytest.raises(SystemExit):
        serve_parser().parse_args(["serve", f"--batching_parameters_file={bad}"])
    assert "is not a BatchingParameters text proto" in capsys.readouterr().err


def test_flags_without_an_embedded_counterpart_are_kept_and_noted(capsys):
    args = serve_parser().parse_args(
        [
            "serve",
            "--rest_api_timeout_in_ms=5000",
            "--enable_model_warmup",
            "--model_config_file_poll_wait_seconds=60",
            "--tensorflow_intra_op_parallelism=2",
        ]
    )
    assert args.tfserving_passthrough == (
        "--rest_api_timeout_in_ms=5000",
        "--enable_model_warmup=true",
        "--model_config_file_poll_wait_seconds=60",
        "--tensorflow_intra_op_parallelism=2",
    )
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and all(
        line.startswith("towerflow serve: note: the embedded server has no --") for line in err
    )
    assert "REST calls are not timed out" in err[0] and "re-read on every" in err[2]


def test_help_lists_the_binary_spelling(capsys):
    with pytest.raises(SystemExit):
        serve_parser().parse_args(["serve", "--help"])
    out = capsys.readouterr().out
    assert "tensorflow_model_server flags" in out and "--rest_api_port" in out and "same as --rest-api-port" in out


def test_serve_started_with_the_official_images_flags(tiny_models, tmp_path):
    """`towerflow serve` (embedded) runs the command line the official image's entrypoint builds plus the user's."""
    repo.push(tmp_path, "tiny", tiny_models[1])
    rest_port = free_port()
    args = serve_parser().parse_args(
        [
            "serve",
            "--backend=embedded",
            "--port=0",
            f"--rest_api_port={rest_port}",
            "--model_name=model",  # the entrypoint's defaults, overridden by the config file below
            "--model_base_path=/models/model",
            f"--model_config_file={tmp_path / repo.CONFIG_FILE}",
            "--file_system_poll_wait_seconds=1",
            "--enable_batching=true",
            "--rest_api_timeout_in_ms=30000",
        ]
    )
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=serving_commands._serve, args=(args, ready, stop))
    thread.start()
    try:
        assert ready.wait(60)
        client = RestClient(f"http://127.0.0.1:{rest_port}", timeout=10)
        assert client.predict("tiny", instances=[1.0])["predictions"] == [2.5]
        client.close()
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


def test_command_line_for_the_real_binary(tmp_path):
    argv = tfserving.command(
        "/m/models.config",
        port=1,
        rest_api_port=2,
        batching=BatchingOptions(),
        batching_file=str(tmp_path / "b.config"),
        binary="tfs",
        extra=["--rest_api_timeout_in_ms=5000"],
    )
    assert argv[:4] == ["tfs", "--port=1", "--rest_api_port=2", "--model_config_file=/m/models.config"]
    assert "--enable_batching=true" in argv and argv[-1] == "--rest_api_timeout_in_ms=5000"
    # what towerflow hands the binary, the binary's spelling on towerflow serve reads back the same
    args = serve_parser().parse_args(["serve", *argv[1:-1]])
    assert (args.port, args.rest_api_port, args.model_config_file, args.enable_batching) == (
        1,
        2,
        "/m/models.config",
        True,
    )
    assert args.tfserving_passthrough == (
        "--model_config_file_poll_wait_seconds=5",
        "--allow_version_labels_for_unavailable_models=true",
    )


def test_towerflow_serve_takes_the_binarys_flag_spelling():
    from towerflow.cli.main import build_parser

    args = build_parser().parse_args(
        ["serve", "--rest_api_port=9001", "--model_config_file=/m/models.config", "--file_system_poll_wait_seconds=3"]
        + ["--enable_batching", "--port=9000"]
    )
    assert (args.rest_api_port, args.model_config_file, args.poll_seconds) == (9001, "/m/models.config", 3.0)
    assert args.enable_batching is True and args.port == 9000
