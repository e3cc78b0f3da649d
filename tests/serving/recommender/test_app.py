"""The HTTP API over real sockets (uvicorn), a real redis-server and a real Prometheus; stand-in models."""

import shutil
import subprocess
import threading
import time

import httpx
import pytest

from towerflow.serving.feature_store.server import LocalRedis, LocalRedisConfig
from towerflow.serving.recommender.app import create_app, read_token
from towerflow.serving.recommender.config import ServiceConfig
from towerflow.serving.recommender.runner import ServiceServer, free_port

TOKEN = "s3cret-token"


@pytest.fixture
def service(make_recommender):
    """service(config=None, token=TOKEN, routers=()) -> (base url, recommender, stand-in models)."""
    servers = []

    def start(config=None, token=TOKEN, routers=(), store=None):
        recommender, models = make_recommender(config, on_store=store)
        server = ServiceServer(create_app(recommender, token, routers)).start()
        servers.append(server)
        return server.url, recommender, models

    yield start
    for s in servers:
        s.stop()


def auth(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def test_recommend_over_http(service, world):
    url, _, _ = service()
    r = httpx.post(f"{url}/v1/recommend", json={"user_id": "warm", "k": 5, "context": {"timestamp": world.AS_OF}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 5 and body["user_state"] == "warm" and body["fallback"] is None
    assert set(body) >= {"items", "user_state", "model_versions", "fallback", "timings_ms", "request_id"}
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == {"two_tower": 1, "ranker": 1}


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"{not json", 400, "invalid request"),
        (b'["a list"]', 400, "invalid request"),
        (b'{"user_id": "warm", "k": 0}', 400, "k must be"),
        (b'{"user_id": "warm", "k": 201}', 400, "k must be"),
        (b'{"k": 3}', 400, "user_id"),
    ],
)
def test_bad_bodies_get_400(service, body, status, words):
    url, _, _ = service()
    r = httpx.post(f"{url}/v1/recommend", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status and words in r.json()["error"], r.text


def test_body_size_limit(service):
    url, _, _ = service(ServiceConfig.from_dict({"limits": {"max_body_bytes": 1000}}))
    big = {"user_id": "warm", "exclude": [f"item-{n}" for n in range(500)]}
    r = httpx.post(f"{url}/v1/recommend", json=big)
    assert r.status_code == 413 and "1000 bytes" in r.json()["error"]

    def chunks():  # no Content-Length: the limit holds on the streamed body too
        yield b'{"user_id": "warm", "exclude": ['
        for n in range(300):
            yield f'"item-{n}",'.encode()
        yield b'"x"]}'

    r = httpx.post(f"{url}/v1/recommend", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_rate_limit_per_client(service):
    # 0.1 token/s: no token comes back while the six requests run, even on a loaded machine
    url, _, _ = service(ServiceConfig.from_dict({"limits": {"rate_per_second": 0.1, "burst": 3}}))
    codes = [httpx.post(f"{url}/v1/recommend", json={"user_id": "warm", "k": 1}).status_code for _ in range(6)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429, 429]
    r = httpx.post(f"{url}/v1/recommend", json={"user_id": "warm", "k": 1})
    assert int(r.headers["Retry-After"]) >= 1 and "rate limit" in r.json()["error"]
    assert httpx.get(f"{url}/healthz").status_code == 200  # probes are not rate limited


def test_token_checks_on_state_changing_endpoints(service, world):
    url, _, _ = service()
    event = {"user_id": "fresh", "item_id": "i3", "event_type": "rating", "rating": 5, "timestamp": world.AS_OF - 5}
    assert httpx.post(f"{url}/v1/events", json=event).status_code == 401  # missing
    r = httpx.post(f"{url}/v1/events", json=event, headers=auth("wrong"))
    assert r.status_code == 403 and "wrong" in r.json()["error"]
    r = httpx.post(f"{url}/v1/events", json=event, headers={"Authorization": f"Basic {TOKEN}"})
    assert r.status_code == 401
    r = httpx.post(f"{url}/v1/events", json=event, headers=auth())
    assert r.status_code == 200, r.text
    features = httpx.get(f"{url}/v1/users/fresh/features", params={"as_of": world.AS_OF}, headers=auth())
    assert features.status_code == 200 and features.json()["features"]["hist_item_ids"] == ["i3"]
    assert httpx.get(f"{url}/v1/users/fresh/features").status_code == 401
    bad = httpx.post(f"{url}/v1/events", json={**event, "item_id": "no-such-item"}, headers=auth())
    assert bad.status_code == 400 and "unknown item" in bad.json()["error"]
    bad = httpx.post(f"{url}/v1/events", json={**event, "extra": 1}, headers=auth())
    assert bad.status_code == 400
    assert httpx.delete(f"{url}/v1/users/fresh").status_code == 401
    assert httpx.delete(f"{url}/v1/users/fresh", headers=auth("nope")).status_code == 403
    assert httpx.post(f"{url}/v1/rules:reload").status_code == 401


def test_no_token_configured_refuses(service, monkeypatch):
    monkeypatch.delenv("TOWERFLOW_API_TOKEN", raising=False)
    url, _, _ = service(token=read_token(None))
    for request in (
        lambda: httpx.post(f"{url}/v1/events", json={}, headers=auth()),
        lambda: httpx.delete(f"{url}/v1/users/warm", headers=auth()),
        lambda: httpx.post(f"{url}/v1/rules:reload", headers=auth()),
        lambda: httpx.get(f"{url}/v1/users/warm/features", headers=auth()),
    ):
        r = request()
        assert r.status_code == 403 and "no API token" in r.json()["error"]


def test_read_token(tmp_path):
    path = tmp_path / "token"
    path.write_text("abc\n")
    assert read_token(str(path), {}) == "abc"
    assert read_token(None, {"TOWERFLOW_API_TOKEN": "xyz"}) == "xyz"
    assert read_token(None, {}) is None
    path.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_token(str(path), {})


def test_rules_reload_endpoint(service, tmp_path, world):
    rules = tmp_path / "rules.yaml"
    rules.write_text("blocked_items: []\n")
    cfg = ServiceConfig.from_dict({"reranking": {"rules_file": str(rules), "rules_poll_seconds": 60}})
    url, _, _ = service(cfg)
    body = {"user_id": "warm", "k": 3, "context": {"timestamp": world.AS_OF}, "explore": False}
    top = httpx.post(f"{url}/v1/recommend", json=body).json()["items"][0]["item_id"]
    rules.write_text(f"blocked_items: [{top!r}]\nboosted_items: {{}}\n")
    r = httpx.post(f"{url}/v1/rules:reload", headers=auth())
    assert r.status_code == 200 and r.json()["rules"]["blocked_items"] == 1
    after = [i["item_id"] for i in httpx.post(f"{url}/v1/recommend", json=body).json()["items"]]
    assert top not in after
    rules.write_text("blocked_items: {not: a list}\n")
    r = httpx.post(f"{url}/v1/rules:reload", headers=auth())
    assert r.status_code == 400 and "previous rules stay" in r.json()["error"]
    again = [i["item_id"] for i in httpx.post(f"{url}/v1/recommend", json=body).json()["items"]]
    assert again == after


def test_extra_routers_are_mounted(service):
    from fastapi import APIRouter, Request

    router = APIRouter()

    @router.get("/experiments/ping")
    def ping(request: Request):
        return {"has_recommender": request.app.state.recommender is not None}

    url, _, _ = service(routers=[router])
    assert httpx.get(f"{url}/experiments/ping").json() == {"has_recommender": True}


def test_redis_killed_mid_run(service, own_redis, world):
    """Kill redis-server under load: recommend keeps answering 200 with `fallback`; events get 503, and the
    same event retried once Redis is back is stored."""
    server, store = own_redis
    url, recommender, _ = service(ServiceConfig.from_dict({"limits": {"rate_per_second": 10_000}}), store=store)
    results, stop = [], threading.Event()

    def load():
        with httpx.Client() as client:
            while not stop.is_set() and len(results) < 5000:
                r = client.post(f"{url}/v1/recommend", json={"user_id": "warm", "k": 5, "explore": False})
                results.append((time.monotonic(), r.status_code, r.json()))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    deadline = time.monotonic() + 30  # a loaded machine: some requests must have completed before the kill
    while len(results) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    killed_at = time.monotonic()
    server.kill()
    time.sleep(1.5)
    event = {"user_id": "warm", "item_id": "i3", "event_type": "click", "event_id": "ev-kill-1"}
    refused = httpx.post(f"{url}/v1/events", json=event, headers=auth())
    stop.set()
    for t in threads:
        t.join(30)
    assert results and all(code == 200 for _, code, _ in results), {c for _, c, _ in results}
    before = [body for t, _, body in results if t < killed_at]
    after = [body for t, _, body in results if t > killed_at + 0.2]
    assert before and all(b["fallback"] is None for b in before)
    assert after and all(b["fallback"] and b["fallback"]["stage"] == "features" for b in after)
    assert all(len(b["items"]) == 5 for b in after)  # the in-process popularity list
    assert refused.status_code == 503 and "NOT recorded" in refused.json()["error"]
    ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 503 and ready.json()["store"] is False

    # Redis back on the same port and data: the client's retry of the refused event is stored
    restarted = LocalRedis(LocalRedisConfig(data_dir=server.config.data_dir, port=server.port)).start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            retry = httpx.post(f"{url}/v1/events", json=event, headers=auth())
            if retry.status_code == 200:
                break
            time.sleep(0.2)
        assert retry.status_code == 200 and retry.json()["duplicate"] is False, retry.text
        assert "i3" in [e.item_id for e in store.user_events("warm")]
        ok = httpx.post(f"{url}/v1/recommend", json={"user_id": "warm", "k": 5}).json()
        assert ok["fallback"] is None
    finally:
        restarted.stop()


def test_metrics_endpoint_and_real_prometheus(service, tmp_path, world):
    prometheus = shutil.which("prometheus") or "/usr/bin/prometheus"
    url, _, _ = service()
    for user in ("warm", "light", "nobody"):
        httpx.post(f"{url}/v1/recommend", json={"user_id": user, "k": 5, "context": {"timestamp": world.AS_OF}})
    text = httpx.get(f"{url}/metrics").text
    assert 'towerflow_stage_latency_seconds_count{stage="retrieval"} 3.0' in text
    assert 'towerflow_recommend_responses_total{outcome="ok"} 3.0' in text
    assert "towerflow_feature_nulls_total" in text and "towerflow_model_version" in text
    port = free_port()
    host = url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: towerflow\n    static_configs:\n      - targets: ['{host}']\n"
    )
    log = open(tmp_path / "prometheus.log", "w")
    process = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        query = 'sum(towerflow_stage_latency_seconds_count{stage="retrieval"})'
        deadline, value = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}, timeout=2)
                result = r.json()["data"]["result"]
                if result:
                    value = float(result[0]["value"][1])
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.5)
        assert value == 3.0, (tmp_path / "prometheus.log").read_text()[-2000:]
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def test_dashboard_and_scrape_config_name_real_metrics(service, world):
    """Every metric the Grafana dashboard queries is one the service exports; the scrape config is valid."""
    import json
    import re
    from pathlib import Path

    deploy = Path(__file__).resolve().parents[3] / "deploy"
    dashboard = json.loads((deploy / "grafana" / "recommender.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    wanted = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"towerflow_\w+", e)}
    url, _, _ = service()
    httpx.post(f"{url}/v1/recommend", json={"user_id": "warm", "k": 3, "context": {"timestamp": world.AS_OF}})
    exported = httpx.get(f"{url}/metrics").text
    missing = [m for m in sorted(wanted) if m not in exported]
    assert not missing, missing
    promtool = shutil.which("promtool")
    if promtool:
        check = subprocess.run([promtool, "check", "config", str(deploy / "prometheus.yml")], capture_output=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_gc_pauses_are_measured_per_generation():
    import gc

    from prometheus_client import generate_latest

    from towerflow.serving.recommender.metrics import GC_BUCKETS, GcPauses, ServiceMetrics

    metrics, other = ServiceMetrics(), ServiceMetrics()  # one callback per process, every registry sees it
    assert sum(cb == GcPauses.install()._callback for cb in gc.callbacks) == 1

    def full_collections(registry) -> float:
        text = generate_latest(registry).decode()
        line = next(x for x in text.splitlines() if x.startswith('towerflow_gc_pause_seconds_count{generation="2"}'))
        return float(line.split()[-1])

    before = full_collections(metrics.registry)
    gc.collect(2)
    gc.collect(2)
    assert full_collections(metrics.registry) == before + 2 == full_collections(other.registry)
    pauses = GcPauses()
    pauses.observe(1, 0.003)  # into the 0.005 bucket
    counts, total = pauses.snapshot()[1]
    assert counts[GC_BUCKETS.index(0.005)] == 1 and sum(counts) == 1 and total == 0.003


def recommend_benchmark_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "benchmarks" / "recommend_benchmark.py"
    spec = importlib.util.spec_from_file_location("recommend_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_benchmark_reads_the_gc_pauses_back():
    from prometheus_client import CollectorRegistry, generate_latest

    from towerflow.serving.recommender.metrics import GcPauseCollector, GcPauses

    bench = recommend_benchmark_module()
    pauses, registry = GcPauses(), CollectorRegistry()
    registry.register(GcPauseCollector(pauses))
    for seconds in (0.0002, 0.03, 0.12):
        pauses.observe(2, seconds)
    count, total, slowest = bench.gc_pauses(generate_latest(registry).decode(), generation=2)
    assert count == 3 and abs(total - 0.1502) < 1e-9 and slowest == "<= 250 ms"
    pauses.observe(2, 3.0)
    assert bench.gc_pauses(generate_latest(registry).decode(), generation=2)[2] == "> 1000 ms"


def test_events_and_deletes_through_the_service_refresh_cached_item_popularity(service, own_redis, world):
    """Ranking's point-in-time popularity is cached per request time; the service's own writes drop it."""
    from towerflow.models import features

    _, store = own_redis
    url, recommender, _ = service(store=store)
    as_of = world.AS_OF

    def count(item):  # what the ranking stage reads for an item at as_of (recommender._item_details)
        return recommender.point_in_time.get([item], as_of, store.item_features_at)[0][features.ITEM_PRIOR_COUNT]

    assert count("i3") == 0
    store.record_event("light", "i3", "click", timestamp=as_of - 10)  # another writer: seen once the entry expires
    assert count("i3") == 0
    event = {"user_id": "fresh", "item_id": "i3", "event_type": "rating", "rating": 5, "timestamp": as_of - 5}
    assert httpx.post(f"{url}/v1/events", json=event, headers=auth()).status_code == 200
    assert count("i3") == 2
    assert httpx.delete(f"{url}/v1/users/fresh", headers=auth()).status_code == 200
    assert count("i3") == 1
    # 1 of the 4 lookups was answered from the cache: /metrics says so, and the benchmark reads it back
    metrics = httpx.get(f"{url}/metrics").text
    assert 'towerflow_item_popularity_cache_total{result="hit"} 1.0' in metrics
    assert 'towerflow_item_popularity_cache_total{result="miss"} 3.0' in metrics
    assert recommend_benchmark_module().cache_hit_ratio(metrics, "towerflow_item_popularity_cache") == 0.25


def test_benchmark_variants_import_the_code_they_name(tmp_path):
    """`--before-pythonpath` must run the named code: `python -m` puts the working directory first on sys.path,
    so from the repository's root the checkout's package shadows PYTHONPATH; the variants run elsewhere."""
    import os
    from pathlib import Path

    bench = recommend_benchmark_module()
    other = tmp_path / "other-checkout"
    (other / "towerflow" / "serving").mkdir(parents=True)
    (other / "towerflow" / "__init__.py").write_text("")
    (other / "towerflow" / "serving" / "__init__.py").write_text("")
    env = bench.variant_env(dict(os.environ), str(other))
    workdir = tmp_path / "work"
    workdir.mkdir()
    assert bench.code_location(env, workdir) == str((other / "towerflow" / "serving").resolve())
    repo = Path(bench.REPO)
    assert bench.code_location(env, repo) == str((repo / "serving").resolve())  # the trap the variants avoid
    checkout = bench.variant_env(dict(os.environ), str(repo))
    assert bench.code_location(checkout, workdir) == str((repo / "serving").resolve())
