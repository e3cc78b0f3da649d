"""`towerflow service`: the recommender service over a run directory's pushed models and feature store.

    towerflow service --run-dir runs/local                               # everything embedded, on loopback
    towerflow service --run-dir runs/local --model-server 127.0.0.1:8500 --redis-url redis://127.0.0.1:6379/0
    towerflow service --run-dir runs/local --config service.yaml --token-file ~/.towerflow-token --port 8080

Without --model-server the embedded TF-Serving-protocol server is started on
free loopback ports over <run-dir>/serving (as `towerflow serve` does); without
--redis-url the run's embedded feature store is opened (`open_store`) and, if
it holds no materialization yet, loaded from the run's ingestion first. The
API token comes from --token-file or TOWERFLOW_API_TOKEN; without one the
state-changing endpoints refuse. Ctrl-C stops the service and everything it
started.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path


def _serving_root(run_dir: Path) -> tuple[Path, str | None]:
    """The run's serving root, and why it holds no models when the run pushed none because none was blessed."""
    import json

    from towerflow.components.evaluation.model_evaluator import EVALUATION_FILE, FALLBACK_FILE
    from towerflow.components.pusher.model_repository import CONFIG_FILE, read_config
    from towerflow.pipeline import mlmd

    root = run_dir / "serving"
    if read_config(root / CONFIG_FILE).model_config_list.config:
        return root, None
    missing = f"no pushed models in {root} ({CONFIG_FILE} missing); run `towerflow run --output-dir {run_dir}` first"
    try:
        blessing = mlmd.latest_artifacts(str(run_dir / "metadata.sqlite")).get("ModelEvaluator.blessing")
    except FileNotFoundError:
        blessing = None
    if not blessing or not (Path(blessing) / EVALUATION_FILE).is_file():
        raise FileNotFoundError(missing)
    result = json.loads((Path(blessing) / EVALUATION_FILE).read_text())
    if result.get("blessed"):
        raise FileNotFoundError(missing)
    fallback_file = Path(blessing) / FALLBACK_FILE
    best = json.loads(fallback_file.read_text()).get("name") if fallback_file.is_file() else None
    reasons = "; ".join(result.get("reasons") or ["see the evaluation report"])
    return root, (
        f"the run's models were not blessed ({reasons}), so none was pushed; every request is answered from "
        f"recent popularity in the feature store{f' (the best baseline was {best})' if best else ''}"
    )


def _describe_run(run_dir: Path) -> str:
    """What the run's ML Metadata says was pushed (the service itself reads only the serving root)."""
    from towerflow.pipeline import mlmd

    try:
        artifacts = mlmd.latest_artifacts(str(run_dir / "metadata.sqlite"))
    except FileNotFoundError as err:
        return f"no lineage ({err})"
    pushed = [key.split(".")[0] for key in artifacts if key.endswith(".pushed_model")]
    blessing = artifacts.get("ModelEvaluator.blessing")
    return f"pushed by {', '.join(sorted(pushed)) or 'no pusher'}; evaluation {blessing or 'none'}"


def _redis_url_of(store) -> str:
    kwargs = store.client.connection_pool.connection_kwargs
    return f"redis://{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def _ensure_materialized(store, run_dir: Path) -> None:
    """Loads the store from the run's ingestion if it holds no feature set yet (`towerflow features materialize`)."""
    from towerflow.cli import features_commands
    from towerflow.serving.feature_store import NotMaterialized

    try:
        print(f"Feature store: feature set {store.feature_set_id}")
        return
    except NotMaterialized:
        pass
    print("Feature store is empty: materializing it from the run's ingestion")
    features_commands._materialize(
        argparse.Namespace(
            run_dir=str(run_dir), as_of=None, batch_size=20_000, redis_url=_redis_url_of(store),
            redis_cluster=None, serving_root=None,
        )
    )  # fmt: skip


def _service(args) -> None:
    import uvicorn

    from towerflow.serving.experiments import config as experiments_config
    from towerflow.serving.experiments.service import attach
    from towerflow.serving.feature_store import open_store
    from towerflow.serving.recommender.app import create_app, read_token
    from towerflow.serving.recommender.config import load_config
    from towerflow.serving.recommender.runner import build_recommender
    from towerflow.serving.web import create_router, example_users
    from towerflow.serving.web.lineage import LineageSummary

    run_dir = Path(args.run_dir).resolve()
    serving_root, no_model_reason = _serving_root(run_dir)
    print(f"Run {run_dir}: {_describe_run(run_dir)}")
    if no_model_reason:
        print(f"No models to serve: {no_model_reason}. Responses say so in `fallback`; /readyz reports it.")
    config = load_config(args.config)
    experiments = experiments_config.load(args.config) if args.config else experiments_config.ExperimentsConfig()
    token = read_token(args.token_file)
    with contextlib.ExitStack() as stack:
        grpc_target, rest_url = args.model_server, args.model_server_rest
        if not grpc_target and not rest_url:
            from towerflow.components.pusher.model_repository import CONFIG_FILE
            from towerflow.serving.model_server import ModelServer, ServerOptions

            config_file = serving_root / CONFIG_FILE
            if no_model_reason:  # nothing pushed: the server starts empty and loads what a later push brings
                serving_root.mkdir(parents=True, exist_ok=True)
                config_file.write_text("model_config_list {\n}\n")
            options = ServerOptions(model_config_file=str(config_file), port=0, rest_api_port=0)
            server = stack.enter_context(ModelServer(options))
            grpc_target, rest_url = server.grpc_target, server.rest_url
            print(f"Embedded model server: gRPC {grpc_target}, REST {rest_url}")
        store = stack.enter_context(open_store(run_dir=str(run_dir), redis_url=args.redis_url))
        _ensure_materialized(store, run_dir)
        recommender = build_recommender(store, serving_root, grpc_target, rest_url, config)
        recommender.watcher.no_model_reason = no_model_reason
        if no_model_reason:
            recommender.watcher.refresh()
        stack.callback(recommender.close)
        served = recommender.watcher.current
        metadata = str(run_dir / "metadata.sqlite")
        wired = attach(recommender, experiments, serving_root, experiments.log.dir or run_dir / "experiments", metadata)
        stack.callback(wired.close)
        examples = example_users(store, [str(u) for u in range(1, 201)])
        web = create_router(LineageSummary(metadata, serving_root), token, examples=examples)
        app = create_app(wired.recommender, token, routers=[web])
        models = served.versions if served else f"not loaded yet ({recommender.watcher.last_error})"
        auth = "set" if token else "NOT set: state-changing endpoints refuse"
        print(
            f"Recommender service on http://{args.host}:{args.port} -- models {models}, "
            f"feature set {store.feature_set_id}, token {auth}"
            f"\n  curl -s -X POST http://{args.host}:{args.port}/v1/recommend -H 'Content-Type: application/json' "
            """-d '{"user_id": "42", "k": 10}'\n(Ctrl-C stops)"""
        )
        sys.stdout.flush()
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    print("Recommender service stopped")


def add_commands(subparsers) -> None:
    """Registers `service` on the `towerflow` subparsers."""
    service = subparsers.add_parser("service", help="run the recommender service (HTTP API) over a run's models")
    service.add_argument("--run-dir", required=True, help="the `towerflow run --output-dir` directory")
    service.add_argument(
        "--model-server", default=None, help="TF Serving gRPC host:port (default: start the embedded server)"
    )
    service.add_argument("--model-server-rest", default=None, help="its REST URL (for retrieval.protocol: rest)")
    service.add_argument("--redis-url", default=None, help="external Redis (default: the run's embedded store)")
    service.add_argument("--host", default="127.0.0.1", help="bind address (loopback unless told otherwise)")
    service.add_argument("--port", type=int, default=8080)
    service.add_argument("--config", default=None, help="service YAML (serving/recommender/config.py)")
    service.add_argument("--token-file", default=None, help="API token file (else TOWERFLOW_API_TOKEN)")
    service.set_defaults(func=_service)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (`python -m ...`): the `towerflow` CLI itself, so errors read the same."""
    from towerflow.cli.main import main as towerflow_main

    return towerflow_main(argv)


if __name__ == "__main__":
    sys.exit(main())
