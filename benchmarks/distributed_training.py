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
  each arm's seeds x users values compared with one process's by a two-level
  bootstrap over users (paired) and runs (`run_level_comparison`: the interval
  holds seed-to-seed noise as well as the users'). A control arm -- one process
  trained for a quarter of an epoch -- shows that the check does flag a worse
  model; splits of the single-process seeds into two groups show how often it
  calls runs that differ only in their seed different.

On a 2-core machine the cluster processes share the cores the single process
has to itself, so expect overhead, not speed-up: this measures the path's cost.
Writes benchmarks/results/distributed_training.md (throughput) and
distributed_training_quality.md (quality); `--skip-throughput` / `--skip-quality`.
"""

from __future__ import annotations

import argparse
import itertools
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
from towerflow.components.evaluation.statistics import paired_comparison, run_level_comparison  # noqa: E402
from towerflow.models.input_pipeline import count_records  # noqa: E402
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
# of every batch, candidates gathered over both; models/distribution.py, models/two_tower.py). The control
# arm, one process for a quarter of the first epoch's optimizer steps, is worse by construction: the check
# must call it so (None: its steps_per_epoch is set from the training data's size).
REFERENCE_ARM = "1 process"
WORKERS_ARM = "2 workers (multi_worker_mirrored)"
CONTROL_ARM = "control: 1 process, a quarter epoch"
QUALITY_ARMS = (
    (REFERENCE_ARM, "local:1", {}),
    (WORKERS_ARM, "local:2w", {}),
    (CONTROL_ARM, "local:1", None),
)


def quality(run_dir: str, epochs: int, seeds: list[int], work: str) -> list[dict]:
    """Every arm x seed trained and scored on the test split; rows keep the per-user metric vectors."""
    artifacts = latest_artifacts(os.path.join(run_dir, "metadata.sqlite"))
    data = OfflineData.from_artifacts(artifacts["Ingestion.examples"], artifacts["Ingestion.item_catalog"])
    probe = job_from_run(run_dir, "two_tower", os.path.join(work, "probe"), LocalCluster.parse("local:1"))
    quarter_epoch = max(1, count_records(probe.train_files) // 256 // 4)  # the default batch_size, 256
    rows = []
    for index, (arm, spec, dist) in enumerate(QUALITY_ARMS):
        for seed in seeds:
            output = os.path.join(work, f"quality_{index}_{seed}")
            dist = {"steps_per_epoch": quarter_epoch} if dist is None else dist
            result, _ = train(run_dir, spec, output, 1 if arm == CONTROL_ARM else epochs, QUALITY_MODEL, dist, seed)
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


def _runs(rows: list[dict], arm: str, metric: str, seeds=None) -> np.ndarray:
    """An arm's (runs x users) metric values, one row per seed (all seeds, or `seeds`)."""
    return np.stack([r["per_user"][metric] for r in rows if r["arm"] == arm and (seeds is None or r["seed"] in seeds)])


def _seed_splits(seeds: list[int]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every split of the seeds into two groups of at least 2 (each split once): for runs that differ only
    in their seed, how often a check calls the groups different."""
    seeds = sorted(seeds)
    splits = []
    for size in range(2, len(seeds) // 2 + 1):
        for group in itertools.combinations(seeds, size):
            rest = tuple(s for s in seeds if s not in group)
            if len(rest) >= 2 and (size < len(rest) or group < rest):
                splits.append((group, rest))
    return splits


def _per_user_arrays(rows: list[dict]) -> dict[str, np.ndarray]:
    """ "<arm>/<seed>/<metric>" and "users": the arrays write_quality compares, to re-check them later."""
    arrays = {"users": np.asarray(rows[0]["users"])}
    for r in rows:
        for metric, values in r["per_user"].items():
            arrays[f"{r['arm']}/{r['seed']}/{metric}"] = values
    return arrays


def _interval(c: dict) -> str:
    return f"{c['difference']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]"


def _within(c: dict) -> str:
    return "yes" if c["ci_low"] <= 0.0 <= c["ci_high"] else "NO"


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
        f"(`components.evaluation.offline.evaluate_models`, {len(next(iter(users)))} test users). The control",
        "arm trains one epoch of a quarter of a full epoch's optimizer steps (worse by construction).",
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
        f"Each arm against `{REFERENCE_ARM}` over the same users. run-level: `run_level_comparison`",
        "(components/evaluation/statistics.py) on the arms' seeds x users values -- a two-level bootstrap that",
        "resamples the users (paired) and each arm's runs, so its 95% CI and p-value hold the seed-to-seed",
        "noise as well as the users'. user-only: `paired_comparison` on each user's value averaged over the",
        "seeds (users resampled only; it leaves the run-to-run noise out). Within noise = the run-level",
        "interval holds 0. run sd: standard deviation of the arm's run means over the seeds.",
        "",
        "| arm | metric | mean | 1 process | run-level difference [95% CI] | p | user-only [95% CI] | run sd "
        "| within noise |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, _, _ in QUALITY_ARMS[1:]:
        for metric in QUALITY_METRICS:
            runs, reference = _runs(scores, arm, metric), _runs(scores, REFERENCE_ARM, metric)
            c = run_level_comparison(runs, reference)
            users = paired_comparison(runs.mean(axis=0), reference.mean(axis=0))
            lines.append(
                f"| {arm} | {metric} | {c['mean']:.4f} | {c['reference_mean']:.4f} | {_interval(c)} | "
                f"{c['p_value']:.3f} | {_interval(users)} | {c['run_sd']:.4f} | {_within(c)} |"
            )
    seeds = sorted({r["seed"] for r in scores if r["arm"] == REFERENCE_ARM})
    splits = _seed_splits(seeds)
    if splits:
        lines += [
            "",
            f"Runs that differ only in their seed: the {len(splits)} splits of the {REFERENCE_ARM} runs into two",
            "groups of at least 2 seeds (not independent: they share runs), each group compared with the other by",
            "both checks; a check that is right about noise calls about 5% of such splits different.",
            "",
            "| metric | splits | run-level: outside | user-only: outside |",
            "|---|---|---|---|",
        ]
        for metric in QUALITY_METRICS:
            run_level = user_only = 0
            for group, rest in splits:
                a, b = _runs(scores, REFERENCE_ARM, metric, group), _runs(scores, REFERENCE_ARM, metric, rest)
                run_level += _within(run_level_comparison(a, b)) == "NO"
                user_only += _within(paired_comparison(a.mean(axis=0), b.mean(axis=0))) == "NO"
            lines.append(f"| {metric} | {len(splits)} | {run_level} | {user_only} |")
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
    parser.add_argument("--per-user", help="also keep every quality run's per-user values in this .npz")
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
            if args.per_user:
                np.savez(args.per_user, **_per_user_arrays(scores))
            write_quality(Path(args.quality_results), scores, args, time.time() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
