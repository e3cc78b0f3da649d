"""A Trainer configured for a Vertex AI training cluster: worker pools, executor, distribution section."""

import json
from pathlib import Path

import pytest
from tfx import v1 as tfx
from tfx.extensions.google_cloud_ai_platform.trainer import executor as vertex_trainer

from towerflow.pipeline import kubeflow_runner
from towerflow.pipeline.config import IngestionConfig, PipelineConfig
from towerflow.pipeline.pipeline import TWO_TOWER_RUN_FN, create_pipeline
from towerflow.pipeline.training_cluster import TrainingCluster, configure_trainer

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE = "europe-docker.pkg.dev/acme/recsys/towerflow:1.2.3"


def _trainer(**custom_config):
    return tfx.components.Trainer(
        run_fn=TWO_TOWER_RUN_FN,
        examples=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples),
        transform_graph=tfx.dsl.Channel(type=tfx.types.standard_artifacts.TransformGraph),
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=["eval"]),
        custom_config=custom_config,
    ).with_id("TwoTowerTrainer")


def test_parameter_server_cluster_pools_and_custom_config():
    cluster = TrainingCluster(
        project="acme",
        region="europe-west4",
        image=IMAGE,
        strategy="parameter_server",
        workers=4,
        parameter_servers=2,
        machine_type="n1-standard-16",
        ps_machine_type="n1-highmem-8",
        distribution={"keep_checkpoints": 3},
    )
    trainer = configure_trainer(_trainer(two_tower={"epochs": 3}, seed=0), cluster)
    assert trainer.executor_spec.executor_class is vertex_trainer.GenericExecutor
    config = json.loads(trainer.exec_properties["custom_config"])
    assert config["two_tower"] == {"epochs": 3} and config["seed"] == 0  # the model's sections are kept
    assert config["distribution"] == {"strategy": "parameter_server", "keep_checkpoints": 3}
    assert config["ai_platform_enable_vertex"] is True
    assert config["ai_platform_vertex_region"] == "europe-west4"
    args = config[vertex_trainer.TRAINING_ARGS_KEY]
    assert args["project"] == "acme"
    assert args["job_spec"]["worker_pool_specs"] == [
        {
            "machine_spec": {"machine_type": "n1-standard-16"},
            "replica_count": 1,
            "container_spec": {"image_uri": IMAGE},
        },
        {
            "machine_spec": {"machine_type": "n1-standard-16"},
            "replica_count": 4,
            "container_spec": {"image_uri": IMAGE},
        },
        {"machine_spec": {"machine_type": "n1-highmem-8"}, "replica_count": 2, "container_spec": {"image_uri": IMAGE}},
    ]


def test_multi_worker_cluster_with_accelerators():
    cluster = TrainingCluster(
        project="acme", image=IMAGE, workers=1, accelerator_type="NVIDIA_TESLA_T4", accelerator_count=2
    )
    pools = cluster.worker_pool_specs()
    assert [p["replica_count"] for p in pools] == [1, 1]
    assert all(p["machine_spec"]["accelerator_count"] == 2 for p in pools)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"image": ""}, "image must be a non-empty string"),
        ({"strategy": "mirrored"}, "strategy must be one of"),
        ({"strategy": "parameter_server", "workers": 2}, "needs at least one worker and one parameter server"),
        ({"parameter_servers": 2}, "multi_worker_mirrored has no parameter servers"),
        ({"accelerator_type": "NVIDIA_TESLA_T4"}, "set accelerator_type and accelerator_count together"),
        ({"distribution": {"strategy": "tpu"}}, "leave it out of `distribution`"),
        ({"distribution": {"gradient_accumulation_steps": 0}}, "gradient_accumulation_steps must be"),
        ({"distribution": {"replicas": 3}}, "unexpected keyword argument 'replicas'"),
    ],
)
def test_bad_cluster(values, message):
    with pytest.raises((ValueError, TypeError), match=message):
        TrainingCluster(**{"project": "acme", "image": IMAGE, **values})


def test_compiled_kubeflow_spec_runs_the_trainer_on_vertex(tmp_path):
    config = PipelineConfig(
        data_dir=str(REPO_ROOT / "tests" / "fixtures" / "ml-100k"),
        pipeline_root="gs://acme-recsys/root",
        metadata_path="",
        ingestion=IngestionConfig(train_fraction=0.7, eval_fraction=0.85),
    )
    pipeline = create_pipeline(config)
    cluster = TrainingCluster(project="acme", image=IMAGE, workers=2)
    trainer = next(c for c in pipeline.components if c.id == "TwoTowerTrainer")
    configure_trainer(trainer, cluster)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=IMAGE),
        output_dir=str(tmp_path),
        output_filename="spec.json",
    )
    runner.run(pipeline, write_out=True)
    spec = json.loads((tmp_path / "spec.json").read_text())
    executors = spec["pipelineSpec"]["deploymentSpec"]["executors"]
    label = spec["pipelineSpec"]["components"]["TwoTowerTrainer"]["executorLabel"]
    assert "google_cloud_ai_platform.trainer.executor.GenericExecutor" in json.dumps(executors[label])
    custom_config = kubeflow_runner.task_parameters(spec, "TwoTowerTrainer")["custom_config"]
    assert custom_config["distribution"] == {"strategy": "multi_worker_mirrored"}
    assert [
        p["replica_count"] for p in custom_config["ai_platform_training_args"]["job_spec"]["worker_pool_specs"]
    ] == [
        1,
        2,
    ]
    # The ranker was not configured: it still trains in the pipeline's own container.
    ranker_label = spec["pipelineSpec"]["components"]["RankingTrainer"]["executorLabel"]
    assert "google_cloud_ai_platform" not in json.dumps(executors[ranker_label])
