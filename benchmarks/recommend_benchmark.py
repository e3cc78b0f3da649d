"""Load benchmark of the recommender service: latency per stage and end to end, requests/s, on loopback.

    flock /tmp/towerflow-heavy.lock python benchmarks/recommend_benchmark.py --run-dir runs/local
    flock /tmp/towerflow-heavy.lock python benchmarks/recommend_benchmark.py --synthetic --items 1000000 \\
        --users 1000000 --out benchmarks/results/recommend.md --append

Everything runs as it would in production, each in its own process on this
machine: redis-server (the feature store), the embedded TF-Serving-protocol
model server, and `towerflow service` (FastAPI + uvicorn); the load generator
(this process: one thread and one keep-alive connection per concurrent client)
shares the same cores.

ml-100k: the pushed models of a `towerflow run` directory, the store
materialized from its ingestion. Synthetic: a 1M-item catalog and 1M users
with stand-in models of the same signatures (query_tower / candidate_tower /
ranker on raw features; embeddings from hashed ids, 64-d), the ScaNN index
over the candidate tower's 1M embeddings pushed with the two-tower as the
pipeline's pushers do, and a store materialized with a Zipf-distributed event
log. Requests name random users (so the query-embedding cache mostly misses)
and no timestamp (now). Bounded: `--requests` per concurrency level, at most
`--seconds` each.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from machine import cores, cpu_model, memory_gib  # noqa: E402 - benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
TOWERFLOW = [sys.executable, "-m", "towerflow.cli.main"]
STAGES = ("features", "retrieval", "ranking", "reranking", "exploration", "total")
GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")  # fmt: skip


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready at {url} after {timeout:.0f}s")


# --------------------------------------------------------------------------- synthetic world


def build_stand_in_models(root: Path, dim: int = 64) -> tuple[str, str]:
    """SavedModels with the pipeline's serving signatures; embeddings from hashed ids (unit norm)."""
    import tensorflow as tf

    from towerflow.models import features
    from towerflow.models.run_fns import RANKER_FEATURES

    specs = {}
    for key in RANKER_FEATURES:
        dtype = (
            tf.int64 if key in features.INT_FEATURES else tf.float32 if key in features.FLOAT_FEATURES else tf.string
        )
        specs[key] = tf.TensorSpec([None, None] if key in features.LIST_FEATURES else [None], dtype, name=key)

    class Towers(tf.Module):
        def __init__(self):
            super().__init__()
            rng = np.random.default_rng(0)
            self.table = tf.Variable(rng.standard_normal((1 << 16, dim)).astype(np.float32))

        def embed(self, ids):
            v = tf.gather(self.table, tf.strings.to_hash_bucket_fast(ids, 1 << 16))
            return tf.math.l2_normalize(v, axis=-1)

        def query(self, f):
            hist = tf.reduce_mean(self.embed(f[features.HIST_ITEM_IDS]), axis=1)
            hist = tf.where(tf.math.is_finite(hist), hist, 0.0)
            return tf.math.l2_normalize(self.embed(f[features.USER_ID]) + 0.5 * hist, axis=-1)

    towers = Towers()
    query_keys = {k: specs[k] for k in features.QUERY_FEATURES}
    cand_keys = {k: specs[k] for k in features.CANDIDATE_FEATURES}

    @tf.function(input_signature=[query_keys])
    def query_tower(f):
        return {"embedding": towers.query(f)}

    @tf.function(input_signature=[cand_keys])
    def candidate_tower(f):
        return {"embedding": towers.embed(f[features.ITEM_ID])}

    @tf.function(input_signature=[dict(specs)])
    def ranker(f):
        dot = tf.reduce_sum(towers.query(f) * towers.embed(f[features.ITEM_ID]), axis=-1)
        pop = tf.math.log1p(tf.cast(f[features.ITEM_RECENT_COUNT], tf.float32))
        score = 3.0 * dot + 0.1 * pop
        return {"interaction_score": score, "rating": 3.0 + score, "liked_probability": tf.sigmoid(score)}

    # the pipeline's rank_candidates: one query row ([1] inputs), N candidates, broadcast in the graph
    broadcast_specs = dict(specs)
    for key in features.QUERY_FEATURES:
        spec = specs[key]
        broadcast_specs[key] = tf.TensorSpec([1, *spec.shape[1:]], spec.dtype, name=key)

    @tf.function(input_signature=[broadcast_specs])
    def rank_candidates(f):
        n = tf.shape(f[features.ITEM_ID])[0]
        rows = dict(f)
        for key in features.QUERY_FEATURES:
            rows[key] = tf.repeat(f[key], n, axis=0)
        return ranker(rows)

    two_tower, ranker_dir = str(root / "two_tower_model"), str(root / "ranker_model")
    tf.saved_model.save(towers, two_tower, signatures={
        "serving_default": query_tower.get_concrete_function(), "query_tower": query_tower.get_concrete_function(),
        "candidate_tower": candidate_tower.get_concrete_function()})  # fmt: skip
    tf.saved_model.save(towers, ranker_dir, signatures={
        "serving_default": ranker.get_concrete_function(), "ranker": ranker.get_concrete_function(),
        "rank_candidates": rank_candidates.get_concrete_function()})  # fmt: skip
    return two_tower, ranker_dir


def synthetic_world(root: Path, items: int, users: int, events: int, redis_url: str, seed: int = 0) -> dict:
    """Stand-in models + index pushed into <root>/serving; the store materialized. Returns timings."""
    import tensorflow as tf

    from towerflow.components.index.scann_index import ScannIndex
    from towerflow.components.pusher import model_repository
    from towerflow.models import features
    from towerflow.serving.feature_store.materialize import MaterializeConfig, materialize
    from towerflow.serving.feature_store.server import connect

    took = {}
    rng = np.random.default_rng(seed)
    item_ids = np.array([f"m{n}" for n in range(items)])
    started = time.time()
    two_tower, ranker_dir = build_stand_in_models(root)
    model = tf.saved_model.load(two_tower)
    candidate = model.signatures["candidate_tower"]
    parts = []
    for s in range(0, items, 65536):
        chunk = item_ids[s : s + 65536]
        parts.append(candidate(
            item_id=tf.constant(chunk), item_title=tf.constant([""] * len(chunk)),
            item_genres=tf.constant([[""]] * len(chunk)), item_release_year=tf.zeros([len(chunk)], tf.int64),
        )["embedding"].numpy())  # fmt: skip
    embeddings = np.concatenate(parts)
    index = ScannIndex.build(item_ids, embeddings)
    index.save(str(root / "index"))
    (root / "evaluation.json").write_text(json.dumps({"rerank_weight": 0.25, "rerank_depth": 100}))
    serving = root / "serving"
    model_repository.push(serving, "two_tower", two_tower, extras={"index": root / "index"})
    model_repository.push(serving, "ranker", ranker_dir, extras={"evaluation.json": root / "evaluation.json"})
    took["models_and_index_s"] = time.time() - started

    started = time.time()
    now = int(time.time())
    genre_of = rng.integers(0, len(GENRES), size=(items, 2))
    item_rows = (
        {features.ITEM_ID: item_ids[n], features.ITEM_TITLE: f"Item {n}",
         features.ITEM_GENRES: sorted({GENRES[genre_of[n, 0]], GENRES[genre_of[n, 1]]}),
         features.ITEM_RELEASE_YEAR: 1950 + n % 75}
        for n in range(items)
    )  # fmt: skip
    ages = rng.integers(15, 70, size=users)
    user_rows = (
        {features.USER_ID: f"u{n}", features.USER_AGE: int(ages[n]), features.USER_GENDER: "FM"[n % 2],
         features.USER_OCCUPATION: "other", features.USER_ZIP: f"{n % 100000:05d}"}
        for n in range(users)
    )  # fmt: skip
    weights = 1.0 / np.arange(1, items + 1) ** 0.9
    weights /= weights.sum()

    def event_rows():
        done = 0
        while done < events:
            n = min(200_000, events - done)
            us = rng.integers(0, users, size=n)
            its = rng.choice(items, size=n, p=weights)
            ts = now - rng.integers(60, 60 * 86400, size=n)
            for j in range(n):
                yield f"u{us[j]}", item_ids[its[j]], 4.0, int(ts[j]), f"e{done + j}"
            done += n

    client = connect(redis_url)
    summary = materialize(client, MaterializeConfig(source="synthetic", require_known_items=False),
                          user_rows, item_rows, event_rows())  # fmt: skip
    client.close()
    took["materialize_s"] = time.time() - started
    took["materialized"] = summary.format()
    return took


# --------------------------------------------------------------------------- the load


class LoadClient:
    """One keep-alive HTTP/1.1 connection (http.client): the load generator shares the service's two cores, so
    it should spend as little CPU as it can; httpx took ~1.2 ms of CPU per request, this ~0.3 ms."""

    def __init__(self, url: str, timeout: float = 30.0):
        parsed = urllib.parse.urlparse(url)
        self.host, self.port, self.timeout = parsed.hostname, parsed.port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def post(self, path: str, payload: dict) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        body = json.dumps(payload).encode()
        self.conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = self.conn.getresponse()
        raw = response.read()
        if response.will_close:
            self.close()
        return response.status, raw

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


REQUESTED: set[str] = set()  # every user a level asked for (their cached query embeddings, between variants)


def run_level(url: str, users: list[str], concurrency: int, requests: int, seconds: float, k: int, seed: int):
    """`requests` recommend calls from `concurrency` client threads; per-request e2e ms and stage ms."""
    rng = np.random.default_rng(seed + concurrency)
    order = [users[i] for i in rng.integers(0, len(users), size=requests)]
    REQUESTED.update(order)
    lock, nxt = threading.Lock(), [0]
    e2e, stages, errors, fallbacks = [], {s: [] for s in STAGES}, [], 0
    deadline = time.monotonic() + seconds

    def worker():
        nonlocal fallbacks
        client = LoadClient(url)
        try:
            while time.monotonic() < deadline:
                with lock:
                    if nxt[0] >= len(order):
                        return
                    user = order[nxt[0]]
                    nxt[0] += 1
                t0 = time.perf_counter()
                try:
                    status, raw = client.post("/v1/recommend", {"user_id": user, "k": k})
                except (OSError, http.client.HTTPException) as err:
                    errors.append(str(err))
                    client.close()
                    continue
                ms = (time.perf_counter() - t0) * 1000
                if status != 200:
                    errors.append(f"HTTP {status}: {raw[:200]!r}")
                    continue
                body = json.loads(raw)
                with lock:
                    e2e.append(ms)
                    for s in STAGES:
                        stages[s].append(body["timings_ms"].get(s, 0.0))
                    fallbacks += body["fallback"] is not None
        finally:
            client.close()

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    elapsed = time.perf_counter() - started
    return {"e2e": np.array(e2e), "stages": {s: np.array(v) for s, v in stages.items()}, "errors": errors,
            "fallbacks": fallbacks, "rps": len(e2e) / elapsed, "n": len(e2e)}  # fmt: skip


def variant_env(env: dict, pythonpath: str) -> dict:
    """The environment that makes `python -m towerflow...` import towerflow from `pythonpath` (a checkout or a
    snapshot whose root holds the `towerflow` package); the processes run in a directory without one, because
    `-m` puts the working directory first on sys.path, before PYTHONPATH."""
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)}


def code_location(env: dict, cwd: Path) -> str:
    """Where a process started with `env` in `cwd` imports the service code from (printed with the results)."""
    probe = "import os, towerflow.serving as s; print(os.path.dirname(os.path.realpath(s.__file__)))"
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds so far of each named process (this process included as "client")."""
    import psutil

    out = {}
    for name, pid in pids.items():
        try:
            times = psutil.Process(pid).cpu_times()
            out[name] = times.user + times.system
        except psutil.Error:
            out[name] = float("nan")
    return out


def drop_cached_embeddings(redis_url: str, users: list[str]) -> None:
    """Empties the users' query-embedding cache entries (the next variant must not inherit the last one's)."""
    from towerflow.serving.feature_store import FeatureStore, StoreConfig
    from towerflow.serving.feature_store.server import connect

    client = connect(redis_url)
    store = FeatureStore(client, StoreConfig())
    for user in users:
        store.invalidate_user_embeddings(user)
    client.close()
    print(f"dropped the cached query embeddings of {len(users):,} users", flush=True)


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGINT to each process, last started first; a process still running after 30 s is killed."""
    for proc in reversed(procs):
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def measure(args, name: str, setup: dict, url: str, users: list[str], pids: dict[str, int], emit) -> None:
    """One service: every concurrency level, the tables and the target line."""
    emit(f"## {name}")
    emit()
    emit(f"Machine: {cpu_model()}, {cores()} cores, {memory_gib()}; {platform.platform()}; "
         f"Python {platform.python_version()}. Loopback; redis-server, model server, service and this "
         f"load generator each a process on the same cores.")  # fmt: skip
    emit(f"Set-up: {setup}")
    emit(f"Requests: k={args.k}, random users, no timestamp (now), explore on; {args.requests} per level "
         f"(at most {args.seconds:.0f}s). Load average (1 min) before: {os.getloadavg()[0]:.1f}.")  # fmt: skip
    emit()
    emit("| concurrency | req/s | errors | fallbacks | e2e p50 | e2e p95 | e2e p99 | "
         + " | ".join(f"{s} p50/p95/p99" for s in STAGES[:-1]) + " | load avg (1 min) |")  # fmt: skip
    emit("|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * (len(STAGES) - 1) + "---:|")
    results, cpu_rows, gc_rows = {}, [], {}
    for c in [int(x) for x in args.concurrency.split(",")]:
        run_level(url, users, c, min(50, args.requests), 20, args.k, seed=99)  # warm-up, not counted
        gc_before = gc_pauses(httpx.get(f"{url}/metrics").text, generation=2)
        before = cpu_seconds(pids)
        r = run_level(url, users, c, args.requests, args.seconds, args.k, seed=0)
        after = cpu_seconds(pids)
        gc_after = gc_pauses(httpx.get(f"{url}/metrics").text, generation=2)
        results[c] = r
        cpu_rows.append((c, {n: (after[n] - before[n]) * 1000 / max(1, r["n"]) for n in pids}))
        if gc_before is not None and gc_after is not None:  # the service's full collections during the level
            gc_rows[c] = (gc_after[0] - gc_before[0], (gc_after[1] - gc_before[1]) * 1000)
        cells = [f"{pct(r['stages'][s], 50):.1f}/{pct(r['stages'][s], 95):.1f}/{pct(r['stages'][s], 99):.1f}"
                 for s in STAGES[:-1]]  # fmt: skip
        emit(f"| {c} | {r['rps']:.1f} | {len(r['errors'])} | {r['fallbacks']} | {pct(r['e2e'], 50):.1f} | "
             f"{pct(r['e2e'], 95):.1f} | {pct(r['e2e'], 99):.1f} | " + " | ".join(cells)
             + f" | {os.getloadavg()[0]:.1f} |")  # fmt: skip
        if r["errors"]:
            print("first errors:", r["errors"][:3], flush=True)
    emit()
    emit("CPU per request (ms, user + system, of each process over the level's requests):")
    emit()
    emit("| concurrency | " + " | ".join(pids) + " | total | service full GCs (count, ms in all) |")
    emit("|---:|" + "---:|" * (len(pids) + 1) + "---:|")
    for c, row in cpu_rows:
        gcs = f"{gc_rows[c][0]:.0f}, {gc_rows[c][1]:.0f}" if c in gc_rows else "n/a"
        emit(f"| {c} | " + " | ".join(f"{v:.1f}" for v in row.values()) + f" | {sum(row.values()):.1f} | {gcs} |")
    emit()
    target = 50.0 if args.synthetic else 25.0
    if 4 in results:
        p99 = pct(results[4]["e2e"], 99)
        verdict = "MET" if p99 < target else f"MISSED by {p99 - target:.1f} ms ({p99 / target:.2f}x)"
        emit(f"Target: e2e p99 < {target:.0f} ms at concurrency 4: {p99:.1f} ms, {verdict}. "
             f"Errors at all levels: {sum(len(r['errors']) for r in results.values())}.")  # fmt: skip
    metrics = httpx.get(f"{url}/metrics").text
    emit(f"Query-embedding cache hit ratio over the run: {cache_hit_ratio(metrics, 'towerflow_embedding_cache'):.2f}")
    if "towerflow_item_popularity_cache_total" in metrics:  # older checkouts have no point-in-time cache
        ratio = cache_hit_ratio(metrics, "towerflow_item_popularity_cache")
        emit(f"Candidates' point-in-time popularity answered from the service's cache: {ratio:.2f} of items")
    full = gc_pauses(metrics, generation=2)
    if full is not None:
        count, total, slowest = full
        emit(f"Service full garbage collections since it started (its start-up, before the heap is frozen, "
             f"included): {count:.0f}, {total * 1000:.0f} ms in all, the slowest {slowest}.")  # fmt: skip
    emit()


def cache_hit_ratio(metrics_text: str, counter: str) -> float:
    """hits / (hits + misses) of a counter with a `result` label, from the Prometheus text."""
    counts = {"hit": 0.0, "miss": 0.0}
    for line in metrics_text.splitlines():
        for result in counts:
            if line.startswith(f'{counter}_total{{result="{result}"}}'):
                counts[result] += float(line.split()[-1])
    return counts["hit"] / max(1.0, counts["hit"] + counts["miss"])


def gc_pauses(metrics_text: str, generation: int) -> tuple[float, float, str] | None:
    """(count, seconds in all, the slowest as its histogram bucket) of towerflow_gc_pause_seconds{generation}."""
    prefix = f'towerflow_gc_pause_seconds_bucket{{generation="{generation}",le="'
    buckets = [(line[len(prefix) :].split('"')[0], float(line.split()[-1]))
               for line in metrics_text.splitlines() if line.startswith(prefix)]  # fmt: skip
    total = [float(line.split()[-1]) for line in metrics_text.splitlines()
             if line.startswith(f'towerflow_gc_pause_seconds_sum{{generation="{generation}"}}')]  # fmt: skip
    if not buckets or not total:
        return None
    count, previous, slowest = buckets[-1][1], 0.0, "none"
    for upper, cumulative in buckets:  # the last bucket that gained counts holds the slowest pause
        if cumulative > previous:
            slowest = f"<= {float(upper) * 1000:g} ms" if upper != "+Inf" else f"> {float(buckets[-2][0]) * 1000:g} ms"
        previous = cumulative
    return count, total[0], slowest


def check_service_config(path: str | None) -> str | None:
    """None if the service would accept the YAML at `path` (None: the default config), else why not."""
    from towerflow.serving.recommender.config import load_config

    try:
        load_config(path or None)
    except (OSError, ValueError) as err:
        return str(err)
    return None


def service_config_file(path: str | None, out: Path, log_dir: Path) -> None:
    """Writes to `out` the service YAML at `path` (None: the default config) with its relative `rules_file`
    made absolute (relative to `path`, as load_config reads it) and the experiment log in `log_dir`: the
    service logs impressions (serving/experiments), which go to the benchmark's temporary directory, not
    into the run directory the benchmark only reads."""
    import yaml

    config = (yaml.safe_load(Path(path).read_text()) if path else None) or {}
    rules = (config.get("reranking") or {}).get("rules_file")
    if rules and not Path(rules).is_absolute():
        config["reranking"]["rules_file"] = str((Path(path).parent / rules).resolve())
    config.setdefault("experiments", {}).setdefault("log", {})["dir"] = str(log_dir)
    out.write_text(yaml.safe_dump(config))


def add_world_arguments(parser: argparse.ArgumentParser) -> None:
    """--run-dir (ml-100k) or --synthetic with its catalog size: the world a load benchmark runs on."""
    parser.add_argument("--run-dir", help="a `towerflow run` directory (ml-100k)")
    parser.add_argument("--synthetic", action="store_true", help="the synthetic catalog instead")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=3_000_000)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_world_arguments(parser)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=600, help="per concurrency level")
    parser.add_argument("--seconds", type=float, default=60.0, help="at most, per concurrency level")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--config", default=None, help="service YAML")
    parser.add_argument(
        "--before-pythonpath",
        default=None,
        help="first measure a service and model server started with this PYTHONPATH (e.g. a sitecustomize mapping "
        "towerflow to an older checkout), then this checkout's: same redis-server and store, one after the other",
    )
    parser.add_argument("--before-label", default="an older checkout", help="names the --before-pythonpath code")
    parser.add_argument("--out", help="write (or with --append, add to) this Markdown file")
    parser.add_argument("--append", action="store_true")
    args = parser.parse_args(argv)
    if bool(args.run_dir) == bool(args.synthetic):
        parser.error("give --run-dir or --synthetic")
    problem = check_service_config(args.config)
    if problem:
        parser.error(f"--config: {problem}")

    from towerflow.serving.feature_store.server import LocalRedis, LocalRedisConfig

    lines: list[str] = []

    def emit(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    procs: list[subprocess.Popen] = []
    tmp = Path(tempfile.mkdtemp(prefix="recommend-bench-"))
    redis_server = LocalRedis(LocalRedisConfig(data_dir=str(tmp / "redis"), appendfsync="everysec")).start()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TOWERFLOW_API_TOKEN": ""}
    try:
        if args.synthetic:
            name = f"synthetic, {args.items:,} items, {args.users:,} users, {args.events:,} events"
            print(f"Building the synthetic world ({name}) ...", flush=True)
            setup = synthetic_world(tmp, args.items, args.users, args.events, redis_server.url)
            serving_root, users = tmp / "serving", [f"u{n}" for n in range(args.users)]
            run_dir = tmp
        else:
            name = "ml-100k"
            run_dir = Path(args.run_dir).resolve()
            serving_root = run_dir / "serving"
            started = time.time()
            subprocess.run([*TOWERFLOW, "features", "materialize", "--run-dir", str(run_dir),
                            "--redis-url", redis_server.url], check=True, env=env, cwd=REPO)  # fmt: skip
            setup = {"materialize_s": round(time.time() - started, 1)}
            users = [str(u) for u in range(1, 944)]  # ml-100k's user ids
        if args.config:
            name += f", service config {Path(args.config).name}: {Path(args.config).read_text().strip()}"
        service_config_file(args.config, tmp / "service.yaml", tmp / "experiments")
        variants = [("this checkout", variant_env(env, str(REPO)))]
        if args.before_pythonpath:
            variants.insert(0, (f"BEFORE: the code of {args.before_label}",
                                variant_env(env, args.before_pythonpath)))  # fmt: skip
        for n, (label, variant) in enumerate(variants):
            if n:
                drop_cached_embeddings(redis_server.url, sorted(REQUESTED))  # each variant starts as cold
            # each variant gets its own model server, started from the same code as its service
            grpc_port, rest_port, service_port = free_port(), free_port(), free_port()
            log = open(tmp / "model_server.log", "a")
            model_server = subprocess.Popen(
                [*TOWERFLOW, "serve", "--serving-root", str(serving_root), "--backend", "embedded",
                 "--port", str(grpc_port), "--rest-api-port", str(rest_port)],
                stdout=log, stderr=subprocess.STDOUT, env=variant, cwd=tmp)  # fmt: skip
            procs.append(model_server)
            wait_http(f"http://127.0.0.1:{rest_port}/v1/models/ranker", 300, "model server")
            service_cmd = [*TOWERFLOW, "service", "--run-dir", str(run_dir), "--redis-url", redis_server.url]
            service_cmd += ["--model-server", f"127.0.0.1:{grpc_port}", "--port", str(service_port)]
            service_cmd += ["--config", str(tmp / "service.yaml")]
            log = open(tmp / "service.log", "a")
            service = subprocess.Popen(service_cmd, stdout=log, stderr=subprocess.STDOUT,
                                       env=variant, cwd=tmp)  # fmt: skip
            procs.append(service)
            url = f"http://127.0.0.1:{service_port}"
            wait_http(f"{url}/readyz", 600, "recommender service")
            title = name if len(variants) == 1 else f"{name} -- {label}"
            emit(f"<!-- {label}: towerflow imported from {code_location(variant, tmp)} -->")
            measure(args, title, setup, url, users,
                    {"service": service.pid, "model server": model_server.pid, "redis": redis_server.process.pid,
                     "client": os.getpid()}, emit)  # fmt: skip
            stop([model_server, service])
            procs.remove(service)
            procs.remove(model_server)
    finally:
        stop(procs)
        redis_server.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # the 1M world is ~1 GB of Redis files and index copies
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        text = "\n".join(lines) + "\n"
        if args.append and out.exists():
            text = out.read_text() + "\n" + text
        elif not args.append:
            text = "# Recommender service load benchmark\n\n" + text
        out.write_text(text)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
