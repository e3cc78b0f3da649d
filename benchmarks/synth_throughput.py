"""Throughput of the synthetic log generator (pipeline/synthetic.py).

    python benchmarks/synth_throughput.py                 # small + medium sizes
    python benchmarks/synth_throughput.py --full          # also 1M users x 1M items x 50M rows
    python benchmarks/synth_throughput.py --full --out /big/disk/synth --keep

Each size runs in a fresh spawned process so ``ru_maxrss`` (a process-lifetime
peak) measures that size alone. Results are printed as a Markdown table;
benchmarks/results/synth_throughput.md records a run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model, memory_gib  # noqa: E402 - benchmarks/ is on sys.path when run as a script

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = [
    (10_000, 5_000, 500_000),
    (100_000, 100_000, 2_000_000),
    (1_000_000, 1_000_000, 5_000_000),
]
FULL = (1_000_000, 1_000_000, 50_000_000)


def machine() -> dict[str, str]:
    cpu, mem = cpu_model(), memory_gib()
    import numpy

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": mem,
    }


def _run_one(users: int, items: int, interactions: int, out: str, queue) -> None:
    from towerflow.pipeline.synthetic import SynthConfig, generate

    summary = generate(out, SynthConfig(users=users, items=items, interactions=interactions), progress=print)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    queue.put((summary.seconds, summary.rows_per_second, summary.bytes_written, peak))


def run(users: int, items: int, interactions: int, out: Path) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run_one, args=(users, items, interactions, str(out), queue))
    wall = time.perf_counter()
    proc.start()
    seconds, rate, nbytes, peak = queue.get()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"generator process failed with exit code {proc.exitcode}")
    return {
        "users": users,
        "items": items,
        "interactions": interactions,
        "seconds": seconds,
        "wall": time.perf_counter() - wall,
        "rows_per_second": rate,
        "bytes": nbytes,
        "peak_rss": peak,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="also run 1M users x 1M items x 50M interactions")
    ap.add_argument("--out", type=Path, help="output directory (default: a temp dir, deleted after)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--skip-small", action="store_true", help="only run --full")
    args = ap.parse_args(argv)

    for key, value in machine().items():
        print(f"{key:9s} {value}")
    sizes = [] if args.skip_small else list(SIZES)
    if args.full:
        sizes.append(FULL)
    base = args.out or Path(tempfile.mkdtemp(prefix="synth_bench_"))
    rows = []
    try:
        for users, items, interactions in sizes:
            out = base / f"u{users}_i{items}_n{interactions}"
            print(f"\n== {users:,} users x {items:,} items x {interactions:,} interactions -> {out}")
            rows.append(run(users, items, interactions, out))
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if args.out is None and not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    print("\n| users | items | interactions | seconds | rows/s | bytes written | peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['users']:,} | {r['items']:,} | {r['interactions']:,} | {r['seconds']:.1f} "
            f"| {r['rows_per_second']:,.0f} | {r['bytes'] / 1e9:.2f} GB | {r['peak_rss'] / 2**30:.2f} GiB |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
