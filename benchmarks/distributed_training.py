"""Distributed training on one machine: examples/s of 1 process vs 2 workers vs parameter servers, and quality.

    .venv/bin/python benchmarks/distributed_training.py --run-dir runs/dist

Uses the newest Transform output of a pipeline run and trains the two-tower
through `towerflow train`'s launcher (cli/train_commands.py), i.e. real
processes over 127.0.0.1 with TensorFlow's own runtime:

* throughput: `--steps` optimizer steps per epoch, `--epochs` epochs; the last
  epoch's examples/s (warm: tracing and start-up excluded), validation cut to
  one batch; default model config;
* quality: one process vs 2 workers (multi_worker_mirrored: the replicas split
  the batch and the two-tower's in-batch softmax gathers the candidates of both,
  so the optimizer steps and the loss are one process's), full epochs, a few
  seeds, scored on the test split
  with the evaluation protocol (`components.evaluation.offline.evaluate_models`);
  each user's value averaged over the seeds, compared user by user with one
  process (paired bootstrap CI of the difference, permutation p-value).

On a 2-core machine the cluster processes share the cores the single process
has to itself, so expect overhead, not speed-up: this measures the path's cost.
Writes benchmarks/results/distributed_training.md (throughput) and
distributed_training_quality.md (quality); `--skip-throughput` / `--skip-quality`.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from machine import cores, cpu_model, memory_gib  # noqa: E402 - benchmarks/ is on sys.path when run as a script

from towerflow.cli.train_commands import LocalCluster, job_from_run, launch  # noqa: E402
from towerflow.components.evaluation.offline import OfflineData, evaluate_models  # noqa: E402
from towerflow.components.evaluation.statistics import paired_comparison  # noqa: E402
from towerflow.pipeline.mlmd import latest_artifacts  # noqa: E402

CLUSTERS = ("local:1", "local:2w", "local:1c2w2ps")
EPOCH_LINE = re.compile(r"two_tower epoch (\d+): ([\d.]+)s, ([\d,]+) examples/s")
RESULTS = Path(__file__).parent / "results" / "distributed_training.md"
QUALITY_RESULTS = Path(__file__).parent / "results" / "distributed_training_quality.md"
QUALITY_METRICS = ("recall@100", "ndcg@10")
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


# The quality arms: one process, and 2 workers with the default distribution settings (each replica half
# of every batch, candidates gathered over both; models/distribution.py, models/two_tower.py).
QUALITY_ARMS = (
    ("1 process", "local:1", {}),
    ("2 workers (multi_worker_mirrored)", "local:2w", {}),
)


def quality(run_dir: str, epochs: int, seeds: list[int], work: str) -> list[dict]:
    """Every arm x seed trained and scored on the test split; rows keep the per-user metric vectors."""
    artifacts = latest_artifacts(os.path.join(run_dir, "metadata.sqlite"))
    data = OfflineData.from_artifacts(artifacts["Ingestion.examples"], artifacts["Ingestion.item_catalog"])
    rows = []
    for index, (arm, spec, dist) in enumerate(QUALITY_ARMS):
        for seed in seeds:
            output = os.path.join(work, f"quality_{index}_{seed}")
            result, _ = train(run_dir, spec, output, epochs, QUALITY_MODEL, dist, seed)
            report = evaluate_models(data, result.serving_model_dir, None)["two_tower"]
            row = {
                "arm": arm,
                "seed": seed,
                "users": report.user_ids,
                "per_user": {m: np.asarray(report.per_user[m], dtype=np.float64) for m in QUALITY_METRICS},
                "wall": result.seconds,
            }
            rows.append(row)
            shown = "  ".join(f"{m} {row['per_user'][m].mean():.4f}" for m in QUALITY_METRICS)
            print(f"{arm} seed {seed}: {shown}", flush=True)
    return rows


def _single_run_checks(rows: list[dict], metric: str) -> list[tuple[str, dict]]:
    """The e2e test's check (one run against one run, paired over users) on every pair it can take:
    2 workers against 1 process with the same seed, and -- what seed noise alone does to that check --
    1 process against 1 process with the next seed."""
    reference_arm, workers_arm = QUALITY_ARMS[0][0], QUALITY_ARMS[1][0]
    single = {r["seed"]: r["per_user"][metric] for r in rows if r["arm"] == reference_arm}
    workers = {r["seed"]: r["per_user"][metric] for r in rows if r["arm"] == workers_arm}
    seeds = sorted(single)
    pairs = [(f"2 workers vs 1 process, seed {s}", workers[s], single[s]) for s in seeds if s in workers]
    pairs += [
        (f"1 process seed {a} vs 1 process seed {b}", single[a], single[b])
        for a, b in zip(seeds, seeds[1:] + seeds[:1])
        if len(seeds) > 1 and a != b
    ]
    return [(name, paired_comparison(values, reference)) for name, values, reference in pairs]


def _seed_mean(rows: list[dict], arm: str, metric: str) -> np.ndarray:
    """A user's value averaged over the seeds of one arm (the seed noise averages out per user)."""
    return np.mean([r["per_user"][metric] for r in rows if r["arm"] == arm], axis=0)


def write_results(path: Path, speed: list[dict], args, seconds: float) -> None:
    base = next(r["rate"] for r in speed if r["cluster"] == "local:1")
    lines = [
        "# Distributed training on one machine: throughput",
        "",
        f"Machine: {machine()}. Command: `.venv/bin/python benchmarks/distributed_training.py "
        f"--run-dir {args.run_dir} --steps {args.steps} --epochs {args.epochs} --skip-quality` "
        f"({seconds / 60:.1f} min); load average {_load()}.",
        "",
        f"Examples/s of the last of {args.epochs} epochs of {args.steps} optimizer steps (warm), from the chief's",
        "progress line; 1 process and 2 workers validate on one batch per epoch, the ps run does not validate.",
        "A multi_worker_mirrored step takes batch_size examples split between the 2 workers, a parameter-server",
        "step batch_size on one worker.",
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
    _write(path, lines)


def write_quality(path: Path, scores: list[dict], args, seconds: float) -> None:
    reference_arm = QUALITY_ARMS[0][0]
    users = {tuple(r["users"]) for r in scores}
    if len(users) != 1:
        raise RuntimeError("the arms were scored on different users")
    lines = [
        "# Distributed training on one machine: quality of 2 workers against 1 process",
        "",
        f"Machine: {machine()}. Command: `.venv/bin/python benchmarks/distributed_training.py "
        f"--run-dir {args.run_dir} --quality-epochs {args.quality_epochs} --seeds "
        f"{' '.join(map(str, args.seeds))} --skip-throughput` ({seconds / 60:.1f} min); load average {_load()}.",
        "",
        f"The two-tower ({QUALITY_MODEL}, the rest default) trained for {args.quality_epochs} full epoch(s) on",
        "train+eval through `towerflow train`'s launcher, scored on the test split with the evaluation protocol",
        f"(`components.evaluation.offline.evaluate_models`, {len(next(iter(users)))} test users).",
        "",
        "| arm | seed | Recall@100 | NDCG@10 | wall s |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['arm']} | {r['seed']} | {r['per_user']['recall@100'].mean():.4f} | "
        f"{r['per_user']['ndcg@10'].mean():.4f} | {r['wall']:.0f} |"
        for r in scores
    ]
    lines += [
        "",
        f"Each user's value averaged over the seeds, then compared user by user with `{reference_arm}`: the",
        "difference of the means with its paired bootstrap 95% CI and the paired permutation p-value",
        "(components/evaluation/statistics.py). Within noise = the interval holds 0.",
        "",
        "| arm | metric | mean | 1 process | difference [95% CI] | p | within noise |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, _, _ in QUALITY_ARMS[1:]:
        for metric in QUALITY_METRICS:
            c = paired_comparison(_seed_mean(scores, arm, metric), _seed_mean(scores, reference_arm, metric))
            within = "yes" if c["ci_low"] <= 0.0 <= c["ci_high"] else "NO"
            lines.append(
                f"| {arm} | {metric} | {c['mean']:.4f} | {c['reference_mean']:.4f} | {c['difference']:+.4f} "
                f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | {c['p_value']:.3f} | {within} |"
            )
    lines += [
        "",
        "The e2e test (tests/cli/test_train_commands.py) takes ONE run of each arm. The same check on single",
        "runs here, next to what it says about two single-process runs that differ only in their seed:",
        "",
        "| pair | metric | run | reference run | difference [95% CI] | within noise |",
        "|---|---|---|---|---|---|",
    ]
    for metric in QUALITY_METRICS:
        for name, c in _single_run_checks(scores, metric):
            within = "yes" if c["ci_low"] <= 0.0 <= c["ci_high"] else "NO"
            lines.append(
                f"| {name} | {metric} | {c['mean']:.4f} | {c['reference_mean']:.4f} | {c['difference']:+.4f} "
                f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | {within} |"
            )
    _write(path, lines)


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"Wrote {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", default="runs/dist", help="a `towerflow run` output dir with a Transform output")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per epoch in the throughput runs")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the throughput runs (the last is timed)")
    parser.add_argument("--quality-epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--results", default=str(RESULTS), help="the throughput table")
    parser.add_argument("--quality-results", default=str(QUALITY_RESULTS), help="the quality comparison")
    args = parser.parse_args(argv)
    print(machine())
    with tempfile.TemporaryDirectory(prefix="towerflow_dist_bench_") as work:
        if not args.skip_throughput:
            started = time.time()
            speed = throughput(args.run_dir, args.steps, args.epochs, work)
            write_results(Path(args.results), speed, args, time.time() - started)
        if not args.skip_quality:
            started = time.time()
            scores = quality(args.run_dir, args.quality_epochs, args.seeds, work)
            write_quality(Path(args.quality_results), scores, args, time.time() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
