"""ScaNN against a numpy brute force on 1M synthetic items x 64 dims, side by side in one run.

    python benchmarks/scann_benchmark.py                       # 1M items, prints a Markdown report
    python benchmarks/scann_benchmark.py --out benchmarks/results/scann.md
    python benchmarks/scann_benchmark.py --items 100000        # quicker

The embeddings imitate a trained tower's: L2-normalised points around a few
thousand cluster centres of very different sizes (Zipf-distributed), seeded.
Queries come from the same mixture. The index is what IndexBuilder builds for
this size (components/index/scann_index.derive_params, K = 100); recall@10 is
measured against the exact top-10 over the same embeddings.

Single-query latency interleaves the two searchers query by query (ScaNN,
then numpy, then the next query), so both see the same machine load. The
sweep varies leaves searched and the re-ordering pool on the same index.

The tail section explains ScaNN's p99: per query it records wall time, the
thread's CPU time and its involuntary context switches. Slow queries spend
normal CPU time and were all preempted -- the scheduler, not the search -- so
the service searches inside a short SCHED_FIFO section
(serving/recommender/search.py); the table shows p50/p99 with and without it.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from machine import cpu_model, memory_gib  # noqa: E402 - benchmarks/ is on sys.path when run as a script

from towerflow.components.index.scann_index import (  # noqa: E402
    ScannIndex,
    brute_force_top_k,
    derive_params,
    normalize,
    numpy_single_query,
    recall_at_k,
)
from towerflow.serving.recommender.search import REALTIME_AVAILABLE, no_preemption  # noqa: E402

SWEEP_LEAVES = (10, 20, 50, 100)
SWEEP_REORDER = (100, 250, 500, 1000, 2000)


def machine() -> dict[str, str]:
    info = {"platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__}
    cpu, mem = cpu_model(), memory_gib()
    try:
        from importlib.metadata import version

        import scann  # noqa: F401

        info["scann"] = version("scann")
    except Exception:  # noqa: BLE001 - the version is informative only
        pass
    info.update(cpu=cpu, cores=str(os.cpu_count()), usable_cores=str(len(os.sched_getaffinity(0))), memory=mem)
    return info


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mixture(num_clusters: int, dim: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm cluster centres and Zipf-like cluster probabilities."""
    centres = normalize(rng.standard_normal((num_clusters, dim)))
    weights = 1.0 / np.arange(1, num_clusters + 1) ** 0.8
    return centres, weights / weights.sum()


def sample_points(
    n: int, centres: np.ndarray, weights: np.ndarray, rng: np.random.Generator, spread: float = 0.35
) -> np.ndarray:
    """n unit-norm points, each a centre (drawn by weight) plus Gaussian noise of norm ~`spread`."""
    dim = centres.shape[1]
    points = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 200_000):
        stop = min(n, start + 200_000)
        which = rng.choice(len(centres), size=stop - start, p=weights)
        noise = rng.standard_normal((stop - start, dim)).astype(np.float32) * (spread / np.sqrt(dim))
        points[start:stop] = normalize(centres[which] + noise)
    return points


def percentiles(times_ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(times_ms, 50)), float(np.percentile(times_ms, 99))


def timed_queries(search, queries: np.ndarray, realtime: bool) -> dict[str, float]:
    """Wall ms, thread-CPU ms and involuntary switches per query; summary of the slow (> 3x p50) ones."""
    wall, cpu, switches = [], [], []
    for q in queries[:5]:
        search(q)
    for q in queries:
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw
        c0, t0 = time.thread_time(), time.perf_counter()
        with no_preemption(realtime):
            search(q)
        t1, c1 = time.perf_counter(), time.thread_time()
        switches.append(resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw - before)
        wall.append((t1 - t0) * 1e3)
        cpu.append((c1 - c0) * 1e3)
    wall, cpu, switches = np.array(wall), np.array(cpu), np.array(switches)
    slow = wall > 3 * np.median(wall)
    return {
        "p50": float(np.percentile(wall, 50)),
        "p99": float(np.percentile(wall, 99)),
        "max": float(wall.max()),
        "cpu_p99": float(np.percentile(cpu, 99)),
        "slow": int(slow.sum()),
        "slow_preempted": int((switches[slow] > 0).sum()),
        "slow_cpu_mean": float(cpu[slow].mean()) if slow.any() else 0.0,
        "p99_unswitched": float(np.percentile(wall[switches == 0], 99)) if (switches == 0).any() else float("nan"),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=2_000)
    parser.add_argument("--queries", type=int, default=1_000, help="queries for recall and batched throughput")
    parser.add_argument("--latency-queries", type=int, default=300, help="single queries timed per searcher")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--out", help="also write the Markdown report here")
    args = parser.parse_args(argv)

    lines: list[str] = []

    def emit(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    emit("# ScaNN vs brute force")
    emit()
    emit("Machine:")
    emit()
    for key, value in machine().items():
        emit(f"- {key}: {value}")
    emit()

    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    centres, weights = mixture(args.clusters, args.dim, rng)
    items = sample_points(args.items, centres, weights, rng)
    queries = sample_points(args.queries, centres, weights, rng)
    ids = np.array([f"item{i}" for i in range(args.items)])
    emit(
        f"Data: {args.items:,} items x {args.dim} dims (float32, {items.nbytes / 2**20:.0f} MiB), "
        f"{args.clusters:,} Zipf-sized clusters, {args.queries:,} queries, seed {args.seed}; "
        f"generated in {time.perf_counter() - started:.1f}s"
    )

    params = derive_params(args.items, num_neighbors=100)
    rss_before, peak_before = rss_mib(), peak_rss_mib()
    tracemalloc.start()
    started = time.perf_counter()
    index = ScannIndex.build(ids, items, params)
    build_seconds = time.perf_counter() - started
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after, peak_after = rss_mib(), peak_rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        index.save(tmp)
        searcher_mib = sum(f.stat().st_size for f in Path(tmp, "searcher").rglob("*") if f.is_file()) / 2**20
    emit(f"Index: {params}")
    emit(
        f"Build: {build_seconds:.1f}s; RSS {rss_before:.0f} -> {rss_after:.0f} MiB "
        f"(+{rss_after - rss_before:.0f} MiB held by the searcher), process peak RSS "
        f"{peak_before:.0f} -> {peak_after:.0f} MiB; Python-heap peak (tracemalloc) "
        f"{traced_peak / 2**20:.1f} MiB; serialized searcher {searcher_mib:.0f} MiB"
    )
    emit()

    k = args.k
    started = time.perf_counter()
    exact, _ = brute_force_top_k(queries, items, k)
    brute_batch_seconds = time.perf_counter() - started
    started = time.perf_counter()
    approx, _ = index.search(queries, k, parallel=True)
    scann_batch_seconds = time.perf_counter() - started
    recall = recall_at_k(approx, exact, k)
    exact100, _ = brute_force_top_k(queries, items, 100)
    approx100, _ = index.search(queries, 100, parallel=True)
    recall100 = recall_at_k(approx100, exact100, 100)

    numpy_search = numpy_single_query(items, k)
    sample = queries[: args.latency_queries]
    for q in sample[:5]:  # warm-up
        index.search_one(q, k)
        numpy_search(q)
    scann_ms, numpy_ms = [], []
    for q in sample:
        t0 = time.perf_counter()
        index.search_one(q, k)
        t1 = time.perf_counter()
        numpy_search(q)
        t2 = time.perf_counter()
        scann_ms.append((t1 - t0) * 1e3)
        numpy_ms.append((t2 - t1) * 1e3)
    s50, s99 = percentiles(scann_ms)
    n50, n99 = percentiles(numpy_ms)

    emit(f"## Results (k = {k}, default parameters)")
    emit()
    emit("| measure | ScaNN | numpy brute force | ratio |")
    emit("|---|---:|---:|---:|")
    emit(f"| recall@{k} vs exact | {recall:.4f} | 1 | |")
    emit(f"| recall@100 vs exact | {recall100:.4f} | 1 | |")
    emit(f"| single-query latency p50 (ms) | {s50:.3f} | {n50:.3f} | {n50 / s50:.1f}x lower |")
    emit(f"| single-query latency p99 (ms) | {s99:.3f} | {n99:.3f} | {n99 / s99:.1f}x lower |")
    emit(
        f"| batched throughput, {args.queries} queries (QPS) | {args.queries / scann_batch_seconds:,.0f} | "
        f"{args.queries / brute_batch_seconds:,.0f} | {brute_batch_seconds / scann_batch_seconds:.1f}x |"
    )
    emit()
    verdict_recall = "PASS" if recall >= 0.95 else "FAIL"
    verdict_speed = "PASS" if n50 / s50 >= 10 else "FAIL"
    emit(f"Targets: recall@{k} >= 0.95: {verdict_recall}; single-query latency >= 10x lower (p50): {verdict_speed}")
    emit()

    emit("## The single-query tail (ScaNN alone, k = 10, 1,000 queries)")
    emit()
    emit(
        f"Load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
        f"real-time scheduling {'available' if REALTIME_AVAILABLE else 'NOT available (no CAP_SYS_NICE)'}."
    )
    emit()
    emit(
        "| search | p50 ms | p99 ms | p99/p50 | max ms | thread CPU p99 ms | slow (>3x p50) | of them preempted |"
        " slow queries' mean CPU ms | p99 of unswitched queries |"
    )
    emit("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    tails = {}
    for label, realtime in (("plain", False), ("no preemption (SCHED_FIFO section)", True)):
        t = timed_queries(lambda q: index.search_one(q, k), queries, realtime)
        tails[realtime] = t
        emit(
            f"| {label} | {t['p50']:.3f} | {t['p99']:.3f} | {t['p99'] / t['p50']:.1f}x | {t['max']:.3f} | "
            f"{t['cpu_p99']:.3f} | {t['slow']} | {t['slow_preempted']} | {t['slow_cpu_mean']:.3f} | "
            f"{t['p99_unswitched']:.3f} |"
        )
    emit()
    fixed = tails[True]
    verdict = "PASS" if fixed["p99"] <= 3 * fixed["p50"] else f"FAIL ({fixed['p99'] / fixed['p50']:.1f}x)"
    emit(f"Target: p99 within 3x of p50 (no-preemption search): {verdict}")
    emit()

    if not args.no_sweep:
        emit(f"## Recall vs latency frontier (same index; {len(sample)} single queries each)")
        emit()
        emit(f"| leaves searched (of {params.num_leaves}) | re-order pool | recall@{k} | p50 ms | p99 ms |")
        emit("|---:|---:|---:|---:|---:|")
        for leaves in SWEEP_LEAVES:
            if leaves > params.num_leaves:
                continue
            for reorder in SWEEP_REORDER:
                got, _ = index.search(
                    queries, k, leaves_to_search=leaves, pre_reorder_num_neighbors=reorder, parallel=True
                )
                times = []
                for q in sample:
                    t0 = time.perf_counter()
                    index.search_one(q, k, leaves_to_search=leaves, pre_reorder_num_neighbors=reorder)
                    times.append((time.perf_counter() - t0) * 1e3)
                p50, p99 = percentiles(times)
                emit(f"| {leaves} | {reorder} | {recall_at_k(got, exact, k):.4f} | {p50:.3f} | {p99:.3f} |")
        emit()

    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
