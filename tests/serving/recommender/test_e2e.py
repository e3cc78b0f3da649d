"""End to end on a real pipeline run: the pushed models on the embedded model server, a real Redis store.

* replay: with the store materialized as of the test cut-off, /v1/recommend (explore off, k 100, re-ranking
  off) for every ml-100k test user reproduces the offline evaluation's Recall@100 and NDCG@10 of the same
  pushed models within 0.005; the default re-ranking costs at most 2% NDCG@10 and raises diversity and
  coverage of the top 10;
* the model server stopped mid-run: every request still gets 200, with `fallback` set;
* a push under load: the service moves to the new two-tower version together with ITS index, never
  pairing a query tower with another version's item embeddings.
"""

import dataclasses
import math
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from towerflow.components.index.scann_index import ScannIndex
from towerflow.components.pusher import model_repository
from towerflow.serving.feature_store import FeatureStore, StoreConfig
from towerflow.serving.feature_store.server import LocalRedis, LocalRedisConfig, connect
from towerflow.serving.model_server import ModelServer, ServerOptions
from towerflow.serving.recommender.app import create_app
from towerflow.serving.recommender.config import ServiceConfig
from towerflow.serving.recommender.replay import replay
from towerflow.serving.recommender.runner import ServiceServer, build_recommender
from towerflow.serving.recommender.served import read_evaluation

pytestmark = pytest.mark.e2e

GENEROUS = {"features": 5000, "retrieval": 5000, "ranking": 5000, "reranking": 5000, "exploration": 5000}


@pytest.fixture(scope="module")
def world(pipeline_run, tmp_path_factory):
    """(run dir, serving root copy, store, test EvalSet, as_of, item genres, offline numbers)."""
    import shutil

    from towerflow.cli.main import main as towerflow
    from towerflow.components.evaluation.offline import OfflineData
    from towerflow.pipeline import mlmd

    config, _, _ = pipeline_run
    run_dir = Path(config.metadata_path).parent
    tmp = tmp_path_factory.mktemp("service_e2e")
    if not (Path(config.serving_root) / model_repository.CONFIG_FILE).is_file():
        pytest.skip(f"the pipeline run pushed no models to {config.serving_root} (not blessed): nothing to serve")
    # a copy: the push test below adds versions, the other e2e tests keep the run's serving root as it was
    serving_root = tmp / "serving"
    shutil.copytree(config.serving_root, serving_root)
    config_file = serving_root / model_repository.CONFIG_FILE
    config_file.write_text(config_file.read_text().replace(str(Path(config.serving_root).resolve()), str(serving_root)))
    redis_server = LocalRedis(LocalRedisConfig(data_dir=str(tmp / "redis"), appendfsync="no")).start()
    assert towerflow(["features", "materialize", "--run-dir", str(run_dir), "--as-of", "test-cutoff",
                      "--redis-url", redis_server.url]) == 0  # fmt: skip
    artifacts = mlmd.latest_artifacts(config.metadata_path)
    data = OfflineData.from_artifacts(artifacts["Ingestion.examples"], artifacts["Ingestion.item_catalog"])
    eval_set = data.eval_set()
    state = model_repository.model_state(serving_root, "ranker")
    offline = read_evaluation(Path(state.base_path) / str(state.default_version))
    assert offline, "the ranker was pushed without its evaluation"
    client = connect(redis_server.url)
    store = FeatureStore(client, StoreConfig())
    genres = {item: list(g) for item, g in data.catalog["item_genres"].items()}
    yield run_dir, serving_root, store, eval_set, math.ceil(eval_set.cutoff), genres, offline
    client.close()
    redis_server.stop()


@pytest.fixture(scope="module")
def model_server(world):
    _, serving_root, *_ = world
    options = ServerOptions(
        model_config_file=str(serving_root / model_repository.CONFIG_FILE),
        port=0, rest_api_port=0, file_system_poll_wait_seconds=0.5,
    )  # fmt: skip
    with ModelServer(options) as server:
        yield server


def service_config(**sections) -> ServiceConfig:
    values = {"budgets_ms": GENEROUS, "limits": {"rate_per_second": 10_000, "burst": 10_000}}
    values.update(sections)
    return ServiceConfig.from_dict(values)


def test_replay_reproduces_offline_metrics(world, model_server):
    _, serving_root, store, eval_set, as_of, genres, offline = world
    depth = int(offline["rerank_depth"])
    plain = service_config(
        retrieval={"top_n": depth},
        reranking={"diversity_lambda": 1.0, "freshness_boost": 0.0, "novelty_weight": 0.0},
        cold_start={"popularity_candidates": 0},
    )
    recommender = build_recommender(store, serving_root, model_server.grpc_target, None, plain)
    try:
        assert recommender.watcher.current is not None, recommender.watcher.last_error
        assert recommender.watcher.current.rerank_weight == offline["rerank_weight"]
        with ServiceServer(create_app(recommender)) as server, httpx.Client(timeout=60) as http:
            result = replay(lambda b: http.post(f"{server.url}/v1/recommend", json=b).json(), eval_set, as_of, genres)
        default = dataclasses.replace(
            ServiceConfig(),
            retrieval=plain.retrieval,
            cold_start=plain.cold_start,
            budgets_ms=plain.budgets_ms,
            limits=plain.limits,
        )  # the default re-ranking (diversity, freshness), everything else as in the plain replay
        recommender_default = build_recommender(store, serving_root, model_server.grpc_target, None, default)
        reranked = replay(recommender_default.recommend, eval_set, as_of, genres)
        recommender_default.close()
    finally:
        recommender.close()
    # The score the service serves: two_tower+dcn+pop when the pushed evaluation has a popularity weight
    served_as = "two_tower+dcn+pop" if (offline.get("popularity_weight") or 0) > 0 else "two_tower+dcn"
    reference = offline["metrics"][served_as]
    print(
        f"\nreplay of {served_as}: Recall@100 {result.metrics['recall@100']:.4f} "
        f"(offline {reference['recall@100']:.4f}), "
        f"NDCG@10 {result.metrics['ndcg@10']:.4f} (offline {reference['ndcg@10']:.4f}); users {len(eval_set)} "
        f"{result.user_states}\ndefault re-ranking: NDCG@10 {reranked.metrics['ndcg@10']:.4f} vs "
        f"{result.metrics['ndcg@10']:.4f}, diversity@10 {reranked.metrics['diversity@10']:.4f} vs "
        f"{result.metrics['diversity@10']:.4f}, coverage@10 {reranked.metrics['coverage@10']:.4f} vs "
        f"{result.metrics['coverage@10']:.4f}"
    )
    assert result.fallbacks == 0 and reranked.fallbacks == 0
    assert all(len(items) == 100 for items in result.lists)
    assert abs(result.metrics["recall@100"] - reference["recall@100"]) <= 0.005
    assert abs(result.metrics["ndcg@10"] - reference["ndcg@10"]) <= 0.005
    # The goal: the default re-ranking costs at most 2% NDCG@10 while raising intra-list diversity and
    # coverage of the top 10. Its settings were chosen on the eval window of another run
    # (serving/recommender/rerank_selection.py; benchmarks/results/reranking.md), in units of each request's
    # score scale; this run's test window is held out. (With the earlier absolute units, chosen when the service
    # served retrieval + DCN, coverage@10 fell on one fresh run: 0.0541 -> 0.0529.) A miss is reported as an
    # expected failure with the numbers, never loosened.
    missed = []
    cost = 1.0 - reranked.metrics["ndcg@10"] / result.metrics["ndcg@10"]
    if cost > 0.02:
        missed.append(f"costs {cost:.2%} NDCG@10 (goal <= 2%)")
    for metric in ("diversity@10", "coverage@10"):
        if not reranked.metrics[metric] > result.metrics[metric]:
            missed.append(f"{metric} {result.metrics[metric]:.4f} -> {reranked.metrics[metric]:.4f} (goal: raised)")
    if missed:
        pytest.xfail(f"default re-ranking {'; '.join(missed)}: open goal of the service issue")


class Load:
    """Threads sending one fixed request until stopped; keeps (time, status, body)."""

    def __init__(self, url: str, body: dict, threads: int = 2, max_requests: int = 20_000):
        self.url, self.body, self.max = url, body, max_requests
        self.results: list = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self):
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set() and len(self.results) < self.max:
                r = client.post(f"{self.url}/v1/recommend", json=self.body)
                self.results.append((time.monotonic(), r.status_code, r.json()))

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(60)


def test_push_swaps_model_and_index_together(world, model_server, tmp_path):
    _, serving_root, store, eval_set, as_of, _, _ = world
    cfg = service_config(retrieval={"version_poll_seconds": 0.2}, ranking={"enabled": False})
    recommender = build_recommender(store, serving_root, model_server.grpc_target, None, cfg)
    body = {"user_id": eval_set.user_ids[0], "k": 20, "context": {"timestamp": as_of}, "explore": False}
    try:
        old = recommender.watcher.current
        expected = {old.two_tower: [i["item_id"] for i in recommender.recommend(body)["items"]]}
        # the next version: the same towers with an index whose item embeddings are negated, so its
        # lists differ completely -- a query searched in the wrong version's index would show
        state = model_repository.model_state(serving_root, "two_tower")
        version_dir = Path(state.base_path) / str(old.two_tower)
        flipped = ScannIndex.build(old.index.ids, -old.index.embeddings)
        flipped.save(str(tmp_path / "index"))
        with ServiceServer(create_app(recommender)) as server, Load(server.url, body) as load:
            time.sleep(0.5)
            pushed = model_repository.push(serving_root, "two_tower", version_dir, extras={"index": tmp_path / "index"})
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and recommender.watcher.current.two_tower != pushed.version:
                time.sleep(0.1)
            time.sleep(1.0)
        assert recommender.watcher.current.two_tower == pushed.version
        expected[pushed.version] = [i["item_id"] for i in recommender.recommend(body)["items"]]
        assert expected[pushed.version] != expected[old.two_tower]
        assert load.results and all(code == 200 for _, code, _ in load.results)
        seen_versions = []
        for _, _, response in load.results:
            version = response["model_versions"]["two_tower"]
            assert response["fallback"] is None
            assert [i["item_id"] for i in response["items"]] == expected[version]
            if not seen_versions or seen_versions[-1] != version:
                seen_versions.append(version)
        assert seen_versions[0] == old.two_tower and pushed.version in seen_versions
    finally:
        recommender.close()


def test_model_server_stopped_mid_run(world, tmp_path):
    _, serving_root, store, eval_set, as_of, _, _ = world
    options = ServerOptions(model_config_file=str(serving_root / model_repository.CONFIG_FILE), port=0, rest_api_port=0)
    server = ModelServer(options).start()
    cfg = service_config(budgets_ms={**GENEROUS, "retrieval": 500, "ranking": 500})
    recommender = build_recommender(store, serving_root, server.grpc_target, None, cfg)
    body = {"user_id": eval_set.user_ids[0], "k": 10, "context": {"timestamp": as_of}}
    try:
        with ServiceServer(create_app(recommender)) as service, Load(service.url, body) as load:
            time.sleep(1.0)
            stopped_at = time.monotonic()
            server.stop()
            time.sleep(2.0)
            ready = httpx.get(f"{service.url}/readyz")
        assert load.results and all(code == 200 for _, code, _ in load.results)
        before = [b for t, _, b in load.results if t < stopped_at]
        after = [b for t, _, b in load.results if t > stopped_at + 1.0]
        assert before and all(b["fallback"] is None for b in before)
        assert after and all(b["fallback"] and b["fallback"]["stage"] == "retrieval" for b in after)
        assert all(len(b["items"]) == 10 for b in after)
        assert ready.status_code == 503 and ready.json()["model_server"] is False
    finally:
        recommender.close()
        server.stop()


def test_rest_protocol_gives_the_same_lists(world, model_server):
    _, serving_root, store, eval_set, as_of, _, _ = world
    lists = {}
    for protocol in ("grpc", "rest"):
        cfg = service_config(retrieval={"protocol": protocol})
        recommender = build_recommender(store, serving_root, model_server.grpc_target, model_server.rest_url, cfg)
        try:
            lists[protocol] = [
                [i["item_id"] for i in recommender.recommend(
                    {"user_id": u, "k": 20, "context": {"timestamp": as_of}, "explore": False})["items"]]
                for u in eval_set.user_ids[:5]
            ]  # fmt: skip
        finally:
            recommender.close()
    assert lists["rest"] == lists["grpc"] and all(len(x) == 20 for x in lists["grpc"])


def test_item_embeddings_match_the_pushed_index(world):
    """The pushed index is the IndexBuilder's: its ids are the catalog, its rows unit-norm tower outputs."""
    _, serving_root, _, eval_set, *_ = world
    state = model_repository.model_state(serving_root, "two_tower")
    index = ScannIndex.load(str(model_repository.extras_dir(Path(state.base_path) / str(state.on_disk[0])) / "index"))
    assert set(index.ids.tolist()) == set(eval_set.catalog)
    assert np.allclose(np.linalg.norm(index.embeddings, axis=1), 1.0, atol=1e-3)


def test_service_command_over_a_run_directory(world, tmp_path):
    """`towerflow service --run-dir` alone: embedded model server, embedded store materialized on first start."""
    import os
    import shutil
    import signal
    import subprocess
    import sys

    from towerflow.serving.recommender.runner import free_port

    run_dir, serving_root, *_ = world
    run = tmp_path / "run"  # the run's metadata and pushed models; the store starts empty here
    run.mkdir()
    shutil.copy(run_dir / "metadata.sqlite", run / "metadata.sqlite")
    shutil.copytree(serving_root, run / "serving")
    config_file = run / "serving" / model_repository.CONFIG_FILE
    config_file.write_text(config_file.read_text().replace(str(serving_root), str(run / "serving")))
    port = free_port()
    log = open(tmp_path / "service.log", "w")
    env = {**os.environ, "TOWERFLOW_API_TOKEN": "e2e-token", "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(
        [sys.executable, "-m", "towerflow.cli.main", "service", "--run-dir", str(run), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert process.poll() is None, (tmp_path / "service.log").read_text()[-3000:]
        r = httpx.post(f"{url}/v1/recommend", json={"user_id": "1", "k": 10}, timeout=30)
        assert r.status_code == 200 and len(r.json()["items"]) == 10 and r.json()["fallback"] is None, r.text
        event = {"user_id": "1", "item_id": r.json()["items"][0]["item_id"], "event_type": "click"}
        r = httpx.post(f"{url}/v1/events", json=event, headers={"Authorization": "Bearer e2e-token"}, timeout=30)
        assert r.status_code == 200, r.text
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(60)
        log.close()
    output = (tmp_path / "service.log").read_text()
    assert "materializing" in output and "Recommender service stopped" in output, output[-3000:]
