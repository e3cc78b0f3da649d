"""A Trainer on a Vertex AI training cluster: worker pools through TFX's Vertex training extension.

`configure_trainer(trainer, cluster)` turns a pipeline's `tfx.components.Trainer`
into the one of `tfx.extensions.google_cloud_ai_platform`: the same run_fn and
inputs, but its executor submits a Vertex AI CustomJob whose worker pools are

    pool 0  chief               1 replica     (exports the model; the coordinator under parameter_server)
    pool 1  workers             `workers`
    pool 2  parameter servers   `parameter_servers` (parameter_server only)

Vertex AI sets TF_CONFIG on every replica, and the run_fns read it
(`models.distribution`): the `distribution` section written into the Trainer's
custom_config names the strategy. Every replica runs the pipeline's image.
Nothing else in the pipeline changes, so a local run and a cluster run train
the same code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal, get_args

ClusterStrategy = Literal["multi_worker_mirrored", "parameter_server"]
CLUSTER_STRATEGIES: tuple[str, ...] = get_args(ClusterStrategy)
DEFAULT_MACHINE_TYPE = "n1-standard-8"


@dataclass
class TrainingCluster:
    """Where and on what a Trainer runs on Vertex AI; validated on construction."""

    project: str
    region: str = "us-central1"
    image: str = ""  # every replica's container; the pipeline's image (required)
    strategy: ClusterStrategy = "multi_worker_mirrored"
    workers: int = 1  # replicas besides the chief
    parameter_servers: int = 0  # parameter_server only
    machine_type: str = DEFAULT_MACHINE_TYPE  # chief and workers
    ps_machine_type: str = ""  # "" = machine_type
    accelerator_type: str = ""  # e.g. "NVIDIA_TESLA_T4" on chief and workers; "" = none
    accelerator_count: int = 0
    distribution: dict = field(default_factory=dict)  # further DistributionConfig fields

    def __post_init__(self):
        for name in ("project", "region", "image", "machine_type"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"TrainingCluster.{name} must be a non-empty string")
        if self.strategy not in CLUSTER_STRATEGIES:
            raise ValueError(f"TrainingCluster.strategy must be one of {CLUSTER_STRATEGIES}, got {self.strategy!r}")
        for name, minimum in (("workers", 0), ("parameter_servers", 0), ("accelerator_count", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"TrainingCluster.{name} must be an integer >= {minimum}, got {value!r}")
        if self.strategy == "parameter_server" and (self.parameter_servers < 1 or self.workers < 1):
            raise ValueError("parameter_server needs at least one worker and one parameter server")
        if self.strategy == "multi_worker_mirrored" and self.parameter_servers:
            raise ValueError("multi_worker_mirrored has no parameter servers; set parameter_servers=0")
        if bool(self.accelerator_type) != bool(self.accelerator_count):
            raise ValueError("set accelerator_type and accelerator_count together")
        if "strategy" in self.distribution:
            raise ValueError("the strategy is TrainingCluster.strategy; leave it out of `distribution`")
        # Validated by the class the run_fns read it with, so a typo fails at compile time, not on the cluster.
        from towerflow.models.distribution import DistributionConfig

        DistributionConfig(strategy=self.strategy, **self.distribution)

    def _pool(self, replicas: int, machine_type: str, accelerators: bool) -> dict:
        machine = {"machine_type": machine_type}
        if accelerators and self.accelerator_type:
            machine.update(accelerator_type=self.accelerator_type, accelerator_count=self.accelerator_count)
        return {"machine_spec": machine, "replica_count": replicas, "container_spec": {"image_uri": self.image}}

    def worker_pool_specs(self) -> list[dict]:
        """Vertex AI CustomJob worker pools, in Vertex's order: chief, workers, parameter servers."""
        pools = [self._pool(1, self.machine_type, accelerators=True)]
        if self.workers:  # parameter_server always has workers, so its ps pool lands at index 2
            pools.append(self._pool(self.workers, self.machine_type, accelerators=True))
        if self.parameter_servers:
            pools.append(self._pool(self.parameter_servers, self.ps_machine_type or self.machine_type, False))
        return pools


def configure_trainer(trainer, cluster: TrainingCluster):
    """Makes `trainer` (a `tfx.components.Trainer`) train on `cluster` through Vertex AI; returns it.

    Its executor becomes the Vertex training extension's, and its custom_config
    gains the CustomJob (`ai_platform_training_args`), the region and the
    `distribution` section; the model's own sections are kept.
    """
    from tfx.dsl.components.base import executor_spec
    from tfx.extensions.google_cloud_ai_platform import constants
    from tfx.extensions.google_cloud_ai_platform.trainer import executor as vertex_trainer
    from tfx.utils import json_utils

    from towerflow.models.distribution import CONFIG_KEY

    if "custom_config" not in trainer.exec_properties or "run_fn" not in trainer.exec_properties:
        raise ValueError(f"{trainer.id} is not a generic TFX Trainer (no run_fn/custom_config)")
    custom_config = json.loads(trainer.exec_properties.get("custom_config") or "{}")
    custom_config.update(
        {
            constants.ENABLE_VERTEX_KEY: True,
            constants.VERTEX_REGION_KEY: cluster.region,
            vertex_trainer.TRAINING_ARGS_KEY: {
                "project": cluster.project,
                "job_spec": {"worker_pool_specs": cluster.worker_pool_specs()},
            },
            CONFIG_KEY: {"strategy": cluster.strategy, **cluster.distribution},
        }
    )
    trainer.exec_properties["custom_config"] = json_utils.dumps(custom_config)
    trainer.executor_spec = executor_spec.ExecutorClassSpec(vertex_trainer.GenericExecutor)
    return trainer
