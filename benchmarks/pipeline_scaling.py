"""How each pipeline stage's cost grows with the data: the whole pipeline on MovieLens-shaped synthetic logs.

    .venv/bin/python benchmarks/pipeline_scaling.py --sizes 100k 1m 20m
    .venv/bin/python benchmarks/pipeline_scaling.py --sizes 20m --no-train   # the data part only

For every size it makes a synthetic log with MovieLens' user and item counts
(`towerflow data synth`), runs `towerflow run --no-push` on it, then
`towerflow evaluate`, and measures per component (the run's progress lines
mark where each component starts and ends): wall time, CPU time and peak RSS
of the whole process tree (the runner and its Beam workers, sampled every
half second with psutil) and rows/s (input interactions / wall seconds). The
growth exponent of a stage between two sizes is log(t2 / t1) / log(n2 / n1):
1 is linear, about 1.1 is n log n at these sizes, 2 is quadratic.

The table goes to stdout and to benchmarks/results/pipeline_scaling.md (or
--results), with the machine described. `--lock FILE` takes an flock on FILE
before the first size and holds it to the end, so a shared machine's other
heavy jobs neither run during a measurement nor get in between the sizes of
one run; the time spent waiting for it is reported.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
from machine import cores, cpu_model, memory_gib  # benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parent.parent
TOWERFLOW = str(REPO / ".venv" / "bin" / "towerflow")


@dataclass(frozen=True)
class Size:
    """A MovieLens release's shape: its user, item and interaction counts."""

    name: str
    users: int
    items: int
    interactions: int


SIZES = {
    "100k": Size("100k", 943, 1_682, 100_000),
    "1m": Size("1m", 6_040, 3_706, 1_000_000),
    "20m": Size("20m", 138_493, 26_744, 20_000_000),
}
# The goals on the 2-core, 24 GB machine.
GOAL_SECONDS = {"1m": 600.0, "20m": 5400.0}
GOAL_PEAK_RSS_GB = {"20m": 12.0}
# Stages shorter than this get no rows/s or growth exponent: timing noise and fixed costs dominate.
MIN_SECONDS = 2.0
_PROGRESS = re.compile(r"^\[\s*[\d.]+s\]\s+(?P<name>\S+)\s+(?P<state>\w+)")
# What run_fns._fit prints when an example budget sets a Trainer's epochs.
_BUDGET = re.compile(r"^(?:two_tower|ranking): [\d,]+ training examples, budget [\d,]+: \d+ of \d+ epochs$")
# The results file's hand-written part: everything from this line on survives the benchmark re-writing the table.
NOTES_MARKER = "<!-- notes: kept when the benchmark re-writes this file -->"


@dataclass
class Stage:
    name: str
    wall: float = 0.0
    cpu: float = 0.0
    peak_rss: int = 0
    # the process tree's summed PSS (shared pages split between the processes that map them)
    peak_pss: int = 0
    # the RSS of the component's own processes: its child process and that child's Beam workers, or this
    # run's runner process and its Beam workers for a component run there (alone, one at a time)
    own_rss: int = 0
    # set when the component finished within one progress poll: it is charged the time since the previous
    # stage ended (for the first component, the run's start-up too)
    unobserved_start: bool = False
    # seconds since its command started (components may run side by side: towerflow's parallel runner)
    start: float = 0.0


@dataclass
class SizeResult:
    size: Size
    stages: list[Stage] = field(default_factory=list)
    lock_wait: float = 0.0
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    training: list[str] = field(default_factory=list)  # the Trainers' epochs under the example budget
    # stage seconds that ran next to another stage (counted twice in the sum of the stages' walls)
    overlap: float = 0.0
    # an earlier run's MLMD store the run started from (`--seed-metadata`): its cached components cost ~0 s
    seeded_from: str = ""

    @property
    def total(self) -> Stage:
        return Stage(
            "total",
            sum(s.wall for s in self.stages if s.name != "synth") - self.overlap,
            sum(s.cpu for s in self.stages if s.name != "synth"),
            max((s.peak_rss for s in self.stages if s.name != "synth"), default=0),
            max((s.peak_pss for s in self.stages if s.name != "synth"), default=0),
        )


class TreeSampler(threading.Thread):
    """CPU seconds and RSS of a process and all its descendants, sampled every `interval` seconds.

    A process's CPU is counted up to its last sample, so a short-lived worker
    may lose up to one interval of CPU; RSS is the sum over live processes, PSS
    too (read every `pss_every` samples: /proc's smaps walk costs more).
    CPU and RSS are also kept per group: a child process the runner started for pipeline
    nodes (`--node NAME` on its command line, once per node it runs) and that
    child's descendants form group "NAME" (nodes run one after another in one
    child: "NAME1+NAME2+..."); every other process is group "".
    """

    def __init__(self, pid: int, interval: float = 0.5, pss_every: int = 4):
        super().__init__(daemon=True)
        self._pss_every, self._samples = pss_every, 0
        self.pss = 0
        self.group_rss: dict[str, int] = {}
        self._root = psutil.Process(pid)
        self._interval = interval
        self._cpu: dict[tuple[int, float], float] = {}
        self._group: dict[tuple[int, float], str] = {}
        self._halt = threading.Event()
        self.rss = 0
        self.lock = threading.Lock()

    def sample(self) -> None:
        try:
            procs = [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return
        groups: dict[int, str] = {}
        for proc in procs:
            try:
                command = proc.cmdline()
            except psutil.Error:
                continue
            if "--node" in command[:-1]:
                name = "+".join(command[i + 1] for i, part in enumerate(command[:-1]) if part == "--node")
                try:
                    groups.update({p.pid: name for p in [proc, *proc.children(recursive=True)]})
                except psutil.Error:
                    groups[proc.pid] = name
        rss, pss, group_rss = 0, 0, {}
        read_pss = self._samples % self._pss_every == 0
        self._samples += 1
        for proc in procs:
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    key = (proc.pid, proc.create_time())
                    resident = proc.memory_info().rss
                pss += proc.memory_full_info().pss if read_pss else 0
            except psutil.Error:
                continue
            rss += resident
            group = groups.get(proc.pid) or self._group.get(key, "")
            group_rss[group] = group_rss.get(group, 0) + resident
            with self.lock:
                self._cpu[key] = times.user + times.system
                # A process first seen outside a group (e.g. a Beam worker whose parent's children could not be
                # listed in that sample) joins its group when a later sample finds it there.
                if groups.get(proc.pid):
                    self._group[key] = groups[proc.pid]
                else:
                    self._group.setdefault(key, "")
        with self.lock:
            self.rss = rss
            self.group_rss = group_rss
            if read_pss:
                self.pss = pss

    @property
    def cpu(self) -> float:
        with self.lock:
            return sum(self._cpu.values())

    def group_cpu(self, group: str) -> float:
        with self.lock:
            return sum(cpu for key, cpu in self._cpu.items() if self._group.get(key) == group)

    def groups(self) -> set[str]:
        with self.lock:
            return set(self._group.values())

    def run(self) -> None:
        while not self._halt.wait(self._interval):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one of the (start, end) intervals."""
    covered, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered


def measure_command(argv: list[str], log_path: Path, split_progress: bool) -> tuple[list[Stage], float]:
    """Runs `argv`, logging its output; one Stage per component (progress lines) or one for the whole command.

    Components may run side by side. A component the runner started in a child process is charged that
    process tree's CPU since the previous component of the same child finished (the first: since the
    child started); any other component the CPU of the rest of the tree while it ran (so two of those
    running at once would share it; the runner runs them one at a time). Returns the stages and the
    seconds of stage time that overlapped another stage.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    with open(log_path, "a", encoding="utf-8", buffering=1) as log:
        log.write(f"$ {' '.join(argv)}\n")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        stages: list[Stage] = []
        running: dict[str, list] = {}  # name -> [wall start, in-process CPU at start, peak rss, pss, own rss]
        charged: dict[str, float] = {}  # child process group -> its CPU charged to finished components
        last_mark = (started, 0.0)  # wall and in-process CPU when the previous stage ended
        peak_rss = peak_pss = 0
        peak_lock = threading.Lock()

        def own_rss(name: str) -> int:
            """The RSS of the process group running component `name` (its child's, else the runner's)."""
            by_group = sampler.group_rss
            group = next((g for g in by_group if g and name in g.split("+")), "")
            return by_group.get(group, 0)

        def track_peak() -> None:
            nonlocal peak_rss, peak_pss
            while proc.poll() is None:
                with peak_lock:
                    peak_rss, peak_pss = max(peak_rss, sampler.rss), max(peak_pss, sampler.pss)
                    for name, state in running.items():
                        state[2], state[3] = max(state[2], sampler.rss), max(state[3], sampler.pss)
                        state[4] = max(state[4], own_rss(name))
                time.sleep(0.5)

        tracker = threading.Thread(target=track_peak, daemon=True)
        tracker.start()
        for line in proc.stdout:
            log.write(line)
            match = _PROGRESS.match(line.strip()) if split_progress else None
            if not match:
                continue
            now, state, name = time.monotonic(), match["state"], match["name"]
            local_cpu = sampler.group_cpu("")
            with peak_lock:
                if state == "running":
                    running[name] = [now, local_cpu, sampler.rss, sampler.pss, own_rss(name)]
                    continue
                if name not in running:
                    # finished within one progress poll: it ran since the previous stage ended
                    running[name] = [*last_mark, sampler.rss, sampler.pss, own_rss(name)]
                wall0, cpu0, rss, pss, own = running.pop(name)
                unobserved = (wall0, cpu0) == last_mark
                group = next((g for g in sampler.groups() if g and name in g.split("+")), None)
                if group is not None:
                    cpu = sampler.group_cpu(group) - charged.get(group, 0.0)
                    charged[group] = charged.get(group, 0.0) + cpu
                else:
                    cpu = local_cpu - cpu0
                stages.append(
                    Stage(
                        name,
                        now - wall0,
                        cpu,
                        max(rss, sampler.rss),
                        max(pss, sampler.pss),
                        own,
                        unobserved,
                        wall0 - started,
                    )
                )
                last_mark = (now, local_cpu)
        code = proc.wait()
        tracker.join()
        sampler.sample()
        sampler.stop()
        if code != 0:
            raise RuntimeError(f"{argv[:3]} failed with exit code {code}; see {log_path}")
        whole = Stage(Path(argv[0]).name, time.monotonic() - started, sampler.cpu, peak_rss, peak_pss)
    if not split_progress:
        return [whole], 0.0
    covered = _union_seconds([(s.start, s.start + s.wall) for s in stages])
    overlap = sum(s.wall for s in stages) - covered
    # start-up (imports, building the pipeline) and the runner's work between components
    other = Stage(
        "other",
        max(whole.wall - covered, 0.0),
        max(whole.cpu - sum(s.cpu for s in stages), 0.0),
        whole.peak_rss,
        whole.peak_pss,
    )
    return [*stages, other], overlap


def run_size(
    size: Size, work_dir: Path, train: bool, keep: bool, run_args: Sequence[str] = (), seed_metadata: str = ""
) -> SizeResult:
    data_dir = work_dir / f"data-{size.name}"
    out_dir = work_dir / f"scale-{size.name}"
    log_path = work_dir / f"scale-{size.name}.log"
    result = SizeResult(size)
    result.load_before = os.getloadavg()
    shutil.rmtree(out_dir, ignore_errors=True)
    if seed_metadata:
        # TFX's cache keys leave out artifact URIs: components whose code, settings and inputs match the
        # earlier run are taken from its store (its artifacts stay where they are) instead of running
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(seed_metadata, out_dir / "metadata.sqlite")
        result.seeded_from = str(seed_metadata)
    if not (data_dir / "interactions.csv").is_file():
        synth, _ = measure_command(
            [TOWERFLOW, "data", "synth", "--users", str(size.users), "--items", str(size.items)]
            + ["--interactions", str(size.interactions), "--out", str(data_dir)],
            log_path,
            split_progress=False,
        )
        result.stages.append(Stage("synth", synth[0].wall, synth[0].cpu, synth[0].peak_rss, synth[0].peak_pss))
    run = [TOWERFLOW, "run", "--data-dir", str(data_dir), "--output-dir", str(out_dir), "--no-push", *run_args]
    stages, result.overlap = measure_command(run + ([] if train else ["--no-train"]), log_path, split_progress=True)
    result.stages += stages
    if train:
        [evaluate], _ = measure_command(
            [TOWERFLOW, "evaluate", "--output-dir", str(out_dir)], log_path, split_progress=False
        )
        evaluate.name = "evaluate"
        result.stages.append(evaluate)
    result.load_after = os.getloadavg()
    result.training = budget_lines(log_path)
    if not keep:
        shutil.rmtree(out_dir, ignore_errors=True)
    return result


def budget_lines(log_path: Path) -> list[str]:
    """The Trainers' lines saying how many epochs the example budget gave them (the last run in the log)."""
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("$ ") and " run " in line]
    return [line.strip() for line in lines[starts[-1] if starts else 0 :] if _BUDGET.match(line.strip())]


def kept_notes(path: Path) -> str:
    """The hand-written notes of an existing results file (from NOTES_MARKER on), or ''."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    return text[text.index(NOTES_MARKER) :] if NOTES_MARKER in text else ""


def write_report(path: Path, report: str) -> None:
    notes = kept_notes(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report + ("\n" + notes if notes else ""), encoding="utf-8")


# --- the table ----------------------------------------------------------------


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f}"


def exponent(t1: float, t2: float, n1: int, n2: int) -> float | None:
    if t1 < MIN_SECONDS or t2 < MIN_SECONDS:
        return None  # too short to say anything about growth
    return math.log(t2 / t1) / math.log(n2 / n1)


_BUDGET_FIELDS = re.compile(
    r"^(?P<model>two_tower|ranking): (?P<examples>[\d,]+) training examples, budget (?P<budget>[\d,]+): "
    r"(?P<epochs>\d+) of (?P<configured>\d+) epochs$"
)
TRAINER_MODELS = {"RankingTrainer": "ranking", "TwoTowerTrainer": "two_tower"}


def trainer_scale(result: SizeResult, stage: str, size: Size) -> float | None:
    """How much more training a Trainer does at `size` than in `result`: (examples x epochs) ratio, with the
    epochs the example budget gives at `size` (models/input_pipeline.budgeted_epochs). None: no budget line."""
    for line in result.training:
        match = _BUDGET_FIELDS.match(line)
        if match and match["model"] == TRAINER_MODELS.get(stage):
            examples, budget = int(match["examples"].replace(",", "")), int(match["budget"].replace(",", ""))
            epochs, configured = int(match["epochs"]), int(match["configured"])
            target = examples * size.interactions / result.size.interactions
            target_epochs = min(configured, max(1, int(budget // target)))
            return target * target_epochs / (examples * epochs)
    return None


def extrapolation_lines(results: list[SizeResult]) -> list[str]:
    """Sizes not measured, estimated from the two largest measured ones (clearly marked as estimates).

    Each stage is scaled from the largest measured size with exponent max(measured exponent, 1): no stage
    is assumed to grow slower than linearly, so fixed costs at small sizes do not make the estimate optimistic
    (`other`, the run's start-up, keeps its measured exponent). A Trainer is scaled by the examples it
    trains on (examples x the epochs the example budget gives at each size), at least linearly in those.
    """
    if len(results) < 2:
        return []
    a, b = sorted(results, key=lambda r: r.size.interactions)[-2:]
    targets = [size for size in SIZES.values() if size.interactions > b.size.interactions]
    if not targets:
        return []
    lines = ["", f"## Extrapolation (NOT measured; from {a.size.name} and {b.size.name})", ""]
    lines.append("| size | stage | estimated wall s | scaled by |")
    lines.append("|---|---|---:|---|")
    by_name_a = {s.name: s for s in a.stages}
    for size in targets:
        total = 0.0
        for stage in b.stages:
            if stage.name == "synth":
                continue
            measured = (
                exponent(by_name_a[stage.name].wall, stage.wall, a.size.interactions, b.size.interactions)
                if (stage.name in by_name_a)
                else None
            )
            trained = trainer_scale(b, stage.name, size)
            if trained is not None:
                estimate, how = stage.wall * trained, f"x{trained:.1f} examples x epochs"
            else:
                # `other` and a stage charged the run's start-up (*) are fixed work: they keep their measured growth
                fixed = stage.name == "other" or stage.unobserved_start
                used = max(measured or 0.0, 0.0) if fixed else max(measured or 1.0, 1.0)
                estimate, how = stage.wall * (size.interactions / b.size.interactions) ** used, f"n^{used:.2f}"
            total += estimate
            lines.append(f"| {size.name} | {stage.name} | {estimate:,.0f} | {how} |")
        lines.append(f"| {size.name} | **total** | {total:,.0f} | |")
    return lines


def machine_lines() -> list[str]:
    return [
        f"- platform: {platform.platform()}, Python {platform.python_version()}",
        f"- CPU: {cpu_model()}, {cores()} cores; memory {memory_gib()}",
    ]


def format_results(results: list[SizeResult], command: str) -> str:
    lines = ["# Pipeline scaling", "", f"Command: `{command}`", "", "## Machine", "", *machine_lines()]
    lines += ["", "## Per component and size", ""]
    lines.append("| size | stage | start s | wall s | CPU s | peak RSS GB | peak PSS GB | own RSS GB | rows/s |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        for s in [*r.stages, r.total]:
            rate = f"{r.size.interactions / s.wall:,.0f}" if s.wall >= MIN_SECONDS else "-"
            name = f"**{s.name}**" if s.name == "total" else s.name + (" (*)" if s.unobserved_start else "")
            start = f"{s.start:.1f}" if s.name not in ("total", "other", "synth", "evaluate") else ""
            own = _gb(s.own_rss) if s.own_rss else "-"
            lines.append(
                f"| {r.size.name} | {name} | {start} | {s.wall:.1f} | {s.cpu:.1f} | {_gb(s.peak_rss)} "
                f"| {_gb(s.peak_pss) if s.peak_pss else '-'} | {own} | {rate} |"
            )
    lines += [
        "",
        "(*) finished within one progress poll (1 s), so it is charged the time since the previous stage ended "
        "(the first one, the run's start-up: imports and building the pipeline). "
        "`other` is the run's time outside components (start-up, building the pipeline, the runner between "
        "components); `total` is the whole `towerflow run` plus `towerflow evaluate`, without `synth` (making the "
        "data is not part of the pipeline). Peak RSS sums the RSS of the run's process tree (the runner, its "
        "child processes and their Beam workers) while the component ran, so pages they share (TensorFlow's "
        "libraries, mapped by every process) count once per process: an upper bound. Peak PSS sums the same "
        "processes' proportional set size, which splits each shared page between the processes that map it: "
        "the memory the tree actually occupied (read every 2 s, RSS every 0.5 s). Own RSS is the peak RSS "
        "of the component's own processes: its child process and that child's Beam workers, or the runner "
        "and its Beam workers for a component run there (the two-tower, the index and its evaluation share one child). "
        "`start s` is when the component was seen starting, seconds after `towerflow run` was launched: "
        "components whose inputs are ready run side by side (pipeline/local_runner.py: StatisticsGen and the "
        "BaselineEvaluator next to Transform, the two-tower Trainer and the index next to the ranker), "
        "so `total` is the elapsed time, not the sum of the stages' walls; "
        + "; ".join(f"{r.size.name}: {r.overlap:.0f} s of stage time overlapped another stage" for r in results)
        + ". A component run in a child process is charged that process tree's CPU since the child's previous "
        "component finished (the two-tower, the index and the IndexEvaluator share one child), any other "
        "the rest of the tree's CPU while it ran. "
        "rows/s is input interactions / wall seconds; "
        f"'-' below {MIN_SECONDS:.0f} s.",
    ]
    if len(results) > 1:
        lines += ["", "## Growth exponents (log(t2/t1) / log(n2/n1) of wall time)", ""]
        pairs = list(zip(results, results[1:]))
        lines.append("| stage | " + " | ".join(f"{a.size.name} -> {b.size.name}" for a, b in pairs) + " |")
        lines.append("|---|" + "---:|" * len(pairs))
        names = [s.name for s in results[0].stages if s.name != "synth"] + ["total"]
        for name in names:
            cells = []
            for a, b in pairs:
                sa = {s.name: s for s in [*a.stages, a.total]}.get(name)
                sb = {s.name: s for s in [*b.stages, b.total]}.get(name)
                e = exponent(sa.wall, sb.wall, a.size.interactions, b.size.interactions) if sa and sb else None
                cells.append("n/a" if e is None else f"{e:.2f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += extrapolation_lines(results)
    lines += ["", "## Goals", ""]
    for r in results:
        total = r.total
        goal = GOAL_SECONDS.get(r.size.name)
        if r.seeded_from:
            lines.append(
                f"- {r.size.name}: started from the cached components of {r.seeded_from} (`--seed-metadata`), so "
                f"its {total.wall:.0f} s and peak RSS are not end-to-end figures: goals neither met nor missed"
            )
            continue
        if goal:
            verdict = "met" if total.wall <= goal else f"missed by {total.wall - goal:.0f} s ({total.wall / goal:.2f}x)"
            slowest = max((s for s in r.stages if s.name != "synth"), key=lambda s: s.wall)
            lines.append(
                f"- {r.size.name}: end to end {total.wall:.0f} s, goal <= {goal:.0f} s: {verdict}; "
                f"the slowest stage is {slowest.name} ({slowest.wall:.0f} s)"
            )
        rss_goal = GOAL_PEAK_RSS_GB.get(r.size.name)
        if rss_goal:
            peak = total.peak_rss / 1e9
            lines.append(
                f"- {r.size.name}: peak RSS {peak:.2f} GB (summed over the process tree), goal <= {rss_goal:.0f} "
                "GB: "
                + ("met" if peak <= rss_goal else f"missed by {peak - rss_goal:.2f} GB")
                + (f"; peak PSS {total.peak_pss / 1e9:.2f} GB" if total.peak_pss else "")
            )
    measured = {r.size.name for r in results}
    for name in sorted(set(GOAL_SECONDS) - measured, key=lambda n: SIZES[n].interactions):
        lines.append(f"- {name}: not measured in this run, so its goals are neither met nor missed here")
    lines += ["", "## Conditions", ""]
    for r in results:
        lines.append(
            f"- {r.size.name} ({r.size.users:,} users, {r.size.items:,} items, {r.size.interactions:,} "
            f"interactions): waited {r.lock_wait:.0f} s for the machine; load average "
            f"{r.load_before[0]:.1f} before, {r.load_after[0]:.1f} after"
        )
        lines += [f"  - {line}" for line in r.training]
    return "\n".join(lines) + "\n"


def _load_result(raw: dict, unobserved: frozenset[str] = frozenset({"ImportSchemaGen"})) -> SizeResult:
    """A SizeResult from its json; `unobserved` marks stages of older json files that lack the flag."""
    return SizeResult(
        Size(**raw["size"]),
        [Stage(**{"unobserved_start": stage["name"] in unobserved, **stage}) for stage in raw["stages"]],
        raw["lock_wait"],
        tuple(raw["load_before"]),
        tuple(raw["load_after"]),
        raw.get("training", []),
        raw.get("overlap", 0.0),
        raw.get("seeded_from", ""),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["100k", "1m"])
    parser.add_argument(
        "--no-train", action="store_true", help="ingestion and validation only (towerflow run --no-train)"
    )
    parser.add_argument("--work-dir", default="runs/scaling", help="synthetic data and runs go here")
    parser.add_argument("--results", default="benchmarks/results/pipeline_scaling.md")
    parser.add_argument("--lock", default=None, help="flock this file for the whole run (shared machines)")
    parser.add_argument("--keep-runs", action="store_true", help="keep each size's pipeline outputs")
    parser.add_argument(
        "--run-args",
        default="",
        help="more `towerflow run` flags for every size, one string (e.g. '--example-budget 1000000')",
    )
    parser.add_argument(
        "--seed-metadata",
        default="",
        help="start each size's run from a copy of this MLMD store (an earlier run's metadata.sqlite): "
        "components it holds with the same code, settings and inputs come from its cache; not end to end",
    )
    parser.add_argument("--command", default=None, help="with --render: the command that measured the json")
    parser.add_argument("--render", default=None, help="only re-render the table from a pipeline_scaling.json")
    args = parser.parse_args(argv)
    if args.seed_metadata and not Path(args.seed_metadata).is_file():
        parser.error(f"--seed-metadata {args.seed_metadata}: no such file (an earlier run's metadata.sqlite)")
    command = "benchmarks/pipeline_scaling.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.render:
        results = [_load_result(r) for r in json.loads(Path(args.render).read_text())]
        write_report(Path(args.results), format_results(results, args.command or command))
        print(Path(args.results).read_text())
        return
    work_dir = (REPO / args.work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    print("\n".join(machine_lines()), flush=True)
    results = []
    waited = time.monotonic()
    lock_file = open(args.lock, "a") if args.lock else None  # noqa: SIM115 - held until the process ends
    if lock_file:
        print(f"waiting for {args.lock}", flush=True)
        fcntl.flock(lock_file, fcntl.LOCK_EX)
    lock_wait = time.monotonic() - waited
    for name in args.sizes:
        print(f"size {name}: running (log: {work_dir / f'scale-{name}.log'})", flush=True)
        result = run_size(
            SIZES[name],
            work_dir,
            train=not args.no_train,
            keep=args.keep_runs,
            run_args=shlex.split(args.run_args),
            seed_metadata=args.seed_metadata,
        )
        result.lock_wait = lock_wait if not results else 0.0
        results.append(result)
        with open(work_dir / "pipeline_scaling.json", "w") as f:
            json.dump([asdict(r) for r in results], f, indent=1)
        report = format_results(results, command)
        write_report(Path(args.results), report)
        print(report, flush=True)
    print(f"Measured {', '.join(args.sizes)}; table in {args.results}, raw numbers in {work_dir}/pipeline_scaling.json")


if __name__ == "__main__":
    main()
