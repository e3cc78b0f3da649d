"""What the two evaluator components cost on a finished run, phase by phase: seconds and peak RSS,
for two versions of their code.

    flock /tmp/towerflow-heavy.lock .venv/bin/python benchmarks/evaluator_scaling.py \\
        --run-dir runs/scaling/scale-1m --before-commit 253dca4 --after-commit HEAD \\
        [--evaluator baseline] --out benchmarks/results/evaluator_scaling.md

`--evaluator model` (the default) calls `run_evaluation` the way the pipeline's ModelEvaluator does (the
run's own artifacts from its MLMD store: examples, catalog, two-tower, ranker, index, the IndexEvaluator's
frontier and the BaselineEvaluator's output, no last blessed model, default settings, `ann_queries` 0;
`--own-baselines` selects and scores the baselines in the same call instead); `--evaluator baseline` runs
the BaselineEvaluator's body (`OfflineData.from_artifacts` + `write_baseline_evaluation`). Each version
runs once, in a fresh process, one after the other; the report gives wall and CPU seconds
(`time.process_time`: every thread of the process, TensorFlow's included) and the peak RSS per phase:

    load data        OfflineData.from_artifacts (the TFRecords and the catalog)
    eval set         EvalSet.from_frame: the test window's users, relevant and seen items
    baselines        baselines.select: each setting's eval-window grid (train-only fits) and the refits
    test window      offline.evaluate_models: one row per recommender scored (evaluate_sliced), the
                     rest is loading the models and embedding the catalog
    statistics       the paired bootstrap / permutation comparisons (gate and report)
    outputs          model_evaluation.json + the HTML report, and baseline_fallback.json (the best
                     baseline refit on every interaction)

Phases are timed by wrapping those functions in the child process, so both versions are measured
the same way without changing them; at each phase's start and end the child folds the kernel's
peak RSS since the last edge (VmHWM) into every phase open meanwhile and resets it
(/proc/self/clear_refs), so each phase's peak is exact. Each version runs from
a copy of the code (`git archive`), never the working tree, which other jobs may be editing:
`--after-commit` gives the whole tree, `--before-commit` only components/evaluation/ (on the after
tree), so the comparison isolates the evaluator's own code. The two result directories
(model_evaluation.json, baseline_fallback.json, baseline_evaluation.pkl) are compared value by
value. On a shared machine the CPU seconds and the RSS are the figures to compare; the load average
is printed with each run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
LAYERS = ("models", "components", "serving", "pipeline", "cli")

PHASES = (
    ("load data", "OfflineData.from_artifacts: TFRecords and catalog"),
    ("eval set", "EvalSet.from_frame: the test window's users, relevant and seen items"),
    ("baselines", "baselines.select: eval-window grids (train-only fits) + refits on train+eval"),
    ("  recent_popularity grid", "7 windows"),
    ("  newcomer_popularity grid", "4 first-n values"),
    ("  item_knn grid", "6 neighbourhood sizes"),
    ("  ease grid", "7 lambdas"),
    ("  refits and the rest", ""),
    ("test window", "evaluate_models: every recommender on the test split"),
    ("  popularity", ""),
    ("  recent_popularity", ""),
    ("  segment_popularity", ""),
    ("  newcomer_popularity", ""),
    ("  item_knn", ""),
    ("  ease", ""),
    ("  two_tower", ""),
    ("  two_tower+dcn", ""),
    ("  two_tower+dcn+pop", ""),
    ("  loading models, catalog embeddings, the rest", ""),
    ("statistics", "paired bootstrap CIs and permutation p-values (gate and report)"),
    ("outputs", "model_evaluation.json + HTML report"),
    ("fallback", "baseline_fallback.json: the best baseline refit on every interaction"),
    ("other", "everything else in run_evaluation (write_baseline_evaluation: the pickle)"),
    ("total", "run_evaluation (or from_artifacts + write_baseline_evaluation)"),
)
RECOMMENDER_NAMES = {
    "PopularityRecommender": "popularity",
    "RecentPopularity": "recent_popularity",
    "SegmentPopularity": "segment_popularity",
    "NewcomerPopularity": "newcomer_popularity",
    "ItemKNN": "item_knn",
    "Ease": "ease",
    "TwoTowerRecommender": "two_tower",
    "RerankedRecommender": "two_tower+dcn",
    "BlendedRecommender": "two_tower+dcn+pop",
}


# --------------------------------------------------------------------------- the child: one timed run


class _RssPeaks:
    """Each phase's peak RSS, exact: at every phase's start and end the kernel's peak since the last
    such edge (VmHWM) is folded into every phase open meanwhile, then the peak is reset to the
    current RSS (writing 5 to /proc/self/clear_refs), so a phase's peak includes its sub-phases'.
    Where the reset is refused, a thread samples the RSS every 0.25 s instead (a spike inside a call
    that holds the GIL can then be missed)."""

    def __init__(self, interval: float = 0.25):
        self.open: list[str] = []
        self.peaks: dict[str, int] = {}
        self.started: dict[str, int] = {}
        self.method = "VmHWM reset at each phase edge (/proc/self/clear_refs)"
        self._interval = interval
        self._stop = threading.Event()
        self._thread = None
        try:
            self._reset()
        except OSError:
            self.method = "RSS sampled every 0.25 s and at each phase edge"
            self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
        return 0

    @staticmethod
    def _reset() -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def _fold(self, value: int) -> None:
        for name in ["total", *self.open]:
            if value > self.peaks.get(name, 0):
                self.peaks[name] = value

    def edge(self) -> int:
        """At a phase's start or end: the peak since the last edge to the open phases; the RSS now."""
        if self._thread is None:
            self._fold(self._status("VmHWM:"))
            self._reset()
        now = self._status("VmRSS:")
        self._fold(now)
        return now

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._fold(self._status("VmRSS:"))

    def start(self) -> None:
        self.started["total"] = self.edge()
        if self._thread is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.edge()


def _child(run_dir: str, output_dir: str, result_path: str, evaluator: str = "model", own_baselines: bool = False):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from towerflow.components.evaluation import baselines, model_evaluator, offline, protocol
    from towerflow.components.index.component import tower_dir
    from towerflow.pipeline.mlmd import latest_artifacts

    times: dict[str, list[float]] = {}
    rss = _RssPeaks()

    def add(name: str, wall: float, cpu: float) -> None:
        entry = times.setdefault(name, [0.0, 0.0])
        entry[0] += wall
        entry[1] += cpu

    def timed(name_of, fn):
        def wrapper(*args, **kwargs):
            name = name_of(*args, **kwargs)
            if name is None:  # not measured on its own here (e.g. inside another phase)
                return fn(*args, **kwargs)
            now = rss.edge()
            rss.open.append(name)
            rss.started.setdefault(name, now)
            w, c = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                add(name, time.perf_counter() - w, time.process_time() - c)
                rss.edge()
                rss.open.remove(name)

        return wrapper

    grids = baselines.BaselineGrids()
    grid_names = {
        tuple(grids.recent_days): "  recent_popularity grid",
        tuple(grids.newcomer_first): "  newcomer_popularity grid",
        tuple(grids.knn_neighbors): "  item_knn grid",
        tuple(grids.ease_lambdas): "  ease grid",
    }
    from_artifacts = offline.OfflineData.from_artifacts.__func__
    offline.OfflineData.from_artifacts = classmethod(timed(lambda *a, **k: "load data", from_artifacts))
    # the test window's eval set (the baselines' eval-window one is part of "baselines")
    from_frame = protocol.EvalSet.from_frame.__func__
    protocol.EvalSet.from_frame = classmethod(timed(lambda *a, **k: None if rss.open else "eval set", from_frame))
    baselines.select = timed(lambda *a, **k: "baselines", baselines.select)
    baselines._choose = timed(lambda grid, *a, **k: grid_names.get(tuple(grid), "  other grid"), baselines._choose)
    offline.evaluate_models = timed(lambda *a, **k: "test window", offline.evaluate_models)
    model_evaluator.evaluate_models = offline.evaluate_models
    offline.evaluate_sliced = timed(
        lambda recommend, *a, **k: "  " + RECOMMENDER_NAMES.get(type(recommend).__name__, type(recommend).__name__),
        offline.evaluate_sliced,
    )
    for name in ("compare_to_baselines", "compare_to_last_blessed", "compare_reports"):
        setattr(model_evaluator, name, timed(lambda *a, **k: "statistics", getattr(model_evaluator, name)))
    model_evaluator.write_outputs = timed(lambda *a, **k: "outputs", model_evaluator.write_outputs)
    model_evaluator.write_fallback = timed(lambda *a, **k: "fallback", model_evaluator.write_fallback)

    artifacts = latest_artifacts(os.path.join(run_dir, "metadata.sqlite"))
    baseline_dir = artifacts.get("BaselineEvaluator.evaluation")
    rss.start()
    started = time.perf_counter(), time.process_time()
    load_before = os.getloadavg()
    if evaluator == "baseline":  # the BaselineEvaluator component's body
        os.makedirs(output_dir, exist_ok=True)
        config = model_evaluator.EvaluatorConfig()
        data = offline.OfflineData.from_artifacts(artifacts["Ingestion.examples"], artifacts["Ingestion.item_catalog"])
        model_evaluator.write_baseline_evaluation(data, config, output_dir)
    else:
        model_evaluator.run_evaluation(
            artifacts["Ingestion.examples"],
            artifacts["Ingestion.item_catalog"],
            tower_dir(artifacts["TwoTowerTrainer.model"]),
            output_dir,
            ranker_dir=tower_dir(artifacts["RankingTrainer.model"]),
            index_dir=artifacts["IndexBuilder.index"],
            config=model_evaluator.EvaluatorConfig(ann_queries=0),  # as the pipeline's ModelEvaluator
            index_evaluation_dir=artifacts["IndexEvaluator.blessing"],
            # as the pipeline: the run's BaselineEvaluator output stands in for the baselines
            baseline_evaluation_dir=None if own_baselines else baseline_dir,
        )
    add("total", time.perf_counter() - started[0], time.process_time() - started[1])
    rss.stop()
    # exclusive "rest" rows: a phase minus what its sub-phases measured
    grid_rows = [n for n in times if n.endswith(" grid")]
    scored_rows = [n for n in times if n.startswith("  ") and n not in grid_rows]
    for parent, rows, rest in (
        ("baselines", grid_rows, "  refits and the rest"),
        ("test window", scored_rows, "  loading models, catalog embeddings, the rest"),
    ):
        if parent in times:
            times[rest] = [times[parent][i] - sum(times[n][i] for n in rows) for i in (0, 1)]
    top = [n for n in times if not n.startswith("  ") and n != "total"]
    times["other"] = [times["total"][i] - sum(times[n][i] for n in top) for i in (0, 1)]
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(
            {
                "times": times,
                "peak_rss": rss.peaks,
                "start_rss": rss.started,
                "high_water_mark": rss.peaks["total"],
                "rss_method": rss.method,
                "load_before": load_before,
                "load_after": os.getloadavg(),
                "code": offline.__file__,
                "baseline_evaluation": None if evaluator == "baseline" or own_baselines else baseline_dir,
            },
            f,
        )


# --------------------------------------------------------------------------- popularity baselines at ml-20m's size


def _lexsort_lists(recommender, user_ids, k, exclude) -> list[list[str]]:
    """ScoredRecommender's lists as the code before ranked them: a full sort of the catalog per user."""
    import numpy as np

    index = {item: j for j, item in enumerate(recommender.catalog)}
    out = []
    for start in range(0, len(user_ids), 512):
        scores = np.array(recommender.scores(user_ids[start : start + 512]), dtype=np.float64, copy=True)
        for row, seen in enumerate(exclude[start : start + 512]):
            scores[row, [index[i] for i in seen if i in index]] = -np.inf
        ties = np.broadcast_to(recommender._tie_rank, scores.shape)
        for row, cols in enumerate(np.lexsort((ties, -scores), axis=1)[:, :k]):
            out.append([recommender.catalog[j] for j in cols if scores[row, j] != -np.inf])
    return out


def catalog_scale(users: int, items: int, sample: int, seed: int = 0) -> list[str]:
    """CPU seconds of one test-window ranking (k = 100) by recent and segment popularity for `users`
    users over `items` items, the code before (a full sort per user) against this one, measured on
    `sample` users (with ~20M / users seen items each) and scaled to `users`; the lists must be equal."""
    import numpy as np
    import pandas as pd

    from towerflow.components.evaluation import baselines
    from towerflow.models import features as F

    rng = np.random.default_rng(seed)
    catalog = tuple(f"i{j}" for j in range(items))
    n_rows = 2_000_000  # enough for realistic recent / segment counts
    frame = pd.DataFrame(
        {
            F.USER_ID: [f"u{u}" for u in rng.integers(0, users, n_rows)],
            F.ITEM_ID: [catalog[j] for j in np.minimum(rng.zipf(1.2, n_rows) - 1, items - 1)],
            F.TIMESTAMP: rng.integers(0, 365 * baselines.SECONDS_PER_DAY, n_rows),
        }
    )
    people = pd.DataFrame(
        {F.USER_AGE: rng.choice([1, 18, 25, 35, 45, 50, 56], users), F.USER_GENDER: rng.choice(["F", "M"], users)},
        index=pd.Index([f"u{u}" for u in range(users)], name=F.USER_ID),
    )
    fit = baselines.FitInput(frame, people, catalog, float(365 * baselines.SECONDS_PER_DAY))
    user_ids = [f"u{u}" for u in range(sample)]
    seen_per_user = max(1, 20_000_000 // users)
    exclude = [frozenset(catalog[j] for j in rng.choice(items, seen_per_user, replace=False)) for _ in user_ids]
    lines = [
        "| baseline | users | items | before CPU s | after CPU s | ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, recommender in (
        ("recent_popularity", baselines.RecentPopularity(fit, 14)),
        ("segment_popularity", baselines.SegmentPopularity(fit)),
    ):
        started = time.process_time()
        before = _lexsort_lists(recommender, user_ids, 100, exclude)
        before_s = (time.process_time() - started) * users / sample
        started = time.process_time()
        after = recommender(user_ids, 100, exclude)
        after_s = (time.process_time() - started) * users / sample
        if before != after:
            raise SystemExit(f"{name}: the lists differ")
        lines.append(
            f"| {name} | {users:,} | {items:,} | {before_s:,.0f} | {after_s:,.1f} | {before_s / after_s:,.0f}x |"
        )
    return lines


# --------------------------------------------------------------------------- the parent: snapshots, runs, report


def make_snapshot(dest: Path, commit: str, evaluation_commit: str | None = None) -> Path:
    """`git archive` of `commit` in `dest` (components/evaluation/ from `evaluation_commit` if given),
    plus dest/pkg/towerflow whose subpackages point into it: PYTHONPATH=dest/pkg imports that code."""
    dest.mkdir(parents=True)

    def archive(rev: str, *paths: str) -> None:
        tar = subprocess.run(["git", "archive", rev, *paths], cwd=REPO, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)

    archive(commit)
    if evaluation_commit:
        shutil.rmtree(dest / "components" / "evaluation")
        archive(evaluation_commit, "components/evaluation")
    package = dest / "pkg" / "towerflow"
    package.mkdir(parents=True)
    shutil.copy(dest / "towerflow" / "__init__.py", package / "__init__.py")
    for layer in LAYERS:
        (package / layer).symlink_to(dest / layer)
    return dest / "pkg"


def rev(commit: str) -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", commit], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()


def _plain(value):
    """The baseline pickle's objects as JSON-like values: dataclasses (EvalReport) as dicts, arrays as lists."""
    import dataclasses

    import numpy as np

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def compare_outputs(a_dir: Path, b_dir: Path) -> tuple[int, list[str]]:
    """(values compared, differences) over model_evaluation.json, baseline_fallback.json and the
    BaselineEvaluator's baseline_evaluation.pkl, those in both directories (nan equals nan)."""
    import pickle

    count, diffs = 0, []

    def walk(a, b, path: str) -> None:
        nonlocal count
        if path == "model_evaluation.json.created":  # when the run wrote it
            return
        if isinstance(a, dict) and isinstance(b, dict):
            if set(a) != set(b):
                diffs.append(f"{path}: keys differ {sorted(set(a) ^ set(b))[:5]}")
            for key in sorted(set(a) & set(b)):
                walk(a[key], b[key], f"{path}.{key}" if path else key)
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{path}[{i}]")
        else:
            count += 1
            both_nan = isinstance(a, float) and isinstance(b, float) and a != a and b != b
            if a != b and not both_nan:
                diffs.append(f"{path}: {str(a)[:60]} != {str(b)[:60]}")

    for name in ("model_evaluation.json", "baseline_fallback.json"):
        if (a_dir / name).exists() and (b_dir / name).exists():
            walk(json.loads((a_dir / name).read_text()), json.loads((b_dir / name).read_text()), name)
    name = "baseline_evaluation.pkl"
    if (a_dir / name).exists() and (b_dir / name).exists():
        loaded = [pickle.loads((d / name).read_bytes()) for d in (a_dir, b_dir)]  # written by the children above
        walk(*(_plain(x) for x in loaded), name)
    return count, diffs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", help="a finished `towerflow run` directory (metadata.sqlite)")
    parser.add_argument("--after-commit", default="HEAD", help="the code measured (whole tree)")
    parser.add_argument(
        "--before-commit", default=None, help="components/evaluation/ as of this commit, measured first"
    )
    parser.add_argument(
        "--evaluator",
        choices=("model", "baseline"),
        default="model",
        help="model: run_evaluation as the ModelEvaluator (with the run's BaselineEvaluator output, as the "
        "pipeline); baseline: the BaselineEvaluator (from_artifacts + write_baseline_evaluation)",
    )
    parser.add_argument(
        "--own-baselines",
        action="store_true",
        help="model: select and score the baselines inside run_evaluation instead of reading the run's "
        "BaselineEvaluator output (what this benchmark measured before it had --evaluator)",
    )
    parser.add_argument("--timeout", type=float, default=1500, help="seconds per run at most")
    parser.add_argument(
        "--compare-with",
        default=None,
        help="also compare the last version's outputs with this directory's (e.g. the run's own evaluator "
        "artifact), value by value",
    )
    parser.add_argument("--out", default=None, help="write the Markdown report here")
    parser.add_argument("--child", nargs=2, metavar=("OUTPUT_DIR", "RESULT_JSON"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--catalog-scale",
        nargs=3,
        type=int,
        metavar=("USERS", "ITEMS", "SAMPLE"),
        help="instead: recent and segment popularity's test-window ranking at this size, before vs after "
        "(e.g. 138493 26744 2048, ml-20m's users and items), on SAMPLE users scaled up",
    )
    args = parser.parse_args(argv)
    if args.child:
        _child(args.run_dir, *args.child, evaluator=args.evaluator, own_baselines=args.own_baselines)
        return
    if args.catalog_scale:
        from machine import cores, cpu_model, memory_gib

        table = catalog_scale(*args.catalog_scale)
        print(f"Machine: {cpu_model()}, {cores()} cores, {memory_gib()}; load {os.getloadavg()[0]:.1f}")
        print("\n".join(table))
        return

    if not args.run_dir:
        parser.error("give --run-dir (or --catalog-scale)")
    from machine import cores, cpu_model, memory_gib

    run_dir = Path(args.run_dir).resolve()
    work = Path(tempfile.mkdtemp(prefix="evaluator-scaling-"))
    after = rev(args.after_commit)
    variants = []
    if args.before_commit:
        before = rev(args.before_commit)
        variants.append((f"before ({before})", make_snapshot(work / "before", after, before)))
    variants.append((f"after ({after})", make_snapshot(work / "after", after)))
    results = {}
    for label, pythonpath in variants:
        out_dir, result = work / f"out-{len(results)}", work / f"result-{len(results)}.json"
        env = {**os.environ, "PYTHONPATH": str(pythonpath), "TF_CPP_MIN_LOG_LEVEL": "3"}
        print(f"{label}: the {args.evaluator} evaluator on {run_dir} ...", flush=True)
        flags = ["--evaluator", args.evaluator] + (["--own-baselines"] if args.own_baselines else [])
        subprocess.run(
            [sys.executable, __file__, "--run-dir", str(run_dir), *flags, "--child", str(out_dir), str(result)],
            env=env,
            cwd=work,
            check=True,
            timeout=args.timeout,
        )
        results[label] = json.loads(result.read_text()) | {"out_dir": out_dir}
        if not results[label]["code"].startswith(str(pythonpath.parent)):
            raise SystemExit(f"{label} imported {results[label]['code']}, not its snapshot")

    labels = list(results)
    component = "BaselineEvaluator" if args.evaluator == "baseline" else "ModelEvaluator"
    lines = [f"# {component} cost at scale", ""]
    if args.evaluator == "baseline":
        what = "`OfflineData.from_artifacts` + `write_baseline_evaluation` with the component's default settings"
    else:
        precomputed = results[labels[-1]].get("baseline_evaluation")
        what = "`run_evaluation` with the pipeline's settings (defaults, `ann_queries` 0, no last blessed model" + (
            f", the baselines from the run's BaselineEvaluator output `{precomputed}`)" if precomputed else ")"
        )
    lines += [
        "Command: `flock /tmp/towerflow-heavy.lock .venv/bin/python benchmarks/evaluator_scaling.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + "`",
        "",
        f"Run: `{args.run_dir}` (the {component}'s inputs from its MLMD store); {what}.",
        "",
        "## Machine",
        "",
        f"- platform: {platform.platform()}, Python {platform.python_version()}",
        f"- CPU: {cpu_model()}, {cores()} cores; memory {memory_gib()}",
    ]
    for label in labels:
        load = results[label]["load_before"], results[label]["load_after"]
        start, end = ("/".join(f"{x:.1f}" for x in values) for values in load)
        lines.append(f"- load average (1/5/15 min) during {label}: {start} at the start, {end} at the end")

    def phase_cell(phase: str) -> str:
        if phase.strip() == "total":
            return "| **total** |"
        return f"| {phase.strip() if not phase.startswith('  ') else '&nbsp;&nbsp;' + phase.strip()} |"

    header = "| phase | " + " | ".join(f"{label} wall s | {label} CPU s" for label in labels)
    if len(labels) == 2:
        header += " | CPU ratio |"
    lines += ["", "## Seconds per phase", "", header, "|---|" + "---:|" * (2 * len(labels) + (len(labels) == 2))]
    for phase, _ in PHASES:
        cells = [results[label]["times"].get(phase) for label in labels]
        if all(c is None for c in cells):
            continue
        row = phase_cell(phase)
        for c in cells:
            row += " - | - |" if c is None else f" {c[0]:.1f} | {c[1]:.1f} |"
        if len(labels) == 2:
            a, b = cells
            row += f" {a[1] / b[1]:.1f}x |" if a and b and b[1] > 0.05 else " - |"
        lines.append(row)
    lines += ["", "Phases: " + "; ".join(f"{p.strip()}: {d}" for p, d in PHASES if d) + "."]

    gb = 1e9
    header = "| phase | " + " | ".join(f"{label} at start GB | {label} peak GB" for label in labels) + " |"
    lines += ["", "## Peak RSS per phase", "", header, "|---|" + "---:|" * (2 * len(labels))]
    for phase, _ in PHASES:
        peaks = [
            results[label]["peak_rss"].get(phase.strip() if phase.strip() == "total" else phase) for label in labels
        ]
        if all(v is None for v in peaks):
            continue
        row = phase_cell(phase)
        for label, peak in zip(labels, peaks):
            begin = results[label]["start_rss"].get(phase.strip() if phase.strip() == "total" else phase)
            row += " - | - |" if peak is None else f" {begin / gb:.2f} | {peak / gb:.2f} |"
        lines.append(row)
    methods = sorted({results[label].get("rss_method", "RSS sampled every 0.25 s") for label in labels})
    lines += [
        "",
        f"Peaks of the measured process alone (not its parent): {'; '.join(methods)}. A phase's peak "
        "includes its sub-phases'; `at start` is the RSS when the phase was first entered (for total: "
        "after the imports); total's peak is the process's.",
    ]
    if len(labels) == 2:
        count, diffs = compare_outputs(results[labels[0]]["out_dir"], results[labels[1]]["out_dir"])
        lines += ["", "## Same results", ""]
        names = ", ".join(
            sorted(p.name for p in results[labels[0]]["out_dir"].glob("*") if p.suffix in (".json", ".pkl"))
        )
        if diffs:
            lines.append(f"{len(diffs)} of {count:,} values differ between the two runs' outputs ({names}):")
            lines += [f"- `{d}`" for d in diffs[:20]]
        else:
            lines.append(f"{names}: all {count:,} values equal (`created` aside).")
    if args.compare_with:
        reference = Path(args.compare_with)
        count, diffs = compare_outputs(reference, results[labels[-1]]["out_dir"])
        lines += ["", f"## Same results as `{args.compare_with}`", ""]
        if diffs:
            lines.append(f"{len(diffs)} of {count:,} values differ from {labels[-1]}'s outputs:")
            lines += [f"- `{d}`" for d in diffs[:20]]
        else:
            lines.append(f"{labels[-1]}'s outputs and the directory's: all {count:,} values equal (`created` aside).")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
