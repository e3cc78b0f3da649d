"""Feature store speed: read latency, events/s and materialization time, on ml-100k and a synthetic 1M x 1M store.

    flock /tmp/towerflow-heavy.lock .venv/bin/python benchmarks/feature_store_benchmark.py --run-dir runs/fs
    ... --events-per-user 2 --synthetic-users 1000000 --synthetic-items 1000000   # the defaults
    ... --skip-synthetic                                                           # ml-100k only

Each dataset gets its own embedded redis-server (the default the CLI starts:
127.0.0.1, RDB + AOF, appendfsync always) in a temporary directory. Measured:
materialization wall time and Redis memory; p50/p99 of `query_features` for one
user (profile + full history -> history_features + context_features); p50/p99
of the ranker's item read for 100 random items (`item_rows`: features and
point-in-time popularity in one call); events/s of `record_event` from one client and from 8 threads.
The synthetic store is streamed: users, items and events are generated while
they are written, never held in a list. Figures are printed and written to
benchmarks/results/feature_store.md.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402

from towerflow.models import features  # noqa: E402
from towerflow.serving.feature_store import FeatureStore, StoreConfig  # noqa: E402
from towerflow.serving.feature_store.materialize import MaterializeConfig, materialize  # noqa: E402
from towerflow.serving.feature_store.server import LocalRedis, LocalRedisConfig, connect  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "feature_store.md"
GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller", "Documentary")


def percentiles(samples: list[float]) -> tuple[float, float]:
    ms = np.asarray(samples) * 1000.0
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def time_calls(fn, n: int, warmup: int = 200) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return percentiles(samples)


def ml100k_rows(run_dir: str):
    """(users, items, events, as_of of the newest event + 1) of the run's ingestion, streamed by the CLI code."""
    from towerflow.cli.features_commands import input_events, profile_rows, resolve_ingestion

    run = resolve_ingestion(run_dir)
    users, items = profile_rows(run)
    return run.source, users, items, input_events(run, None, lambda _: False)


def synthetic_rows(n_users: int, n_items: int, events_per_user: int, seed: int = 0):
    """Streams a store of n_users x n_items: popularity-skewed items (Zipf-like), one year of timestamps."""
    rng = np.random.default_rng(seed)
    start = 1_600_000_000
    year = 365 * 86400

    def users():
        for u in range(n_users):
            yield {features.USER_ID: f"u{u}", features.USER_AGE: int(18 + u % 50), features.USER_GENDER: "MF"[u % 2],
                   features.USER_OCCUPATION: "other", features.USER_ZIP: f"{u % 100000:05d}"}  # fmt: skip

    def items():
        for i in range(n_items):
            genres = [GENRES[i % len(GENRES)]]
            yield {features.ITEM_ID: f"i{i}", features.ITEM_TITLE: f"Item {i}", features.ITEM_GENRES: genres,
                   features.ITEM_RELEASE_YEAR: 1950 + i % 70}  # fmt: skip

    def events():
        chunk = 100_000
        n = 0
        for first in range(0, n_users, chunk):
            users_here = min(chunk, n_users - first)
            count = users_here * events_per_user
            # item rank ~ Pareto: a head of popular items, a long tail that is still touched
            picks = np.minimum((rng.pareto(1.2, count) * n_items / 50).astype(np.int64), n_items - 1)
            times = start + rng.integers(0, year, count)
            ratings = rng.integers(1, 6, count)
            for j in range(count):
                yield f"u{first + j // events_per_user}", f"i{picks[j]}", float(ratings[j]), int(times[j]), f"d{n}"
                n += 1

    return "synthetic", users(), items(), events()


def measure(name: str, rows, n_reads: int, n_events: int) -> dict:
    source, users, items, events = rows
    with tempfile.TemporaryDirectory(prefix="fs_bench_") as tmp:
        server = LocalRedis(LocalRedisConfig(data_dir=tmp)).start()
        try:
            client = connect(redis_url=server.url)
            print(f"[{name}] materializing ...", flush=True)
            done = {"events": 0}
            last = [time.time()]

            def progress(stage: str, n: int) -> None:
                if stage == "events":
                    done["events"] += n
                    if time.time() - last[0] > 30:
                        last[0] = time.time()
                        print(f"[{name}]   {done['events']:,} events written", flush=True)

            config = MaterializeConfig(source=source, retire_after_seconds=0.0)
            summary = materialize(client, config, users, items, events, progress=progress)
            memory = client.info("memory")
            print(f"[{name}] {summary.format()}", flush=True)
            store = FeatureStore(client, StoreConfig())
            item_ids = store.all_item_ids()
            rng = random.Random(0)
            sample_users = _sample_users(client, summary.version, min(500, summary.users))
            now = int(time.time())
            user_p50, user_p99 = time_calls(lambda: store.query_features(rng.choice(sample_users), now), n_reads)
            items_p50, items_p99 = time_calls(lambda: store.item_rows(rng.sample(item_ids, 100), now), n_reads)
            single = _events_per_second(store, sample_users, item_ids, n_events, threads=1)
            threaded = _events_per_second(store, sample_users, item_ids, n_events, threads=8)
            return {
                "name": name,
                "load": os.getloadavg()[0],
                "users": summary.users,
                "items": summary.items,
                "events": summary.events,
                "materialize_s": summary.seconds,
                "redis_mib": memory["used_memory"] / 2**20,
                "client_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "user_p50": user_p50,
                "user_p99": user_p99,
                "items_p50": items_p50,
                "items_p99": items_p99,
                "events_1": single,
                "events_8": threaded,
            }
        finally:
            server.stop()


def _sample_users(client, version: str, n: int) -> list[str]:
    """Random users of the store (keys sampled with RANDOMKEY until n profiles are found)."""
    found: set[str] = set()
    prefix = f"tf:{version}:{{u:"
    for _ in range(n * 50):
        key = client.randomkey()
        text = key.decode() if key else ""
        if text.startswith(prefix) and text.endswith("}:p"):
            found.add(text[len(prefix) : -3])
            if len(found) >= n:
                break
    return sorted(found)


def _events_per_second(store, users, items, n: int, threads: int) -> float:
    """record_event calls per second (each acknowledged only after Redis fsynced it: appendfsync always)."""
    per_thread = n // threads
    base = int(time.time()) - 3600

    def work(t: int) -> None:
        rng = random.Random(t)
        for k in range(per_thread):
            store.record_event(rng.choice(users), rng.choice(items), "rating", rating=float(rng.randint(1, 5)),
                               timestamp=base + k, event_id=f"bench-{threads}-{t}-{k}")  # fmt: skip

    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return per_thread * threads / (time.perf_counter() - started)


def write_results(rows: list[dict], args) -> str:
    lines = [
        "# Feature store benchmark",
        "",
        f"Machine: {machine.cpu_model()}, {machine.cores()} cores, {machine.memory_gib()}. "
        "Embedded redis-server 7.0 (appendonly, appendfsync always) on 127.0.0.1, redis-py 5.3.1, one process.",
        f"Command: `python benchmarks/feature_store_benchmark.py --run-dir {args.run_dir} --synthetic-users "
        f"{args.synthetic_users} --synthetic-items {args.synthetic_items} --events-per-user {args.events_per_user}`",
        "",
        "| store | users | items | events | materialize (s) | Redis memory (MiB) | client peak RSS (MiB) "
        "| user features p50 / p99 (ms) | 100 items p50 / p99 (ms) | events/s 1 client | events/s 8 threads "
        "| load avg (1 min) at the end |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['users']:,} | {r['items']:,} | {r['events']:,} | {r['materialize_s']:.1f} "
            f"| {r['redis_mib']:,.0f} | {r['client_peak_mib']:,.0f} | {r['user_p50']:.2f} / {r['user_p99']:.2f} "
            f"| {r['items_p50']:.2f} / {r['items_p99']:.2f} | {r['events_1']:,.0f} | {r['events_8']:,.0f} "
            f"| {r['load']:.1f} |"
        )
    lines += [
        "",
        "Targets: user features p99 < 2 ms, 100 items' features p99 < 5 ms, ml-100k materialization < 30 s.",
        "User features = `query_features` (profile + the whole history before now -> `history_features`, "
        "`context_features`). 100 items = `item_rows` (title, genres, year + `item_features_at`) for 100 random "
        "catalog items, one call. "
        f"Synthetic: {args.events_per_user} events per user (popularity-skewed items, one year of timestamps), "
        "streamed into the store.",
    ]
    if args.note:
        lines += ["", args.note]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", default="runs/fs", help="a `towerflow run` output dir on ml-100k")
    parser.add_argument("--synthetic-users", type=int, default=1_000_000)
    parser.add_argument("--synthetic-items", type=int, default=1_000_000)
    parser.add_argument("--events-per-user", type=int, default=2)
    parser.add_argument("--reads", type=int, default=3000, help="timed reads per measurement")
    parser.add_argument("--events", type=int, default=2000, help="events per events/s measurement")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--note", default="", help="a sentence about the conditions, added to the results")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    print(f"Machine: {machine.cpu_model()}, {machine.cores()} cores, {machine.memory_gib()}")
    rows = [measure("ml-100k", ml100k_rows(args.run_dir), args.reads, args.events)]
    if not args.skip_synthetic:
        synthetic = synthetic_rows(args.synthetic_users, args.synthetic_items, args.events_per_user)
        rows.append(measure(f"synthetic {args.synthetic_users:,} x {args.synthetic_items:,}", synthetic,
                            args.reads, args.events))  # fmt: skip
    report = write_results(rows, args)
    Path(args.out).write_text(report)
    print(report)
    print(f"Results written to {args.out}")


if __name__ == "__main__":
    main()
