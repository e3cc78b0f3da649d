"""Interleaved A/B of two recommender-service configs: one store, one model server, two services, blocks of
requests alternating between them, so a shared machine's drifting load falls on both sides alike.

    flock /tmp/towerflow-heavy.lock python benchmarks/recommend_config_ab.py --run-dir runs/local \
        --config-a top300.yaml --config-b "" --concurrency 4 --block 250 --rounds 8
    flock /tmp/towerflow-heavy.lock python benchmarks/recommend_config_ab.py --synthetic --events 1000000 \
        --config-a top300.yaml --config-b "" --block 150 --rounds 6

`recommend_benchmark.py` measures one service at a time (and two codes one after the other); when the
question is a setting, this is the fairer comparison: both services run the same code against the same
redis-server and model server, and each round runs a block on A then on B (the order flips every round).
An empty `--config-*` is the default config. The world (ml-100k run directory, or the synthetic 1M-item
catalog) is recommend_benchmark's. Per config: requests/s over its blocks, end-to-end p50/p95/p99, the
ranking stage's p50, errors, fallbacks, and CPU per request of the service, the model server, redis-server
and this load generator (each process's user + system time over that config's blocks; the model server and
redis-server serve only the config whose block is running). Both services share the store's
query-embedding cache, so each benefits alike from the other's misses.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recommend_benchmark as rb  # noqa: E402
from machine import cores, cpu_model, memory_gib  # noqa: E402

PROCESSES = ("service", "model server", "redis", "client")


@dataclass
class Side:
    """What one config's blocks added up to."""

    label: str
    e2e: list[float] = field(default_factory=list)
    ranking: list[float] = field(default_factory=list)
    requests: int = 0
    seconds: float = 0.0
    errors: int = 0
    fallbacks: int = 0
    cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PROCESSES, 0.0))

    def add(self, result: dict, seconds: float, cpu_before: dict, cpu_after: dict) -> None:
        self.e2e += list(result["e2e"])
        self.ranking += list(result["stages"]["ranking"])
        self.requests += result["n"]
        self.seconds += seconds
        self.errors += len(result["errors"])
        self.fallbacks += result["fallbacks"]
        for name in PROCESSES:
            self.cpu[name] += cpu_after[name] - cpu_before[name]

    def row(self) -> str:
        per_request = {name: seconds * 1000 / max(1, self.requests) for name, seconds in self.cpu.items()}
        cells = [
            self.label,
            f"{self.requests}",
            f"{self.requests / max(self.seconds, 1e-9):.1f}",
            f"{self.errors}",
            f"{self.fallbacks}",
            *(f"{rb.pct(np.array(self.e2e), q):.1f}" for q in (50, 95, 99)),
            f"{rb.pct(np.array(self.ranking), 50):.1f}",
            *(f"{per_request[name]:.1f}" for name in PROCESSES),
            f"{sum(per_request.values()):.1f}",
        ]
        return "| " + " | ".join(cells) + " |"


HEADER = (
    "| config | requests | req/s | errors | fallbacks | e2e p50 | e2e p95 | e2e p99 | ranking p50 | "
    + " | ".join(f"CPU {name}" for name in PROCESSES)
    + " | CPU total |\n|---|"
    + "---:|" * 13
)


def block_order(labels: list[str], rounds: int) -> list[str]:
    """A, B, then B, A, ...: each config goes first in half of the rounds."""
    order = []
    for n in range(rounds):
        order += labels if n % 2 == 0 else labels[::-1]
    return order


def _config_label(path: str) -> str:
    if not path:
        return "default config"
    text = Path(path).read_text().strip()
    return f"{Path(path).name}: {' '.join(text.split())}" if text else Path(path).name


def _start(cmd: list[str], log: Path, env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "a"), stderr=subprocess.STDOUT, env=env, cwd=cwd)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    rb.add_world_arguments(parser)
    parser.add_argument("--config-a", default="", help="service YAML of side A ('' = the default config)")
    parser.add_argument("--config-b", default="", help="service YAML of side B ('' = the default config)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--block", type=int, default=250, help="requests per block")
    parser.add_argument("--rounds", type=int, default=8, help="blocks per config")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)
    if bool(args.run_dir) == bool(args.synthetic):
        parser.error("give --run-dir or --synthetic")
    for name in ("concurrency", "block", "rounds", "k"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    for flag, path in (("--config-a", args.config_a), ("--config-b", args.config_b)):
        problem = rb.check_service_config(path)
        if problem:
            parser.error(f"{flag}: {problem}")
    labels = [_config_label(args.config_a), _config_label(args.config_b)]
    if labels[0] == labels[1]:
        labels = [f"A ({labels[0]})", f"B ({labels[1]})"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TOWERFLOW_API_TOKEN": ""}
    tmp = Path(tempfile.mkdtemp(prefix="towerflow-config-ab-"))
    from towerflow.serving.feature_store.server import LocalRedis, LocalRedisConfig

    redis_server = LocalRedis(LocalRedisConfig(data_dir=str(tmp / "redis"), appendfsync="everysec")).start()
    procs: list[subprocess.Popen] = []
    try:
        if args.synthetic:
            world = f"synthetic, {args.items:,} items, {args.users:,} users, {args.events:,} events"
            print(f"Building the synthetic world ({world}) ...", flush=True)
            rb.synthetic_world(tmp, args.items, args.users, args.events, redis_server.url)
            run_dir, users = tmp, [f"u{n}" for n in range(args.users)]
        else:
            world, run_dir = "ml-100k", Path(args.run_dir).resolve()
            cmd = [*rb.TOWERFLOW, "features", "materialize", "--run-dir", str(run_dir), "--redis-url", redis_server.url]
            subprocess.run(cmd, check=True, env=env, cwd=tmp)
            users = [str(u) for u in range(1, 944)]  # ml-100k's user ids
        grpc_port, rest_port = rb.free_port(), rb.free_port()
        model_server = _start(
            [*rb.TOWERFLOW, "serve", "--serving-root", str(run_dir / "serving"), "--backend", "embedded"]
            + ["--port", str(grpc_port), "--rest-api-port", str(rest_port)],
            tmp / "model_server.log",
            env,
            tmp,
        )
        procs.append(model_server)
        rb.wait_http(f"http://127.0.0.1:{rest_port}/v1/models/ranker", 300, "model server")
        services = {}
        for n, (label, path) in enumerate(zip(labels, (args.config_a, args.config_b))):
            rb.service_config_file(path, tmp / f"service-{n}.yaml", tmp / f"experiments-{n}")
            port = rb.free_port()
            service = _start(
                [*rb.TOWERFLOW, "service", "--run-dir", str(run_dir), "--redis-url", redis_server.url]
                + ["--model-server", f"127.0.0.1:{grpc_port}", "--port", str(port)]
                + ["--config", str(tmp / f"service-{n}.yaml")],
                tmp / f"service-{n}.log",
                env,
                tmp,
            )
            procs.append(service)
            services[label] = (f"http://127.0.0.1:{port}", service.pid)
        for url, _ in services.values():
            rb.wait_http(f"{url}/readyz", 600, "recommender service")
            rb.run_level(url, users, args.concurrency, 200, 30, args.k, seed=99)  # warm-up, not counted
        sides = {label: Side(label) for label in labels}
        load = [os.getloadavg()[0]]
        for n, label in enumerate(block_order(labels, args.rounds)):
            url, pid = services[label]
            pids = {"service": pid, "model server": model_server.pid, "redis": redis_server.process.pid}
            pids["client"] = os.getpid()
            before, started = rb.cpu_seconds(pids), time.perf_counter()
            result = rb.run_level(url, users, args.concurrency, args.block, 120, args.k, seed=100 + n)
            sides[label].add(result, time.perf_counter() - started, before, rb.cpu_seconds(pids))
            load.append(os.getloadavg()[0])
            print(f"block {n + 1}: {label}: {result['n']} requests, p50 {rb.pct(result['e2e'], 50):.1f} ms", flush=True)
    finally:
        rb.stop(procs)
        redis_server.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # the 1M world is ~1 GB of Redis files and index copies
    print()
    print(f"## {world}: interleaved A/B of two service configs")
    print()
    print(
        f"Machine: {cpu_model()}, {cores()} cores, {memory_gib()}; {platform.platform()}; Python "
        f"{platform.python_version()}. Loopback; redis-server, one model server, two services and this load "
        "generator each a process on the same cores."
    )
    print(
        f"Requests: k={args.k}, random users, no timestamp (now), explore on; concurrency {args.concurrency}; "
        f"{args.rounds} blocks of {args.block} per config, alternating; load average (1 min) "
        f"{min(load):.1f}-{max(load):.1f}."
    )
    print()
    print(HEADER)
    for side in sides.values():
        print(side.row())
    print()
    errors = sum(side.errors for side in sides.values())
    print(f"Errors: {errors}. Summary: {len(sides)} configs x {args.rounds} blocks measured on {world}; ms throughout.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
