"""Training on TensorFlow's own distributed runtime: the Trainers' `distribution` section.

The same `run_fn` runs on a laptop, on a local loopback cluster (`towerflow
train --cluster local:2w`) and on Kubeflow / Vertex AI: the cluster comes from
`TF_CONFIG`, which TFX's Trainer leaves to the environment and Vertex AI sets for
every replica of a worker-pool spec ({"cluster": {"chief": [...], "worker":
[...], "ps": [...]}, "task": {"type": "worker", "index": 1}}).

`custom_config["distribution"]` picks the strategy:

* ``none`` -- today's behaviour: the hardware's strategy
  (`embeddings.strategy_for_hardware`), `batch_size` is the global batch, no
  backups. A Trainer without a `distribution` section gets exactly this.
* ``mirrored`` -- one process, every local GPU.
* ``multi_worker_mirrored`` -- data-parallel over the workers of TF_CONFIG:
  each worker reads its shard of the files (or of the records, `shard_policy`),
  the replicas split the global batch of batch_size examples (so an epoch takes
  the optimizer steps of one process; the two-tower's in-batch softmax gathers
  the candidates of all replicas), gradients are all-reduced, only the chief
  exports (the others write to a scratch dir that is deleted).
* ``parameter_server`` -- the chief coordinates (`ClusterCoordinator` inside
  `Model.fit`), workers train on per-worker datasets, and the variables live on
  the ps tasks; `MinSizePartitioner` splits every variable larger than
  `ps_min_shard_bytes` (in practice the embedding tables) over the ps tasks.
  Worker and ps processes only serve (`tf.distribute.Server`) until stopped.
* ``tpu`` -- `TPUStrategy`; with `embedding_backend="tpu"` the tables shard over
  the TPU embedding cores.

Around the strategy: gradient accumulation (N micro-batches per optimizer
step, for large effective batches on small hardware), `BackupAndRestore` (a
killed cluster restarted with the same dirs resumes at the last backup, step
counter included) and a keep-last-K checkpoint policy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

import tensorflow as tf

from towerflow.models import embeddings as E

StrategyName = Literal["none", "mirrored", "multi_worker_mirrored", "parameter_server", "tpu"]
STRATEGIES: tuple[str, ...] = get_args(StrategyName)
# How multi-worker input is split: by file when there are enough files, else by record ("auto").
ShardPolicy = Literal["auto", "file", "data"]
SHARD_POLICIES: tuple[str, ...] = get_args(ShardPolicy)
# How the learning rate follows the examples per optimizer step (batch_size x micro-batches): "linear"
# multiplies it by the micro-batches (Goyal et al. 2017), "sqrt" by their square root, "none" leaves it.
LearningRateScaling = Literal["linear", "sqrt", "none"]
LEARNING_RATE_SCALINGS: tuple[str, ...] = get_args(LearningRateScaling)
CONFIG_KEY = "distribution"  # the key of this section in the Trainers' custom_config
TF_CONFIG_ENV = "TF_CONFIG"
CLUSTER_ROLES = ("chief", "worker", "ps", "evaluator")
BACKUP_DIR = "backup"  # under the Trainer's model_run_dir
CHECKPOINT_DIR = "checkpoints"  # under the Trainer's model_run_dir
# TensorFlow's own rule of thumb for ps sharding (its ParameterServerStrategy guide): shards of at
# least 256 KiB. On ml-100k that splits the item and user id tables and leaves the small ones whole.
PS_MIN_SHARD_BYTES = 256 << 10
CHIEF_EXPORT_TIMEOUT_SECONDS = 1800.0


@dataclass
class DistributionConfig:
    """`custom_config["distribution"]` of both Trainers; validated on construction."""

    strategy: StrategyName = "none"
    shard_policy: ShardPolicy = "auto"
    gradient_accumulation_steps: int = 1  # micro-batches of `batch_size` per optimizer step
    # The replicas split `batch_size`, so their number leaves the step size alone and only gradient
    # accumulation changes it. (When every replica took `batch_size`, "linear" for the doubled batch of
    # 2 workers was measured on ml-100k and did not close the gap to one process, while the split
    # batch did: benchmarks/results/distributed_training_quality.md.)
    learning_rate_scaling: LearningRateScaling = "none"
    steps_per_epoch: int = 0  # 0 = one pass over the training data per epoch
    validation_steps: int = 0  # 0 = one pass over the eval data after each epoch
    backup: bool | None = None  # BackupAndRestore; None = on for every strategy but "none"
    backup_every_steps: int = 0  # 0 = at the end of each epoch
    keep_checkpoints: int = 0  # keep the last K checkpoints under <model_run_dir>/checkpoints (0 = none)
    checkpoint_every_steps: int = 0  # 0 = one checkpoint per epoch
    keep_checkpoint_every_hours: float = 0.0  # besides the last K, keep one per this many hours (0 = off)
    ps_min_shard_bytes: int = PS_MIN_SHARD_BYTES
    tpu: str = ""  # TPU name or address; "" = discover (TPU_NAME, a TPU VM's local chips)

    def __post_init__(self):
        E.require_choice("strategy", self.strategy, STRATEGIES)
        E.require_choice("shard_policy", self.shard_policy, SHARD_POLICIES)
        E.require_choice("learning_rate_scaling", self.learning_rate_scaling, LEARNING_RATE_SCALINGS)
        E.require_int("gradient_accumulation_steps", self.gradient_accumulation_steps, minimum=1)
        for name in (
            "steps_per_epoch",
            "validation_steps",
            "backup_every_steps",
            "keep_checkpoints",
            "checkpoint_every_steps",
        ):
            E.require_int(name, getattr(self, name), minimum=0)
        E.require_int("ps_min_shard_bytes", self.ps_min_shard_bytes, minimum=1)
        if self.backup is not None:
            E.require_choice("backup", self.backup, (True, False))
        hours = self.keep_checkpoint_every_hours
        if isinstance(hours, bool) or not isinstance(hours, (int, float)) or hours < 0:
            raise ValueError(f"keep_checkpoint_every_hours must be a number >= 0, got {hours!r}")
        if self.strategy == "parameter_server" and (self.backup_every_steps or self.checkpoint_every_steps):
            raise ValueError(
                "parameter_server backs up and checkpoints at epoch ends only (Keras runs no batch callbacks "
                "there); set backup_every_steps and checkpoint_every_steps to 0, and steps_per_epoch to size epochs"
            )
        if not isinstance(self.tpu, str):
            raise ValueError(f"tpu must be a string, got {self.tpu!r}")

    @property
    def distributed(self) -> bool:
        return self.strategy != "none"

    @property
    def backup_enabled(self) -> bool:
        return self.distributed if self.backup is None else self.backup

    @classmethod
    def from_custom_config(cls, custom_config: Mapping | None) -> DistributionConfig:
        values = dict((custom_config or {}).get(CONFIG_KEY) or {})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown DistributionConfig fields in custom_config[{CONFIG_KEY!r}]: {sorted(unknown)}")
        return cls(**values)


@dataclass(frozen=True)
class ClusterRole:
    """This process's place in the cluster TF_CONFIG describes (no cluster: a lone chief)."""

    cluster: dict[str, list[str]] = field(default_factory=dict)
    task_type: str = "chief"
    task_index: int = 0

    @classmethod
    def from_tf_config(cls, text: str | None) -> ClusterRole:
        """Parses TF_CONFIG as TFX's Trainer and Vertex AI set it; "master" (old AI Platform) means chief."""
        if not text:
            return cls()
        try:
            tf_config = json.loads(text)
        except ValueError as err:
            raise ValueError(f"{TF_CONFIG_ENV} is not JSON: {err}") from None
        cluster = {("chief" if k == "master" else k): list(v) for k, v in (tf_config.get("cluster") or {}).items()}
        if not cluster:
            return cls()
        unknown = sorted(set(cluster) - set(CLUSTER_ROLES))
        if unknown:
            raise ValueError(f"{TF_CONFIG_ENV} has unknown cluster roles {unknown}; known: {CLUSTER_ROLES}")
        task = tf_config.get("task") or {}
        task_type = "chief" if task.get("type") == "master" else task.get("type")
        index = task.get("index", 0)
        if task_type not in cluster:
            raise ValueError(f"{TF_CONFIG_ENV} task type {task_type!r} is not in its cluster {sorted(cluster)}")
        if not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
            raise ValueError(f"{TF_CONFIG_ENV} task index {index!r} is out of range for {task_type!r}")
        return cls(cluster, task_type, index)

    @classmethod
    def from_env(cls) -> ClusterRole:
        return cls.from_tf_config(os.environ.get(TF_CONFIG_ENV))

    @property
    def is_cluster(self) -> bool:
        return bool(self.cluster)

    @property
    def is_chief(self) -> bool:
        """The chief task, else worker 0 of a cluster without one (TensorFlow's rule); alone: yes."""
        if not self.cluster:
            return True
        if "chief" in self.cluster:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def num_ps(self) -> int:
        return len(self.cluster.get("ps", []))

    @property
    def name(self) -> str:
        return f"{self.task_type}:{self.task_index}"

    def tf_config(self) -> str:
        """TF_CONFIG for this role (chief spelled "chief"), as TensorFlow reads it."""
        return json.dumps({"cluster": self.cluster, "task": {"type": self.task_type, "index": self.task_index}})


@dataclass
class Distribution:
    """A built strategy with the facts the run_fns need about it."""

    config: DistributionConfig
    role: ClusterRole
    strategy: tf.distribute.Strategy

    @property
    def is_chief(self) -> bool:
        return self.role.is_chief

    @property
    def is_parameter_server(self) -> bool:
        return self.config.strategy == "parameter_server"

    @property
    def replicas(self) -> int:
        """Replicas that split each batch (strategy "none": 1, whatever the hardware strategy holds)."""
        return self.strategy.num_replicas_in_sync if self.config.distributed else 1

    def global_batch_size(self, batch_size: int) -> int:
        """Examples per optimizer step: `batch_size` per micro-batch, split between the replicas.

        So one process and N replicas take the same optimizer steps per epoch on the same batches
        (each replica `batch_size / N` of them, which must be whole).
        """
        if batch_size % self.replicas:
            raise ValueError(
                f"batch_size {batch_size} does not split between {self.replicas} replicas; "
                f"make it a multiple of {self.replicas}"
            )
        return batch_size * self.config.gradient_accumulation_steps

    def learning_rate(self, learning_rate: float, batch_size: int) -> float:
        """The learning rate for `global_batch_size(batch_size)` examples per optimizer step under the
        config's `learning_rate_scaling`, given the one tuned for `batch_size` examples per step."""
        factor = self.global_batch_size(batch_size) / batch_size
        if self.config.learning_rate_scaling == "linear":
            return learning_rate * factor
        if self.config.learning_rate_scaling == "sqrt":
            return learning_rate * factor**0.5
        return learning_rate

    def scaled(self, config):
        """A Trainer config (anything with `learning_rate` and `batch_size`) with its learning rate scaled
        for this run's global batch; the same object when nothing changes."""
        learning_rate = self.learning_rate(config.learning_rate, config.batch_size)
        if learning_rate == config.learning_rate:
            return config
        return dataclasses.replace(config, learning_rate=learning_rate)

    def output_dir(self, path: str) -> str:
        """`path` on the chief; a scratch dir elsewhere (all workers write, only the chief's output is kept)."""
        if self.is_chief:
            return path
        return tempfile.mkdtemp(prefix=f"towerflow_{self.role.task_type}{self.role.task_index}_")

    def await_chief_export(self, path: str, timeout_seconds: float = CHIEF_EXPORT_TIMEOUT_SECONDS) -> None:
        """On a non-chief: waits for the chief's SavedModel in `path`.

        TFX's Trainer executor checks on every replica that the model exists once run_fn returns.
        """
        marker = os.path.join(path, "saved_model.pb")
        deadline = time.time() + timeout_seconds
        while not self.is_chief and not tf.io.gfile.exists(marker):
            if time.time() > deadline:
                raise RuntimeError(f"the chief wrote no model to {path} within {timeout_seconds:.0f}s")
            time.sleep(1.0)

    def discard(self, path: str, written: str) -> None:
        """Deletes a non-chief's scratch output (`written` != the real `path`)."""
        if written != path:
            shutil.rmtree(written, ignore_errors=True)


def _set_tf_config(role: ClusterRole) -> None:
    # TensorFlow's resolvers read TF_CONFIG themselves; give them the normalised form ("chief", not "master").
    if role.is_cluster:
        os.environ[TF_CONFIG_ENV] = role.tf_config()


def serve(role: ClusterRole) -> None:
    """A parameter-server cluster's worker or ps task: run a gRPC server until the process is stopped."""
    server = tf.distribute.Server(
        tf.train.ClusterSpec(role.cluster),
        job_name=role.task_type,
        task_index=role.task_index,
        protocol="grpc",
        start=True,
    )
    print(f"{role.name} serving for the parameter-server cluster at {server.target}", flush=True)
    server.join()


def build_strategy(config: DistributionConfig, role: ClusterRole) -> tf.distribute.Strategy:
    """The strategy of `config` over `role`'s cluster. Create it first thing: collectives need it before any op."""
    if config.strategy == "none":
        return E.strategy_for_hardware()
    if config.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if config.strategy == "tpu":
        return E.strategy_for_hardware(tpu=config.tpu or "local")
    _set_tf_config(role)
    if config.strategy == "multi_worker_mirrored":
        if role.num_ps:
            raise ValueError("multi_worker_mirrored takes a cluster of chief/worker tasks; TF_CONFIG lists ps tasks")
        return tf.distribute.MultiWorkerMirroredStrategy()
    # parameter_server
    if not role.num_ps or not role.cluster.get("worker"):
        raise ValueError(f"parameter_server needs ps and worker tasks in {TF_CONFIG_ENV}; got {sorted(role.cluster)}")
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=config.ps_min_shard_bytes, max_shards=role.num_ps
    )
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    return tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)


def start(custom_config: Mapping | None, role: ClusterRole | None = None) -> Distribution | None:
    """Reads the `distribution` section and the cluster, builds the strategy.

    Returns None after serving when this process is a worker or ps task of a
    parameter-server cluster (those only run a server; the chief drives them).
    """
    config = DistributionConfig.from_custom_config(custom_config)
    role = role or (ClusterRole.from_env() if config.distributed else ClusterRole())
    if config.strategy in ("multi_worker_mirrored", "parameter_server") and not role.is_cluster:
        raise ValueError(f"strategy {config.strategy!r} needs a cluster in {TF_CONFIG_ENV}; it is unset")
    if role.task_type == "evaluator":
        raise ValueError("an evaluator task is not supported; the chief evaluates on the eval split during fit")
    if config.strategy == "parameter_server" and role.task_type in ("worker", "ps"):
        _set_tf_config(role)
        serve(role)
        return None
    return Distribution(config, role, build_strategy(config, role))


# --- input -------------------------------------------------------------------------------


def with_shard_policy(dataset: tf.data.Dataset, policy: ShardPolicy) -> tf.data.Dataset:
    """Tells a multi-worker strategy how to split `dataset` between workers."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = {
        "auto": tf.data.experimental.AutoShardPolicy.AUTO,
        "file": tf.data.experimental.AutoShardPolicy.FILE,
        "data": tf.data.experimental.AutoShardPolicy.DATA,
    }[policy]
    return dataset.with_options(options)


def _batches(dataset: tf.data.Dataset) -> int:
    return int(dataset.reduce(0, lambda count, _: count + 1))


def fit_inputs(
    dist: Distribution,
    make_train: Callable[[int], tf.data.Dataset],
    make_eval: Callable[[int], tf.data.Dataset],
    batch_size: int,
) -> dict:
    """`Model.fit` arguments for the training and validation data; `make_*(batch)` build the datasets.

    * none: the datasets as they are, one pass per epoch (or `steps_per_epoch` of the repeated data).
    * mirrored, multi_worker_mirrored, tpu: each worker reads its shard (`shard_policy`), repeated,
      for the steps of one pass over all data -- shards of unequal size would otherwise hand some
      workers empty batches at the end, which in-batch softmax losses cannot take.
    * parameter_server: a per-worker `DatasetCreator` (each worker batches its share and repeats);
      no validation, as the chief only coordinates.
    """
    config = dist.config
    global_batch = dist.global_batch_size(batch_size)
    eval_batch = global_batch // config.gradient_accumulation_steps
    if not config.distributed:
        # A fixed number of steps reads on across passes; without one, each epoch is one pass (as always).
        train, evaluation = make_train(global_batch), make_eval(eval_batch)
        return {
            "x": train.repeat() if config.steps_per_epoch else train,
            "validation_data": evaluation.repeat() if config.validation_steps else evaluation,
            "steps_per_epoch": config.steps_per_epoch or None,
            "validation_steps": config.validation_steps or None,
        }
    steps = config.steps_per_epoch or _batches(make_train(global_batch))
    if dist.is_parameter_server:

        def per_worker(context: tf.distribute.InputContext) -> tf.data.Dataset:
            dataset = make_train(context.get_per_replica_batch_size(global_batch))
            return dataset.shard(context.num_input_pipelines, context.input_pipeline_id).repeat()

        return {"x": tf.keras.utils.experimental.DatasetCreator(per_worker), "steps_per_epoch": steps}
    return {
        "x": with_shard_policy(make_train(global_batch).repeat(), config.shard_policy),
        "steps_per_epoch": steps,
        "validation_data": with_shard_policy(make_eval(eval_batch).repeat(), config.shard_policy),
        "validation_steps": config.validation_steps or _batches(make_eval(eval_batch)),
    }


# --- gradient accumulation ----------------------------------------------------------------


def _first(structure) -> tf.Tensor:
    return tf.nest.flatten(structure)[0]


def _scaled(gradient, weight: tf.Tensor):
    # multiply_no_nan: an empty micro-batch (weight 0) contributes 0 even if its loss is NaN.
    if gradient is None:
        return None
    if isinstance(gradient, tf.IndexedSlices):
        values = tf.math.multiply_no_nan(gradient.values, tf.cast(weight, gradient.values.dtype))
        return tf.IndexedSlices(values, gradient.indices, gradient.dense_shape)
    return tf.math.multiply_no_nan(gradient, tf.cast(weight, gradient.dtype))


def _added(total, gradient):
    if total is None:
        return gradient
    if isinstance(total, tf.IndexedSlices) or isinstance(gradient, tf.IndexedSlices):
        # Sparse (embedding) gradients stay sparse: rows of both, summed by the optimizer's apply.
        total, gradient = (g if isinstance(g, tf.IndexedSlices) else _dense_as_slices(g) for g in (total, gradient))
        return tf.IndexedSlices(
            tf.concat([total.values, gradient.values], 0),
            tf.concat([total.indices, gradient.indices], 0),
            total.dense_shape,
        )
    return total + gradient


def _dense_as_slices(gradient: tf.Tensor) -> tf.IndexedSlices:
    rows = tf.shape(gradient, out_type=tf.int64)[0]
    return tf.IndexedSlices(gradient, tf.range(rows), tf.shape(gradient, out_type=tf.int64))


def report_global_metrics(model: tf.keras.Model, dist: Distribution) -> None:
    """Makes the logged metrics the global ones under multi_worker_mirrored.

    Keras reduces a multi-worker step's outputs by summing them over the workers ("auto"), metrics
    included, although a metric's result is already aggregated over every replica: each worker's
    `mean_loss` (the epoch's loss per example) would be logged N times over. "first" logs the first
    replica's outputs: the global metrics as they are, and for `loss` (the last step's own loss, as
    tfrs.Model returns it) the first replica's share of that batch.
    """
    if dist.config.strategy == "multi_worker_mirrored" and dist.replicas > 1:
        model.distribute_reduction_method = "first"


def enable_gradient_accumulation(model: tf.keras.Model, micro_batches: int) -> None:
    """Makes `model.fit` take one optimizer step per `micro_batches` micro-batches.

    Each batch (per replica) is split into `micro_batches` strided parts; every part's
    gradient is computed on its own (so activations of one part at a time are
    alive) and weighted by its share of the batch's rows, and the sum is applied
    once. For a loss that is a mean over examples, this is the gradient of the
    whole batch: the same first update as one batch of micro_batches x b. (In-batch
    softmax losses see `b` negatives per micro-batch, as their config says.)
    The model must be a `tfrs.Model` (it trains through `compute_loss`).
    """
    E.require_int("micro_batches", micro_batches, minimum=1)
    if micro_batches == 1:
        return

    def train_step(inputs):
        rows = tf.shape(_first(inputs))[0]
        variables, accumulated = None, None
        loss_sum = regularization_sum = tf.constant(0.0)
        previous: list[tf.Tensor] = []
        for part_index in range(micro_batches):
            part = tf.nest.map_structure(lambda x, i=part_index: x[i::micro_batches], inputs)
            weight = tf.cast(tf.shape(_first(part))[0], tf.float32) / tf.cast(rows, tf.float32)
            # One micro-batch after another, so that only one holds activations at a time.
            with tf.control_dependencies(previous), tf.GradientTape() as tape:
                loss = model.compute_loss(part, training=True)
                regularization = tf.cast(sum(model.losses), tf.float32) if model.losses else tf.constant(0.0)
                total = loss + regularization
            if variables is None:  # read after the first forward pass, which builds a fresh model's layers
                variables = model.trainable_variables
                accumulated = [None] * len(variables)
            gradients = [_scaled(g, weight) for g in tape.gradient(total, variables)]
            accumulated = [_added(a, g) for a, g in zip(accumulated, gradients)]
            loss_sum += tf.math.multiply_no_nan(loss, weight)
            regularization_sum += tf.math.multiply_no_nan(regularization, weight)
            previous = [t for t in tf.nest.flatten(gradients, expand_composites=True) if t is not None]
        model.optimizer.apply_gradients([(g, v) for g, v in zip(accumulated, variables) if g is not None])
        metrics = {metric.name: metric.result() for metric in model.metrics}
        metrics.update(loss=loss_sum, regularization_loss=regularization_sum, total_loss=loss_sum + regularization_sum)
        return metrics

    model.train_step = train_step


# --- checkpoints --------------------------------------------------------------------------


class ResumeReport(tf.keras.callbacks.Callback):
    """Says at which optimizer step training starts (after BackupAndRestore restored, if it did)."""

    def __init__(self, name: str):
        super().__init__()
        self._name = name
        self.initial_step = 0

    def on_train_begin(self, logs=None):
        self.initial_step = int(self.model.optimizer.iterations.numpy())
        if self.initial_step:
            print(f"{self._name} resumed from a backup at step {self.initial_step}", flush=True)


class KeepLastCheckpoints(tf.keras.callbacks.Callback):
    """Checkpoints (model + optimizer) every N steps or each epoch; keeps the last K (and one per H hours).

    Every worker of a multi-worker strategy saves (TensorFlow expects all to
    take part); only the chief keeps its files.
    """

    def __init__(self, dist: Distribution, directory: str):
        super().__init__()
        self._dist, self._directory = dist, directory
        self._written = directory
        self._manager: tf.train.CheckpointManager | None = None
        self._last_saved = -1

    def on_train_begin(self, logs=None):
        config = self._dist.config
        self._written = self._dist.output_dir(self._directory)
        checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer)
        self._manager = tf.train.CheckpointManager(
            checkpoint,
            self._written,
            max_to_keep=config.keep_checkpoints,
            keep_checkpoint_every_n_hours=config.keep_checkpoint_every_hours or None,
            step_counter=self.model.optimizer.iterations,
        )

    def _save(self) -> None:
        step = int(self.model.optimizer.iterations.numpy())
        if step != self._last_saved:
            self._manager.save(checkpoint_number=step)
            self._last_saved = step

    def _implements_train_batch_hooks(self):
        return bool(self._dist.config.checkpoint_every_steps)

    def on_train_batch_end(self, batch, logs=None):
        every = self._dist.config.checkpoint_every_steps
        if every and int(self.model.optimizer.iterations.numpy()) % every == 0:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        if not self._dist.config.checkpoint_every_steps:
            self._save()

    def on_train_end(self, logs=None):
        self._save()
        self._dist.discard(self._directory, self._written)


def checkpoint_callbacks(dist: Distribution, model_run_dir: str | None, name: str) -> list[tf.keras.callbacks.Callback]:
    """BackupAndRestore and the keep-last-K policy as `dist.config` asks, then the resume report."""
    callbacks: list[tf.keras.callbacks.Callback] = []
    config = dist.config
    if (config.backup_enabled or config.keep_checkpoints) and not model_run_dir:
        raise ValueError("backups and checkpoints need the Trainer's model_run_dir")
    if config.backup_enabled:
        callbacks.append(
            tf.keras.callbacks.BackupAndRestore(
                os.path.join(model_run_dir, BACKUP_DIR), save_freq=config.backup_every_steps or "epoch"
            )
        )
    if config.keep_checkpoints:
        callbacks.append(KeepLastCheckpoints(dist, os.path.join(model_run_dir, CHECKPOINT_DIR)))
    if config.backup_enabled:
        callbacks.append(ResumeReport(name))
    return callbacks


def embedding_placement(model: tf.keras.Model) -> dict[str, list[str]]:
    """Embedding table name -> the devices of its shards (one entry for an unsharded table).

    `model` is a two-tower or DCN model (its tables are `model.embeddings`).
    """
    tables = model.embeddings.table_variables()
    return {name: [shard.device for shard in getattr(table, "variables", [table])] for name, table in tables.items()}
