"""Compiles the towerflow pipeline for Kubeflow Pipelines v2 / Vertex AI Pipelines.

The same `create_pipeline(...)` the local runner uses goes through TFX's
`KubeflowV2DagRunner` into a PipelineJob JSON (the KFP v2 IR). Submit it with
the KFP client or `google.cloud.aiplatform.PipelineJob(template_path=...)`;
see docs/kubeflow.md.

Things that differ from a local run, and why they are parameters here:

- `image`: every component runs in this container (build it from the repo's
  Dockerfile); it must hold the `components`/`models` packages the pipeline
  names by dotted path.
- `pipeline_root`: where artifacts go (gs://, s3://, a mounted volume).
- `data_uri`: the location the cluster reads the raw logs from. The pipeline
  is built against a local copy (`config.data_dir`) for format detection and
  the content fingerprint that keys the cache, so both must hold the same files.
- `schema_uri`: the checked-in schema's path inside the image.
- Beam args: pipeline-wide ones in `config.beam_pipeline_args` (the default,
  `kubeflow_beam_args()`, is the DirectRunner on every core of the pod) and
  per-component ones in `component_beam_args`, e.g. only Ingestion on Dataflow.
- There is no metadata connection: the KFP/Vertex backend records MLMD itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from towerflow.pipeline.config import PipelineConfig

IMAGE_WORKDIR = "/towerflow"  # where the Dockerfile puts the repo
IMAGE_SCHEMA_PATH = f"{IMAGE_WORKDIR}/schemas/schema.pbtxt"


def kubeflow_beam_args(extra: Sequence[str] = ()) -> list[str]:
    """DirectRunner using every core of the component's pod (0 = all cores), then `extra`."""
    return ["--direct_running_mode=multi_processing", "--direct_num_workers=0", *extra]


@dataclass
class CompiledPipeline:
    path: str
    image: str
    pipeline_root: str
    components: list[str]
    spec: dict

    def format(self) -> str:
        return (
            f"Compiled {len(self.components)} components ({', '.join(self.components)}) to {self.path}\n"
            f"  image {self.image}\n  pipeline root {self.pipeline_root}"
        )


def _component(pipeline, component_id: str):
    for component in pipeline.components:
        if component.id == component_id:
            return component
    known = ", ".join(c.id for c in pipeline.components)
    raise ValueError(f"no component {component_id!r} in the pipeline; components: {known}")


def compile_pipeline(
    config: PipelineConfig,
    image: str,
    output_path: str,
    *,
    data_uri: str | None = None,
    schema_uri: str | None = IMAGE_SCHEMA_PATH,
    component_beam_args: Mapping[str, Sequence[str]] | None = None,
    display_name: str | None = None,
    training_cluster=None,
) -> CompiledPipeline:
    """Writes the PipelineJob JSON for `config` to `output_path` and returns what it contains.

    `training_cluster` (pipeline/training_cluster.TrainingCluster) runs both Trainers on a Vertex AI
    training cluster (worker pools, a distribution strategy) instead of inside their pipeline step.
    """
    from tfx import v1 as tfx

    from towerflow.pipeline.pipeline import create_pipeline

    if not image:
        raise ValueError("a container image is required (build it from the Dockerfile and push it)")
    if not output_path.endswith(".json"):
        raise ValueError(f"the pipeline spec is written as JSON; give a .json output path, got {output_path!r}")
    pipeline = create_pipeline(config)
    if data_uri:
        _component(pipeline, "Ingestion").exec_properties["data_dir"] = data_uri
    if schema_uri and config.schema_path:
        schema_gen = next((c for c in pipeline.components if c.id == "ImportSchemaGen"), None)
        if schema_gen is not None:
            schema_gen.exec_properties["schema_file"] = schema_uri
    if training_cluster is not None:
        from towerflow.pipeline.training_cluster import configure_trainer

        for component_id in ("TwoTowerTrainer", "RankingTrainer"):
            configure_trainer(_component(pipeline, component_id), training_cluster)
    for component_id, args in (component_beam_args or {}).items():
        component = _component(pipeline, component_id)
        if not hasattr(component, "with_beam_pipeline_args"):
            raise ValueError(f"{component_id} does not run Beam; Beam args apply to Beam components only")
        component.with_beam_pipeline_args(list(args))

    output_dir = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(output_dir, exist_ok=True)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=image, display_name=display_name or config.pipeline_name
        ),
        output_dir=output_dir,
        output_filename=os.path.basename(output_path),
    )
    runner.run(pipeline, write_out=True)
    with open(os.path.join(output_dir, os.path.basename(output_path)), encoding="utf-8") as f:
        spec = json.load(f)
    return CompiledPipeline(
        path=os.path.join(output_dir, os.path.basename(output_path)),
        image=image,
        pipeline_root=config.pipeline_root,
        components=[c.id for c in pipeline.components],
        spec=spec,
    )


def task_dependencies(spec: dict) -> dict[str, list[str]]:
    """Task -> the tasks it waits for, from a compiled PipelineJob JSON."""
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    return {name: sorted(task.get("dependentTasks", [])) for name, task in tasks.items()}


def task_parameters(spec: dict, task: str) -> dict:
    """A task's constant parameters as Python values (JSON strings of TFX protos decoded)."""
    params = spec["pipelineSpec"]["root"]["dag"]["tasks"][task].get("inputs", {}).get("parameters", {})
    out = {}
    for name, value in params.items():
        constant = value.get("runtimeValue", {}).get("constantValue", value.get("runtimeValue", {}).get("constant"))
        if isinstance(constant, dict) and len(constant) == 1:
            (kind, constant), *_ = constant.items()
            if kind == "intValue":
                constant = int(constant)
        if isinstance(constant, str) and constant[:1] in "{[":
            try:
                constant = json.loads(constant)
            except ValueError:
                pass
        out[name] = constant
    return out


def executor_args(spec: dict, task: str) -> list[str]:
    """The container args of a task's executor (Beam args are appended here)."""
    executor = spec["pipelineSpec"]["components"][task]["executorLabel"]
    return spec["pipelineSpec"]["deploymentSpec"]["executors"][executor]["container"]["args"]
