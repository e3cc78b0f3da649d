"""The ranking stage's per-request store read: point-in-time popularity of N candidates, with and without
the catalog's static item fields.

The service caches every item's title, genres and release year in process, so per request it needs only
each candidate's timestamps (`FeatureStore.item_features_at`). That read used to fetch the static fields
too and drop them. This measures both reads side by side on a real redis-server holding a pipeline run's
feature set (materialized as of the test cut-off), interleaved call by call on the same random candidate
lists: client CPU, redis-server CPU (INFO cpu) and wall time per call, and checks they return the same
popularity.

    python benchmarks/item_popularity_read.py --run-dir runs/h12 --items 300 --calls 2000
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402

from towerflow.cli.abtest_commands import load_protocol  # noqa: E402
from towerflow.cli.main import main as towerflow  # noqa: E402
from towerflow.serving.feature_store import FeatureStore, StoreConfig  # noqa: E402
from towerflow.serving.feature_store.server import LocalRedis, LocalRedisConfig, connect  # noqa: E402


def with_static_fields(store: FeatureStore, ids: list[str], as_of: int) -> list[dict]:
    """The read as it was: static fields and timestamps for every candidate, the static fields dropped."""
    return [store._popularity(*state[3:], as_of) for state in store._item_state(ids, as_of)]


def popularity_only(store: FeatureStore, ids: list[str], as_of: int) -> list[dict]:
    return store.item_features_at(ids, as_of)


def redis_cpu_seconds(client) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, help="a finished `towerflow run` output directory")
    parser.add_argument("--items", type=int, default=300, help="candidates per call (the service's top-N)")
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per variant")
    args = parser.parse_args(argv)
    variants = {"static fields + timestamps (before)": with_static_fields, "timestamps only (now)": popularity_only}
    with tempfile.TemporaryDirectory() as tmp:
        server = LocalRedis(LocalRedisConfig(data_dir=tmp, appendfsync="no")).start()
        try:
            code = towerflow(["features", "materialize", "--run-dir", args.run_dir, "--as-of", "test-cutoff",
                              "--redis-url", server.url])  # fmt: skip
            if code:
                return code
            client = connect(server.url)
            store = FeatureStore(client, StoreConfig())
            ids = store.all_item_ids()
            _, _, as_of = load_protocol(args.run_dir)  # the test cut-off, the time the store holds
            rng = random.Random(0)
            lists = [rng.sample(ids, min(args.items, len(ids))) for _ in range(args.calls)]
            for fn in variants.values():  # warm-up: scripts loaded, connections made
                fn(store, lists[0], as_of)
            assert with_static_fields(store, lists[0], as_of) == popularity_only(store, lists[0], as_of)
            wall = {name: [] for name in variants}
            client_cpu = dict.fromkeys(variants, 0.0)
            server_cpu = dict.fromkeys(variants, 0.0)
            for i, ids_i in enumerate(lists):
                order = list(variants.items()) if i % 2 == 0 else list(variants.items())[::-1]
                for name, fn in order:
                    redis_before = redis_cpu_seconds(client)
                    cpu_before, started = time.process_time(), time.perf_counter()
                    fn(store, ids_i, as_of)
                    wall[name].append((time.perf_counter() - started) * 1000.0)
                    # the INFO call itself is in both variants' client CPU alike; its server cost is tiny
                    client_cpu[name] += time.process_time() - cpu_before
                    server_cpu[name] += redis_cpu_seconds(client) - redis_before
            client.close()
        finally:
            server.stop()
    print(f"Machine: {machine.cpu_model()}, {machine.cores()} cores, {machine.memory_gib()}")
    print(f"{args.calls} calls per variant, {args.items} random candidates each, interleaved; run {args.run_dir}")
    print(f"{'read':<38}{'wall p50 ms':>12}{'wall p99 ms':>12}{'client CPU ms':>15}{'redis CPU ms':>14}")
    for name in variants:
        p99 = statistics.quantiles(wall[name], n=100)[98]
        print(
            f"{name:<38}{statistics.median(wall[name]):>12.2f}{p99:>12.2f}"
            f"{1000 * client_cpu[name] / args.calls:>15.2f}{1000 * server_cpu[name] / args.calls:>14.2f}"
        )
    print("Summary: per-call cost of the ranking stage's popularity read, before and now, printed above.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
