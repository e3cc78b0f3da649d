"""Distributed training on one machine: examples/s of 1 process vs 2 workers vs parameter servers, and quality.

    .venv/bin/python benchmarks/distributed_training.py --run-dir runs/dist

Uses the newest Transform output of a pipeline run and trains the two-tower
through `towerflow train`'s launcher (cli/train_commands.py), i.e. real
processes over 127.0.0.1 with TensorFlow's own runtime:

* throughput: `--steps` optimizer steps per epoch, `--epochs` epochs; the last
  epoch's examples/s (warm: tracing and start-up excluded), validation cut to
  one batch; default model config;
* quality: one process vs 2 workers (multi_worker_mirrored), full epochs, a
  few seeds, scored on the test split with the evaluation protocol
  (`components.evaluation.offline.evaluate_models`); the seed-to-seed spread of
  the single-process runs is the noise the 2-worker numbers are compared with.

On a 2-core machine the cluster processes share the cores the single process
has to itself, so expect overhead, not speed-up: this measures the path's cost.
Writes benchmarks/results/distributed_training.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402
from machine import cores, cpu_model, memory_gib  # noqa: E402 - benchmarks/ is on sys.path when run as a script

from towerflow.cli.train_commands import LocalCluster, job_from_run, launch  # noqa: E402
from towerflow.components.evaluation.offline import OfflineData, evaluate_models  # noqa: E402
from towerflow.pipeline.mlmd import latest_artifacts  # noqa: E402

CLUSTERS = ("local:1", "local:2w", "local:1c2w2ps")
EPOCH_LINE = re.compile(r"two_tower epoch (\d+): ([\d.]+)s, ([\d,]+) examples/s")
RESULTS = Path(__file__).parent / "results" / "distributed_training.md"
# The quality runs' model: the default two-tower at half width, so that the comparison fits in minutes.
QUALITY_MODEL = {"embedding_dim": 32, "user_id_dim": 16, "item_id_dim": 16, "feature_dim": 8, "mlp_layers": [64]}


def machine() -> str:
    return f"{platform.platform()} | {cpu_model()} | {cores()} cores | {memory_gib()} | TF {tf.__version__}"


def train(run_dir: str, cluster_spec: str, output: str, epochs: int, model_config: dict, dist: dict, seed: int):
    """(launch result, {epoch: (seconds, examples/s)} from the chief's progress lines)."""
    cluster = LocalCluster.parse(cluster_spec)
    job = job_from_run(
        run_dir, "two_tower", output, cluster, epochs=epochs, model_config=model_config, distribution=dist, seed=seed
    )
    lines: list[str] = []
    result = launch(job, cluster, echo=lines.append)
    chief = "[chief:0]" if cluster.chief or not cluster.worker else "[worker:0]"
    epochs_seen = {}
    for line in lines:
        match = EPOCH_LINE.search(line)
        if match and line.startswith(chief):
            epochs_seen[int(match[1])] = (float(match[2]), float(match[3].replace(",", "")))
    return result, epochs_seen


def throughput(run_dir: str, steps: int, epochs: int, work: str) -> list[dict]:
    rows = []
    for spec in CLUSTERS:
        dist = {"steps_per_epoch": steps, "validation_steps": 1}
        result, seen = train(run_dir, spec, os.path.join(work, spec.replace(":", "_")), epochs, {}, dist, seed=0)
        seconds, rate = seen[epochs]
        rows.append({"cluster": spec, "rate": rate, "epoch_seconds": seconds, "wall": result.seconds})
        print(f"{spec:>14}: {rate:,.0f} examples/s in epoch {epochs} ({seconds:.1f}s), wall {result.seconds:.0f}s")
    return rows


def quality(run_dir: str, epochs: int, seeds: list[int], work: str) -> list[dict]:
    artifacts = latest_artifacts(os.path.join(run_dir, "metadata.sqlite"))
    data = OfflineData.from_artifacts(artifacts["Ingestion.examples"], artifacts["Ingestion.item_catalog"])
    rows = []
    for spec in ("local:1", "local:2w"):
        for seed in seeds:
            output = os.path.join(work, f"quality_{spec.replace(':', '_')}_{seed}")
            result, _ = train(run_dir, spec, output, epochs, QUALITY_MODEL, {}, seed)
            report = evaluate_models(data, result.serving_model_dir, None)["two_tower"]
            row = {
                "cluster": spec,
                "seed": seed,
                "recall@100": report.metric("recall", 100),
                "ndcg@10": report.metric("ndcg", 10),
                "wall": result.seconds,
            }
            rows.append(row)
            print(f"{spec:>9} seed {seed}: recall@100 {row['recall@100']:.4f}  ndcg@10 {row['ndcg@10']:.4f}")
    return rows


def _summary(rows: list[dict], spec: str, metric: str) -> str:
    values = [r[metric] for r in rows if r["cluster"] == spec]
    spread = f" (min {min(values):.4f}, max {max(values):.4f})" if len(values) > 1 else ""
    return f"{statistics.mean(values):.4f}{spread}"


def write_results(path: Path, speed: list[dict], scores: list[dict], args, seconds: float) -> None:
    base = next(r["rate"] for r in speed if r["cluster"] == "local:1")
    lines = [
        "# Distributed training on one machine",
        "",
        f"Machine: {machine()}. Command: `.venv/bin/python benchmarks/distributed_training.py "
        f"--run-dir {args.run_dir} --steps {args.steps} --epochs {args.epochs} --quality-epochs "
        f"{args.quality_epochs} --seeds {' '.join(map(str, args.seeds))}` ({seconds / 60:.1f} min).",
        "",
        "## Throughput (two-tower, default config)",
        "",
        f"Examples/s of the last of {args.epochs} epochs of {args.steps} optimizer steps (warm), from the chief's",
        "progress line; 1 process and 2 workers validate on one batch per epoch, the ps run does not validate.",
        "A multi_worker_mirrored step takes batch_size x 2 examples, a parameter-server step batch_size.",
        "",
        "| cluster | processes | examples/s | vs 1 process | epoch s | wall s (incl. start-up) |",
        "|---|---|---|---|---|---|",
    ]
    for row in speed:
        cluster = LocalCluster.parse(row["cluster"])
        lines.append(
            f"| {row['cluster']} | {len(cluster.roles())} | {row['rate']:,.0f} | {row['rate'] / base:.2f}x | "
            f"{row['epoch_seconds']:.1f} | {row['wall']:.0f} |"
        )
    if not scores:
        lines += ["", "(quality runs skipped)"]
    else:
        lines += _quality_lines(scores, args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"Wrote {path}")


def _quality_lines(scores: list[dict], args) -> list[str]:
    lines = [
        "",
        f"## Quality (test split, all users; {args.quality_epochs} full epochs, model {QUALITY_MODEL})",
        "",
        "| cluster | seed | Recall@100 | NDCG@10 | wall s |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['cluster']} | {r['seed']} | {r['recall@100']:.4f} | {r['ndcg@10']:.4f} | {r['wall']:.0f} |"
        for r in scores
    ]
    lines += [
        "",
        "| cluster | mean Recall@100 | mean NDCG@10 |",
        "|---|---|---|",
    ]
    for spec in ("local:1", "local:2w"):
        lines.append(f"| {spec} | {_summary(scores, spec, 'recall@100')} | {_summary(scores, spec, 'ndcg@10')} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", default="runs/dist", help="a `towerflow run` output dir with a Transform output")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per epoch in the throughput runs")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the throughput runs (the last is timed)")
    parser.add_argument("--quality-epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)
    print(machine())
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="towerflow_dist_bench_") as work:
        speed = throughput(args.run_dir, args.steps, args.epochs, work)
        scores = [] if args.skip_quality else quality(args.run_dir, args.quality_epochs, args.seeds, work)
    write_results(Path(args.results), speed, scores, args, time.time() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
