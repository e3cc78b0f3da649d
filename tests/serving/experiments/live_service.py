"""A real recommender service over a pipeline run, for the experiments, abtest and web e2e tests.

embedded model server (gRPC, loopback) on a serving root + a real redis-server
materialized as of the test cut-off with `towerflow features materialize` +
the Recommender pinned to `stable`, wrapped by the experiments, with the web
router, served by uvicorn on a free loopback port. Everything is stopped on exit.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path

TOKEN = "experiments-test-token"
# Replays measure quality: on a 2-core machine shared with pipeline runs the default stage budgets (50-150 ms)
# are missed now and then, and a fallback list is not the models' list. Latency is the load benchmark's job.
REPLAY_BUDGETS_MS = {
    "features": 2000.0,
    "retrieval": 5000.0,
    "ranking": 5000.0,
    "reranking": 2000.0,
    "exploration": 2000.0,
}


@dataclass
class LiveService:
    url: str
    token: str
    store: object
    recommender: object
    experiments: object
    serving_root: Path
    metadata_path: str
    log_dir: Path


def prepare_run(pipeline_config, work: Path) -> tuple[Path, Path]:
    """(run dir, serving root) of our own: a copy of the run's MLMD file and the run's newest trained models
    pushed into a new serving root with `push_from_run` (which records the PushedModel that lineage reads).

    The pipeline's own push depends on its blessing gate; what these tests exercise is the online side, so
    they serve the trained models whether or not the gate let them through (a push past the gate is
    recorded as such in MLMD). Copies keep the session's run untouched: pushes, rollbacks and events stay here.
    """
    from towerflow.pipeline.push import push_from_run

    run_dir = work / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(pipeline_config.metadata_path, run_dir / "metadata.sqlite")
    serving_root = work / "serving"
    for model in ("two_tower", "ranker"):
        push_from_run(str(run_dir / "metadata.sqlite"), model, str(serving_root), ignore_blessing=True)
    return run_dir, serving_root


@contextlib.contextmanager
def live_service(
    run_dir: Path,
    serving_root: Path,
    work: Path,
    experiments: dict | None = None,
    reference=None,
    metadata_path: str | None = None,
):
    from towerflow.cli.main import main as towerflow_main
    from towerflow.components.pusher.model_repository import CONFIG_FILE
    from towerflow.serving.experiments.config import from_dict
    from towerflow.serving.experiments.service import attach, stable_watcher
    from towerflow.serving.feature_store import FeatureStore, StoreConfig
    from towerflow.serving.feature_store.server import LocalRedis, LocalRedisConfig, connect
    from towerflow.serving.model_server import ModelServer, ServerOptions
    from towerflow.serving.recommender.app import create_app
    from towerflow.serving.recommender.config import ServiceConfig
    from towerflow.serving.recommender.metrics import ServiceMetrics
    from towerflow.serving.recommender.recommender import Recommender
    from towerflow.serving.recommender.runner import ServiceServer
    from towerflow.serving.recommender.served import ModelClient
    from towerflow.serving.web import create_router, example_users
    from towerflow.serving.web.lineage import LineageSummary

    work.mkdir(parents=True, exist_ok=True)
    metadata_path = metadata_path or str(run_dir / "metadata.sqlite")
    with contextlib.ExitStack() as stack:
        options = ServerOptions(
            model_config_file=str(serving_root / CONFIG_FILE),
            port=0,
            rest_api_port=0,
            file_system_poll_wait_seconds=0.5,
        )
        model_server = stack.enter_context(ModelServer(options))
        redis_server = LocalRedis(LocalRedisConfig(data_dir=str(work / "redis"), appendfsync="no")).start()
        stack.callback(redis_server.stop)
        events = work / "events_root"
        code = towerflow_main(
            ["features", "materialize", "--run-dir", str(run_dir), "--as-of", "test-cutoff"]
            + ["--redis-url", redis_server.url, "--serving-root", str(events)]
        )
        assert code == 0, "materialize failed"
        client = connect(redis_server.url)
        stack.callback(client.close)
        store = FeatureStore(client, StoreConfig(events_dir=str(events / "events")))
        config = ServiceConfig.from_dict({"budgets_ms": REPLAY_BUDGETS_MS})
        model_client = ModelClient(grpc_target=model_server.grpc_target)

        def catalog() -> list[dict]:
            return [item for item in store.items(store.all_item_ids()) if item]

        watcher = stable_watcher(serving_root, model_client, config.ranking.default_weight, catalog=catalog)
        recommender = Recommender(store, watcher, config, ServiceMetrics())
        assert watcher.refresh(), watcher.last_error
        recommender.start()
        stack.callback(recommender.close)
        log_dir = work / "experiment_logs"
        wired = attach(recommender, from_dict(experiments), serving_root, log_dir, metadata_path, reference)
        stack.callback(wired.close)
        candidates = [str(u) for u in range(1, 944)]
        examples = example_users(store, candidates)
        web = create_router(LineageSummary(metadata_path, serving_root), TOKEN, examples=examples)
        server = stack.enter_context(ServiceServer(create_app(wired.recommender, TOKEN, routers=[web])))
        yield LiveService(server.url, TOKEN, store, recommender, wired, serving_root, metadata_path, log_dir)
