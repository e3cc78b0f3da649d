"""`towerflow serve | query | push | rollback`: the serving side of the command line.

    towerflow push --model two_tower --from-run runs/local       # latest trained model -> next version
    towerflow serve --serving-root runs/local/serving             # tensorflow_model_server if on PATH, else embedded
    towerflow query --model two_tower --json '{"instances": [{"user_id": "42", ...}]}'
    towerflow rollback --model two_tower [--to 3]

`pipeline/cli.py` registers these with `add_commands(subparsers)`; each
function prints a short summary and raises ValueError / FileNotFoundError /
RuntimeError for bad input (printed as one error line, exit status 2).
Standalone: `python -m towerflow.cli.serving_commands serve ...`.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

DEFAULT_SERVING_ROOT = "runs/local/serving"


def _saved_model_dir(path: str) -> str:
    """A SavedModel directory, or a Trainer's Model artifact (its Format-Serving subdirectory)."""
    from towerflow.components.pusher.model_repository import is_saved_model_dir

    for candidate in (Path(path) / "Format-Serving", Path(path)):
        if is_saved_model_dir(candidate):
            return str(candidate)
    raise FileNotFoundError(f"no SavedModel in {path} (nor in {path}/Format-Serving)")


def _push(args) -> None:
    from towerflow.components.pusher import model_repository as repo

    if bool(args.saved_model) == bool(args.from_run):
        raise ValueError("give --saved-model PATH or --from-run RUN_DIR")
    if args.from_run:
        from towerflow.pipeline.push import push_from_run

        metadata = Path(args.from_run) / "metadata.sqlite"
        if not metadata.is_file():
            raise FileNotFoundError(f"no ML Metadata store at {metadata}; run `towerflow run` first")
        pushed = push_from_run(
            str(metadata),
            args.model,
            args.serving_root,
            ignore_blessing=args.ignore_blessing,
            canary=args.canary,
            keep_versions=args.keep_versions,
        )
        print(pushed.format())
        result = pushed.result
    else:
        if args.ignore_blessing:
            raise ValueError("--ignore-blessing applies to --from-run; a --saved-model push has no blessings to check")
        source = _saved_model_dir(args.saved_model)
        result = repo.push(args.serving_root, args.model, source, canary=args.canary, keep_versions=args.keep_versions)
        print(f"Pushed {source} as {args.model} version {result.version} -> {result.path}")
    print(result.state.format())
    print(f"Config: {Path(args.serving_root).resolve() / repo.CONFIG_FILE}")


def _rollback(args) -> None:
    from towerflow.components.pusher import model_repository as repo

    before = repo.model_state(args.serving_root, args.model)
    after = repo.rollback(args.serving_root, args.model, args.to)
    print(f"Rolled {args.model} back from version {before.default_version} to {after.default_version}")
    print(after.format())


def _query(args) -> None:
    from towerflow.serving.client import GrpcClient, RestClient

    if args.version is not None and args.label:
        raise ValueError("give --version or --label, not both")
    if args.grpc:
        client = GrpcClient(args.grpc, timeout=args.timeout)
        try:
            if args.status:
                from google.protobuf import json_format

                print(json_format.MessageToJson(client.status(args.model, args.version, args.label)))
                return
            if args.metadata:
                from google.protobuf import json_format

                _, signatures = client.metadata(args.model, args.version, args.label)
                print(json_format.MessageToJson(signatures))
                return
            body = _body(args)
            inputs = body.get("inputs")
            if not isinstance(inputs, dict):
                raise ValueError('over gRPC, --json must be {"inputs": {name: values, ...}} (columnar)')
            outputs = client.predict(
                args.model, inputs, body.get("signature_name") or args.signature, args.version, args.label
            )
            print(json.dumps({k: v.tolist() for k, v in outputs.items()}, default=_bytes_to_str))
        finally:
            client.close()
        return
    client = RestClient(args.url, timeout=args.timeout)
    if args.status:
        result = client.status(args.model, args.version, args.label)
    elif args.metadata:
        result = client.metadata(args.model, args.version, args.label)
    else:
        body = _body(args)
        if args.signature:
            body["signature_name"] = args.signature
        result = client.predict_body(args.model, body, args.version, args.label)
    print(json.dumps(result, indent=None if args.compact else 2))


def _bytes_to_str(value):
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _body(args) -> dict:
    if not args.json:
        raise ValueError("give --json '{\"instances\": [...]}' (or --status / --metadata)")
    text = Path(args.json[1:]).read_text() if args.json.startswith("@") else args.json
    try:
        body = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--json is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise ValueError('--json must be a JSON object like {"instances": [...]} or {"inputs": {...}}')
    return body


def _serve(args, ready: threading.Event | None = None, stop: threading.Event | None = None) -> None:
    from towerflow.components.pusher.model_repository import CONFIG_FILE
    from towerflow.serving import tfserving
    from towerflow.serving.servables import BatchingOptions

    single = bool(args.model_name or args.model_base_path)
    if single and not (args.model_name and args.model_base_path):
        raise ValueError("--model-name and --model-base-path go together")
    config_file = None
    if not single:
        config_file = args.model_config_file or str(Path(args.serving_root) / CONFIG_FILE)
        if not Path(config_file).is_file():
            raise FileNotFoundError(f"no model config at {config_file}; push a model first (`towerflow push`)")
    batching = BatchingOptions(args.max_batch_size, args.batch_timeout_micros) if args.enable_batching else None
    backend = args.backend
    if backend == "auto":
        backend = "tfserving" if tfserving.find_binary() else "embedded"
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    if backend == "tfserving":
        binary = tfserving.find_binary()
        if binary is None:
            raise FileNotFoundError("tensorflow_model_server is not on PATH; use --backend embedded")
        extra = [f"--model_name={args.model_name}", f"--model_base_path={args.model_base_path}"] if single else []
        argv = tfserving.command(
            config_file or "",
            port=args.port,
            rest_api_port=args.rest_api_port,
            poll_seconds=args.poll_seconds,
            batching=batching,
            binary=binary,
            extra=list(args.tfserving_passthrough),  # the binary's own flags we have no counterpart for
        )
        if single:
            argv = [a for a in argv if not a.startswith("--model_config_file")] + extra
        print("Running " + " ".join(argv))
        process = tfserving.start(argv)
        if ready:
            ready.set()
        while process.poll() is None and not stop.wait(0.5):
            pass
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
        print(f"tensorflow_model_server exited with status {process.returncode}")
        return
    from towerflow.serving.model_server import ModelServer, ServerOptions

    options = ServerOptions(
        model_config_file=config_file,
        model_name=args.model_name,
        model_base_path=args.model_base_path,
        host=args.host,
        port=args.port,
        rest_api_port=args.rest_api_port,
        file_system_poll_wait_seconds=args.poll_seconds,
        batching=batching,
        max_body_bytes=args.max_body_bytes,
        max_instances=args.max_instances,
    )
    with ModelServer(options) as server:
        loaded = {name: sorted(server.manager.snapshot(name).versions) for name in server.manager.model_names()}
        print(
            f"Embedded TF-Serving-protocol server: REST {server.rest_url}, gRPC {server.grpc_target}; "
            f"models {loaded or 'none'}; batching {'on' if batching else 'off'}; "
            f"custom ops {server.custom_ops or 'none'}; polling every {args.poll_seconds}s (Ctrl-C stops)"
        )
        sys.stdout.flush()
        if ready:
            ready.set()
        stop.wait()
    print("Server stopped")


def add_commands(subparsers) -> None:
    """Registers serve, query, push and rollback on the `towerflow` subparsers."""
    from towerflow.serving.tfserving import add_tfserving_flags

    serve = subparsers.add_parser("serve", help="serve the pushed models (TF Serving if installed, else embedded)")
    serve.add_argument("--serving-root", default=DEFAULT_SERVING_ROOT, help="where `towerflow push` puts models")
    serve.add_argument("--model-config-file", default=None, help="default: <serving-root>/models.config")
    serve.add_argument("--model-name", default=None, help="serve one model (with --model-base-path), no config")
    serve.add_argument("--model-base-path", default=None)
    serve.add_argument("--backend", choices=["auto", "embedded", "tfserving"], default="auto")
    serve.add_argument("--host", default="127.0.0.1", help="embedded server's bind address (0.0.0.0 in containers)")
    serve.add_argument("--port", type=int, default=8500, help="gRPC port")
    serve.add_argument("--rest-api-port", type=int, default=8501)
    serve.add_argument("--poll-seconds", type=float, default=1.0, help="file system poll interval")
    serve.add_argument("--enable-batching", action="store_true", help="merge concurrent predicts server-side")
    serve.add_argument("--max-batch-size", type=int, default=32)
    serve.add_argument("--batch-timeout-micros", type=int, default=2000)
    serve.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024)
    serve.add_argument("--max-instances", type=int, default=1024, help="rows per predict request")
    add_tfserving_flags(serve)
    serve.set_defaults(func=_serve)

    query = subparsers.add_parser("query", help="send a predict / status / metadata request to a model server")
    query.add_argument("--model", required=True)
    query.add_argument("--json", default=None, help="predict body, or @file.json")
    query.add_argument("--url", default="http://127.0.0.1:8501", help="REST endpoint")
    query.add_argument("--grpc", default=None, help="use gRPC at HOST:PORT instead of REST")
    query.add_argument("--version", type=int, default=None)
    query.add_argument("--label", default=None)
    query.add_argument("--signature", default=None)
    query.add_argument("--status", action="store_true", help="model status instead of predict")
    query.add_argument("--metadata", action="store_true", help="signature metadata instead of predict")
    query.add_argument("--timeout", type=float, default=10.0)
    query.add_argument("--compact", action="store_true", help="one-line JSON")
    query.set_defaults(func=_query)

    push = subparsers.add_parser("push", help="push a SavedModel to the serving root as the next version")
    push.add_argument("--model", required=True, help="model name (e.g. two_tower, ranker)")
    push.add_argument("--saved-model", default=None, help="a SavedModel dir or a Trainer Model artifact uri")
    push.add_argument(
        "--from-run",
        default=None,
        help="the newest trained model of this run dir, if its evaluators blessed it",
    )
    push.add_argument(
        "--ignore-blessing", action="store_true", help="with --from-run: push even if not blessed (recorded in MLMD)"
    )
    push.add_argument("--serving-root", default=DEFAULT_SERVING_ROOT)
    push.add_argument("--canary", action="store_true", help="label the new version canary, keep stable")
    push.add_argument("--keep-versions", type=int, default=2, help="versions kept loaded")
    push.set_defaults(func=_push)

    rollback = subparsers.add_parser("rollback", help="serve a previous version again")
    rollback.add_argument("--model", required=True)
    rollback.add_argument("--to", type=int, default=None, help="version (default: the one before stable)")
    rollback.add_argument("--serving-root", default=DEFAULT_SERVING_ROOT)
    rollback.set_defaults(func=_rollback)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (`python -m ...`): the `towerflow` CLI itself, so errors read the same."""
    from towerflow.cli.main import main as towerflow_main

    return towerflow_main(argv)


if __name__ == "__main__":
    sys.exit(main())
