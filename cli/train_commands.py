"""`towerflow train`: a pipeline run's Trainer on a local TensorFlow cluster, for tests and laptops.

    towerflow train --run-dir runs/local --model two_tower --cluster local:2w --output runs/train/tt
    towerflow train --run-dir runs/local --model ranker --cluster local:1c2w2ps --epochs 1 --output OUT

Trains from the newest Transform output in `<run-dir>/metadata.sqlite` with the
Trainers' own run_fns, so what runs here is what TFX runs on a cluster. Clusters:

* `local:1` -- one process, strategy "none" (exactly a Trainer without a
  `distribution` section);
* `local:[Nc]Nw` -- N workers (and an optional chief) with multi_worker_mirrored;
* `local:1cNwMps` -- one chief, N workers and M parameter servers with parameter_server.

Each task is a process on 127.0.0.1 with a free port and a generated TF_CONFIG,
in the form Vertex AI gives its replicas; their output is streamed with the
role prefixed ("[worker:1] ..."). When a task fails every task is stopped; with
`--max-restarts` the cluster is then started again on the same output, and the
Trainers' BackupAndRestore resumes from the last backup. On success the SavedModel
(raw-feature signatures) is in OUT/serving_model, logs and checkpoints in OUT/model_run.
`python -m towerflow.cli.train_commands task JOB.json` is the task entry point.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

MODELS = ("two_tower", "ranker")
# The run_fn and the custom_config key of each model, as the pipeline's Trainers use them.
RUN_FNS = {"two_tower": "run_two_tower", "ranker": "run_ranking"}
CONFIG_KEYS = {"two_tower": "two_tower", "ranker": "ranking"}
TRANSFORMED_EXAMPLES = "Transform.transformed_examples"
TRANSFORM_GRAPH = "Transform.transform_graph"
SERVING_MODEL = "serving_model"
MODEL_RUN = "model_run"
STOP_GRACE_SECONDS = 10.0
_CLUSTER = re.compile(r"local:(?:(?P<single>1)|(?:(?P<chief>\d+)c)?(?P<worker>\d+)w(?:(?P<ps>\d+)ps)?)")


@dataclass(frozen=True)
class LocalCluster:
    """The tasks of a `--cluster local:...` spec and the strategy they imply."""

    chief: int = 0
    worker: int = 0
    ps: int = 0

    @classmethod
    def parse(cls, text: str) -> LocalCluster:
        match = _CLUSTER.fullmatch(text.strip())
        if not match:
            raise ValueError(f"--cluster must look like local:1, local:2w, local:1c2w or local:1c2w2ps; got {text!r}")
        if match["single"]:
            return cls()
        cluster = cls(int(match["chief"] or 0), int(match["worker"]), int(match["ps"] or 0))
        if cluster.worker < 1 or cluster.chief > 1:
            raise ValueError(f"{text}: a cluster needs at least one worker and at most one chief")
        if cluster.ps and cluster.chief != 1:
            raise ValueError(f"{text}: a parameter-server cluster needs exactly one chief (local:1c2w2ps)")
        return cluster

    @property
    def strategy(self) -> str:
        if not self.worker:
            return "none"
        return "parameter_server" if self.ps else "multi_worker_mirrored"

    def roles(self) -> list[tuple[str, int]]:
        """(task type, index) of every process; ps first, since the others connect to them."""
        if not self.worker:
            return [("chief", 0)]
        return [(kind, i) for kind in ("ps", "chief", "worker") for i in range(getattr(self, kind))]

    def tf_configs(self, ports: list[int]) -> dict[str, str | None]:
        """Role name -> its TF_CONFIG over 127.0.0.1:`ports` (None: no cluster, strategy "none")."""
        from towerflow.models.distribution import ClusterRole

        roles = self.roles()
        if not self.worker:
            return {"chief:0": None}
        if len(ports) != len(roles):
            raise ValueError(f"need {len(roles)} ports, got {len(ports)}")
        cluster: dict[str, list[str]] = {}
        for (kind, _), port in zip(roles, ports):
            cluster.setdefault(kind, []).append(f"127.0.0.1:{port}")
        return {f"{kind}:{i}": ClusterRole(cluster, kind, i).tf_config() for kind, i in roles}

    def describe(self) -> str:
        if not self.worker:
            return "1 process"
        names = (("chief", self.chief), ("worker", self.worker), ("ps", self.ps))
        parts = [f"{n} {kind}{'s' if n > 1 and kind == 'worker' else ''}" for kind, n in names if n]
        return f"{', '.join(parts)} ({self.strategy})"


def free_ports(count: int) -> list[int]:
    """Ports the OS reports free on 127.0.0.1 (held open together, so they are distinct)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class TrainJob:
    """What every task of the cluster runs: a run_fn and the Trainer arguments (TFX FnArgs fields) it reads."""

    model: str
    train_files: list[str]
    eval_files: list[str]
    transform_output: str
    serving_model_dir: str
    model_run_dir: str
    custom_config: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"--model must be one of {MODELS}, got {self.model!r}")


def job_from_run(
    run_dir: str,
    model: str,
    output: str,
    cluster: LocalCluster,
    *,
    epochs: int | None = None,
    train_splits: tuple[str, ...] | None = None,
    model_config: dict | None = None,
    distribution: dict | None = None,
    seed: int = 0,
) -> TrainJob:
    """The job for `model` on the newest Transform output of the pipeline run in `run_dir`."""
    from towerflow.pipeline.config import PipelineConfig
    from towerflow.pipeline.mlmd import latest_artifacts

    artifacts = latest_artifacts(os.path.join(run_dir, "metadata.sqlite"))
    missing = [key for key in (TRANSFORMED_EXAMPLES, TRANSFORM_GRAPH) if key not in artifacts]
    if missing:
        raise FileNotFoundError(f"{run_dir} has no {', '.join(missing)}; run `towerflow run` (with training) first")
    examples = artifacts[TRANSFORMED_EXAMPLES]
    splits = tuple(train_splits or PipelineConfig.train_splits)
    values = dict(model_config or {})
    if epochs is not None:
        values["epochs"] = epochs
    dist = dict(distribution or {})
    if dist.get("strategy", cluster.strategy) != cluster.strategy:
        raise ValueError(f"--cluster {cluster.describe()} runs {cluster.strategy!r}, not {dist['strategy']!r}")
    if cluster.strategy != "none":
        dist["strategy"] = cluster.strategy
    custom_config = {CONFIG_KEYS[model]: values, "seed": seed}
    if dist:
        custom_config["distribution"] = dist
    out = Path(output).resolve()
    return TrainJob(
        model=model,
        train_files=[os.path.join(examples, f"Split-{split}", "*") for split in splits],
        eval_files=[os.path.join(examples, "Split-eval", "*")],
        transform_output=artifacts[TRANSFORM_GRAPH],
        serving_model_dir=str(out / SERVING_MODEL),
        model_run_dir=str(out / MODEL_RUN),
        custom_config=custom_config,
    )


def run_task(job_path: str) -> None:
    """A task's entry: the job's run_fn with TF_CONFIG from the environment."""
    from types import SimpleNamespace

    from towerflow.models import run_fns

    job = TrainJob(**json.loads(Path(job_path).read_text(encoding="utf-8")))
    fn_args = SimpleNamespace(**{k: v for k, v in dataclasses.asdict(job).items() if k != "model"})
    getattr(run_fns, RUN_FNS[job.model])(fn_args)


@dataclass
class Task:
    name: str
    process: subprocess.Popen
    reader: threading.Thread


class ClusterProcesses:
    """The cluster's task processes: started together, streamed with their role, stopped together."""

    def __init__(self, cluster: LocalCluster, job_path: str, echo=print):
        self.cluster, self.job_path, self.echo = cluster, job_path, echo
        self.tasks: list[Task] = []
        self._lock = threading.Lock()

    def _stream(self, name: str, stream) -> None:
        for line in stream:
            with self._lock:
                self.echo(f"[{name}] {line.rstrip()}")

    def start(self) -> None:
        configs = self.cluster.tf_configs(free_ports(len(self.cluster.roles())) if self.cluster.worker else [])
        for name, tf_config in configs.items():
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")
            env.pop("TF_CONFIG", None)
            if tf_config:
                env["TF_CONFIG"] = tf_config
            process = subprocess.Popen(
                [sys.executable, "-m", "towerflow.cli.train_commands", "task", self.job_path],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                start_new_session=True,  # its own process group: stopping it stops what it started
            )
            reader = threading.Thread(target=self._stream, args=(name, process.stdout), daemon=True)
            reader.start()
            self.tasks.append(Task(name, process, reader))
            self.echo(f"[launcher] {name} started (pid {process.pid})")

    def _finishers(self) -> list[Task]:
        # Parameter-server workers and ps tasks serve until stopped; the chief's exit ends the run.
        if self.cluster.strategy == "parameter_server":
            return [t for t in self.tasks if t.name.startswith("chief")]
        return self.tasks

    def wait(self, poll_seconds: float = 0.5) -> Task | None:
        """Blocks until the run is done (None) or a task has failed (that task)."""
        while True:
            for task in self.tasks:
                code = task.process.poll()
                if code not in (None, 0):
                    return task
            if all(task.process.poll() == 0 for task in self._finishers()):
                return None
            time.sleep(poll_seconds)

    def stop(self) -> None:
        """SIGTERM to every task's process group, SIGKILL to those still alive after a grace period."""
        alive = [t for t in self.tasks if t.process.poll() is None]
        for task in alive:
            _signal_group(task.process, signal.SIGTERM)
        deadline = time.time() + STOP_GRACE_SECONDS
        for task in alive:
            try:
                task.process.wait(max(deadline - time.time(), 0.1))
            except subprocess.TimeoutExpired:
                _signal_group(task.process, signal.SIGKILL)
                task.process.wait()
        for task in self.tasks:
            task.reader.join(timeout=2)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


@dataclass
class LaunchResult:
    serving_model_dir: str
    model_run_dir: str
    seconds: float
    restarts: int
    summary: dict

    def format(self, job: TrainJob, cluster: LocalCluster) -> str:
        dist = self.summary.get("distribution", {})
        steps = f", {dist['steps']} optimizer steps" if "steps" in dist else ""
        restarts = f", {self.restarts} restart(s)" if self.restarts else ""
        return (
            f"Trained {job.model} on {cluster.describe()} in {self.seconds:.1f}s{steps}{restarts}.\n"
            f"  SavedModel (raw-feature signatures): {self.serving_model_dir}\n"
            f"  TensorBoard logs, training_summary.json, checkpoints: {self.model_run_dir}"
        )


def launch(job: TrainJob, cluster: LocalCluster, max_restarts: int = 0, echo=print) -> LaunchResult:
    """Runs `job` on `cluster`; on a task failure stops all and restarts up to `max_restarts` times."""
    if max_restarts < 0:
        raise ValueError(f"--max-restarts must be >= 0, got {max_restarts}")
    Path(job.model_run_dir).mkdir(parents=True, exist_ok=True)
    job_path = os.path.join(job.model_run_dir, "train_job.json")
    Path(job_path).write_text(json.dumps(dataclasses.asdict(job), indent=2), encoding="utf-8")
    started = time.time()
    for attempt in range(max_restarts + 1):
        processes = ClusterProcesses(cluster, job_path, echo)
        try:
            processes.start()
            failed = processes.wait()
        finally:
            processes.stop()
        if failed is None:
            break
        message = f"{failed.name} exited with status {failed.process.returncode}"
        if attempt == max_restarts:
            raise RuntimeError(f"{message}; all tasks stopped (restarts used: {attempt} of {max_restarts})")
        echo(f"[launcher] {message}; stopped all tasks, restarting the cluster ({attempt + 1}/{max_restarts})")
    summary_path = Path(job.model_run_dir) / "training_summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    return LaunchResult(job.serving_model_dir, job.model_run_dir, time.time() - started, attempt, summary)


def _json_object(text: str | None, flag: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as err:
        raise ValueError(f"{flag} is not JSON: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object, got {text!r}")
    return value


def _train(args) -> None:
    cluster = LocalCluster.parse(args.cluster)
    job = job_from_run(
        args.run_dir,
        args.model,
        args.output,
        cluster,
        epochs=args.epochs,
        train_splits=tuple(args.train_splits) if args.train_splits else None,
        model_config=_json_object(args.model_config, "--model-config"),
        distribution=_json_object(args.distribution, "--distribution"),
        seed=args.seed,
    )
    print(f"Training {job.model} from {args.run_dir} on {cluster.describe()} -> {args.output}", flush=True)
    result = launch(job, cluster, max_restarts=args.max_restarts, echo=lambda line: print(line, flush=True))
    print(result.format(job, cluster))


def add_commands(commands) -> None:
    train = commands.add_parser("train", help="train a model from a pipeline run on a local TensorFlow cluster")
    train.add_argument("--run-dir", required=True, help="the --output-dir of `towerflow run` (its Transform output)")
    train.add_argument("--model", required=True, choices=MODELS)
    train.add_argument("--cluster", default="local:1", help="local:1 | local:2w | local:1c2w2ps ... (default local:1)")
    train.add_argument("--output", required=True, help="SavedModel -> OUT/serving_model, logs -> OUT/model_run")
    train.add_argument("--epochs", type=int, default=None, help="override the model config's epochs")
    train.add_argument("--train-splits", nargs="+", choices=("train", "eval"), default=None)
    train.add_argument("--model-config", default=None, help='model config fields as JSON, e.g. {"batch_size": 512}')
    train.add_argument(
        "--distribution", default=None, help='distribution fields as JSON, e.g. {"gradient_accumulation_steps": 4}'
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--max-restarts", type=int, default=0, help="restart the cluster after a task fails")
    train.set_defaults(func=_train)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "task":
        sys.exit("usage: python -m towerflow.cli.train_commands task JOB.json")
    run_task(sys.argv[2])
