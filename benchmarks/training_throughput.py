"""Training throughput (examples/s) of both models, tf.data pipeline vs a naive one, side by side.

Uses the transformed examples and Transform graph of an existing run:

    .venv/bin/python benchmarks/training_throughput.py --output-dir runs/local

For each input pipeline (models.run_fns.input_fn: parallel interleave,
batch-then-parse, prefetch; models.input_pipeline.day_batches: the same reading
plus grouping into one-day batches, what the ranker trains on;
models.run_fns.naive_input_fn: sequential read, per-example parse, no
prefetch) it measures the input pipeline alone and one
training epoch of the two-tower and of the DCN model, and prints examples/s and
the ratio. Both pipelines run in the same process, alternating, so machine
noise hits both alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
from machine import cores, cpu_model, memory_gib  # noqa: E402 - benchmarks/ is on sys.path when run as a script

from towerflow.models import input_pipeline, run_fns  # noqa: E402
from towerflow.models.preprocessing import table_sizes_from_transform_output  # noqa: E402
from towerflow.models.ranking import DCNRankingModel, RankingConfig  # noqa: E402
from towerflow.models.two_tower import TwoTowerConfig, TwoTowerModel  # noqa: E402
from towerflow.pipeline.mlmd import latest_artifacts  # noqa: E402


def machine() -> str:
    return f"{platform.platform()} | {cpu_model()} | {cores()} cores | {memory_gib()} | TF {tf.__version__}"


def _count_examples(dataset) -> int:
    return sum(int(tf.shape(batch["item_id_xf"])[0]) for batch in dataset)


def time_input(make_dataset) -> float:
    started = time.perf_counter()
    n = _count_examples(make_dataset())
    return n / (time.perf_counter() - started)


def time_training(make_model, make_dataset) -> float:
    model = make_model()
    dataset = make_dataset()
    model.fit(dataset.take(2), epochs=1, verbose=0)  # trace and build outside the timed epoch
    started = time.perf_counter()
    model.fit(dataset, epochs=1, verbose=0)
    seconds = time.perf_counter() - started
    return _count_examples(dataset) / seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="runs/local")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    artifacts = latest_artifacts(os.path.join(args.output_dir, "metadata.sqlite"))
    tft_output = tft.TFTransformOutput(artifacts["Transform.transform_graph"])
    pattern = os.path.join(artifacts["Transform.transformed_examples"], "Split-train", "*.gz")
    sizes = table_sizes_from_transform_output(tft_output)
    pipelines = {
        "tf.data (parallel, batched parse, prefetch)": lambda: run_fns.input_fn(
            pattern, tft_output, args.batch_size, shuffle=False
        ),
        # What the ranker trains on: the same reading, then examples grouped into one-day batches.
        "day batches (tf.data + one-day buckets by chunk)": lambda: input_pipeline.day_batches(
            pattern, tft_output, args.batch_size, bucket_hours=24.0, seed=0
        ),
        "naive (sequential, per-example parse)": lambda: run_fns.naive_input_fn(pattern, tft_output, args.batch_size),
    }
    models = {
        "input only": None,
        # Unweighted: recency weights scale the loss, they do not change a step's cost.
        "two-tower": lambda: _compiled(
            TwoTowerModel(TwoTowerConfig(batch_size=args.batch_size, recency_half_life_days=0), sizes)
        ),
        "DCN ranker": lambda: _compiled(DCNRankingModel(RankingConfig(batch_size=args.batch_size), sizes)),
    }
    print(f"machine: {machine()}")
    print(f"data: {pattern} (batch {args.batch_size}, best of {args.repeats})\n")
    print(f"{'workload':<12}{'pipeline':<46}{'examples/s':>12}")
    for workload, make_model in models.items():
        rates = {}
        for name, make_dataset in pipelines.items():
            runs = [
                time_input(make_dataset) if make_model is None else time_training(make_model, make_dataset)
                for _ in range(args.repeats)
            ]
            rates[name] = max(runs)
            print(f"{workload:<12}{name:<46}{rates[name]:>12,.0f}", flush=True)
        naive = list(rates)[-1]
        for name in list(rates)[:-1]:
            label = f"ratio {name.split(' ')[0]} / naive"
            print(f"{workload:<12}{label:<46}{rates[name] / rates[naive]:>12.2f}x", flush=True)
        print(flush=True)
    return 0


def _compiled(model):
    model.compile()
    return model


if __name__ == "__main__":
    sys.exit(main())
