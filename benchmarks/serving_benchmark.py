"""Predict latency (p50/p99) and throughput of the embedded model server, REST vs gRPC.

    .venv/bin/python benchmarks/serving_benchmark.py --run-dir runs/local --seconds 3

Pushes the run's two-tower and DCN SavedModels into a temporary serving root,
starts `towerflow serve` (embedded backend) as a separate process -- once
without and once with server-side batching -- and drives the query tower
(`two_tower`, signature `query_tower`) and the ranker (`ranker`) with one
instance per request from N client threads (N = 1, 4, 16). Each cell runs for
--seconds or --max-requests, whichever comes first, after a short warm-up.
Prints the machine and a markdown table, and writes both to --out.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from machine import cpu_model  # noqa: E402 - benchmarks/ is on sys.path when run as a script

from towerflow.cli.serving_commands import _saved_model_dir  # noqa: E402
from towerflow.components.pusher import model_repository as repo  # noqa: E402
from towerflow.pipeline.push import REQUIRED_BLESSINGS  # noqa: E402
from towerflow.serving.client import GrpcClient, RestClient, placeholder_instance  # noqa: E402

TARGETS = (("query tower", "two_tower", "query_tower"), ("ranker", "ranker", "ranker"))


def machine() -> str:
    cpu = cpu_model()
    import tensorflow as tf

    return (
        f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores visible, "
        f"Python {platform.python_version()}, TensorFlow {tf.__version__}"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def drive(call, concurrency: int, seconds: float, max_requests: int) -> dict:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def worker():
        local, bad = [], 0
        while time.perf_counter() < deadline and len(latencies) + len(local) * concurrency < max_requests:
            start = time.perf_counter()
            try:
                call()
                local.append(time.perf_counter() - start)
            except Exception:
                bad += 1
        with lock:
            latencies.extend(local)
            errors[0] += bad

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "n": len(latencies),
        "errors": errors[0],
        "p50": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "qps": len(latencies) / elapsed,
    }


def run_server(root: Path, batching: bool, log_path: Path):
    grpc_port, rest_port = free_port(), free_port()
    argv = [
        sys.executable, "-m", "towerflow.cli.serving_commands", "serve", "--serving-root", str(root),
        "--backend", "embedded",
        "--port", str(grpc_port), "--rest-api-port", str(rest_port),
    ]  # fmt: skip
    if batching:
        argv += ["--enable-batching", "--max-batch-size", "32", "--batch-timeout-micros", "2000"]
    log = open(log_path, "w")  # noqa: SIM115  (closed with the process below)
    process = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    rest = RestClient(f"http://127.0.0.1:{rest_port}", timeout=30)
    for _, model, _ in TARGETS:
        rest.wait_until_available(model, timeout=180)
    return process, log, rest, f"127.0.0.1:{grpc_port}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", default=str(REPO / "runs" / "local"))
    parser.add_argument("--seconds", type=float, default=3.0, help="per cell")
    parser.add_argument("--max-requests", type=int, default=3000, help="per cell")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "serving.md"))
    args = parser.parse_args(argv)
    from towerflow.pipeline.mlmd import latest_artifacts

    metadata = Path(args.run_dir) / "metadata.sqlite"
    if not metadata.is_file():
        print(f"no pipeline run at {args.run_dir}; run `towerflow run` first", file=sys.stderr)
        return 2
    artifacts = latest_artifacts(str(metadata))
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    info = machine()
    print(f"Machine: {info}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="towerflow-bench-") as tmp:
        root = Path(tmp) / "serving"
        for model, (trainer, output, _) in REQUIRED_BLESSINGS.items():
            repo.push(root, model, _saved_model_dir(artifacts[f"{trainer}.{output}"]))
        for batching in (False, True):
            process, log, rest, grpc_target = run_server(root, batching, Path(tmp) / f"server-{batching}.log")
            grpc_client = GrpcClient(grpc_target, timeout=30)
            try:
                for label, model, signature in TARGETS:
                    sig = rest.metadata(model)["metadata"]["signature_def"]["signature_def"][signature]
                    instance = placeholder_instance(sig)
                    columns = {k: [v] for k, v in instance.items()}
                    calls = {
                        "REST": lambda r=rest, m=model, s=signature, i=instance: r.predict(
                            m, instances=[i], signature_name=s
                        ),
                        "gRPC": lambda g=grpc_client, m=model, s=signature, c=columns: g.predict(
                            m, c, signature_name=s
                        ),
                    }
                    for protocol, call in calls.items():
                        drive(call, 2, 0.5, 200)  # warm-up: traces, connections
                        for concurrency in concurrencies:
                            stats = drive(call, concurrency, args.seconds, args.max_requests)
                            row = (label, protocol, concurrency, "on" if batching else "off", stats)
                            rows.append(row)
                            print(
                                f"{label:<12} {protocol:<5} c={concurrency:<3} batching={row[3]:<3} "
                                f"p50 {stats['p50']:7.2f} ms  p99 {stats['p99']:7.2f} ms  "
                                f"{stats['qps']:7.1f} req/s  (n={stats['n']}, errors={stats['errors']})",
                                flush=True,
                            )
            finally:
                grpc_client.close()
                process.terminate()
                process.wait(timeout=30)
                log.close()
    table = [
        "| model | protocol | concurrency | batching | p50 ms | p99 ms | req/s | requests | errors |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for label, protocol, concurrency, batching, s in sorted(rows, key=lambda r: (r[0], r[1], r[3], r[2])):
        table.append(
            f"| {label} | {protocol} | {concurrency} | {batching} | {s['p50']:.2f} | {s['p99']:.2f} | "
            f"{s['qps']:.1f} | {s['n']} | {s['errors']} |"
        )
    report = "\n".join(
        [
            "# Serving benchmark (embedded server)",
            "",
            f"Machine: {info}",
            "",
            f"Command: `.venv/bin/python benchmarks/serving_benchmark.py --seconds {args.seconds:g} "
            f"--max-requests {args.max_requests} --concurrency {args.concurrency}`",
            "",
            "One instance per request; the server is a separate process; the client threads share this process "
            "(and the same cores), so numbers at concurrency 16 are bounded by the box, not just the server. "
            "Batching: max_batch_size 32, batch_timeout_micros 2000.",
            "",
            *table,
            "",
        ]
    )
    print(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
