"""The Kubeflow V2 compilation: the PipelineJob JSON has every component, wired and parameterised as built."""

import argparse
import json
from pathlib import Path

import pytest
from pipeline_components import DATA_COMPONENTS, KUBEFLOW_RESOLVER_TASKS, TRAINED_COMPONENTS

from towerflow.components.ingestion import readers
from towerflow.pipeline import kubeflow_runner
from towerflow.pipeline.config import IngestionConfig, PipelineConfig, code_fingerprint, fingerprint_dir
from towerflow.pipeline.pipeline import PREPROCESSING_FN, RANKING_RUN_FN, TWO_TOWER_RUN_FN

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = REPO_ROOT / "tests" / "fixtures" / "ml-100k"
IMAGE = "europe-docker.pkg.dev/acme/recsys/towerflow:1.2.3"
ROOT = "gs://acme-recsys/pipeline_root"
DATA_URI = "gs://acme-recsys/data/ml-100k"
# The compiled tasks: no pushers (no serving root), the resolver as its two tasks.
COMPONENTS = TRAINED_COMPONENTS - {"LatestBlessedModelResolver"} | KUBEFLOW_RESOLVER_TASKS


def _config(**overrides) -> PipelineConfig:
    values = dict(
        data_dir=str(DATA),
        pipeline_root=ROOT,
        metadata_path="",
        ingestion=IngestionConfig(train_fraction=0.7, eval_fraction=0.85),
        beam_pipeline_args=kubeflow_runner.kubeflow_beam_args(["--runner=DataflowRunner", "--region=europe-west4"]),
        two_tower={"epochs": 3},
    )
    values.update(overrides)
    return PipelineConfig(**values)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("kfp") / "towerflow.json"
    result = kubeflow_runner.compile_pipeline(
        _config(),
        image=IMAGE,
        output_path=str(out),
        data_uri=DATA_URI,
        component_beam_args={"Ingestion": ["--machine_type=n1-highmem-8"]},
    )
    return result, json.loads(out.read_text())


def test_spec_is_a_kfp_v2_pipeline_job_with_every_component(compiled):
    result, spec = compiled
    assert spec == result.spec
    assert set(spec["pipelineSpec"]["root"]["dag"]["tasks"]) == COMPONENTS
    # result.components are the pipeline's nodes; the resolver is one node, two tasks
    assert set(result.components) == TRAINED_COMPONENTS
    assert spec["pipelineSpec"]["schemaVersion"].startswith("2.")
    assert spec["runtimeConfig"]["gcsOutputDirectory"] == ROOT
    assert spec["labels"]["tfx_runner"] == "kubeflow_v2"
    executors = spec["pipelineSpec"]["deploymentSpec"]["executors"].values()
    # every container executor runs our image; resolver tasks are executed by the platform itself
    assert {e["container"]["image"] for e in executors if "container" in e} == {IMAGE}


def test_task_dependencies_follow_the_data_flow(compiled):
    _, spec = compiled
    assert kubeflow_runner.task_dependencies(spec) == {
        "Ingestion": [],
        "ImportSchemaGen": [],
        "StatisticsGen": ["Ingestion"],
        "ExampleValidator": ["ImportSchemaGen", "StatisticsGen"],
        "Transform": ["ImportSchemaGen", "Ingestion"],
        "TwoTowerTrainer": ["ImportSchemaGen", "Transform"],
        "RankingTrainer": ["ImportSchemaGen", "Transform"],
        "IndexBuilder": ["Ingestion", "TwoTowerTrainer"],
        "IndexEvaluator": ["IndexBuilder", "Ingestion"],
        "LatestBlessedModelResolver-model-resolver": [],
        "LatestBlessedModelResolver-model-blessing-resolver": [],
        "BaselineEvaluator": ["Ingestion"],  # the baselines need no model
        "ModelEvaluator": [
            "BaselineEvaluator",
            "IndexBuilder",
            "IndexEvaluator",  # its recall/latency frontier goes into the evaluation report
            "Ingestion",
            "LatestBlessedModelResolver-model-resolver",
            "RankingTrainer",
            "TwoTowerTrainer",
        ],
    }
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    for trainer in ("TwoTowerTrainer", "RankingTrainer"):
        inputs = {k: v["taskOutputArtifact"] for k, v in tasks[trainer]["inputs"]["artifacts"].items()}
        assert inputs["examples"] == {"producerTask": "Transform", "outputArtifactKey": "transformed_examples"}
        assert inputs["transform_graph"] == {"producerTask": "Transform", "outputArtifactKey": "transform_graph"}
    transform_examples = tasks["Transform"]["inputs"]["artifacts"]["examples"]["taskOutputArtifact"]
    assert transform_examples == {"producerTask": "Ingestion", "outputArtifactKey": "examples"}


def test_parameters_carry_the_split_config_run_fns_and_data_location(compiled):
    _, spec = compiled
    ingestion = kubeflow_runner.task_parameters(spec, "Ingestion")
    assert ingestion["train_fraction"] == 0.7 and ingestion["eval_fraction"] == 0.85
    assert ingestion["split_strategy"] == "global_time"
    assert ingestion["dataset_format"] == readers.detect_format(str(DATA))
    assert ingestion["data_dir"] == DATA_URI
    assert ingestion["input_fingerprint"] == fingerprint_dir(DATA)
    transform = kubeflow_runner.task_parameters(spec, "Transform")
    assert transform["preprocessing_fn"] == PREPROCESSING_FN
    # the test window is scored from raw examples: Transform writes only the splits the Trainers read
    assert transform["splits_config"] == {"analyze": ["train"], "transform": ["train", "eval"]}
    two_tower = kubeflow_runner.task_parameters(spec, "TwoTowerTrainer")
    assert two_tower["run_fn"] == TWO_TOWER_RUN_FN
    assert two_tower["custom_config"] == {
        "two_tower": {"epochs": 3},
        "seed": 0,
        "code_fingerprint": code_fingerprint("models"),
        "example_budget": 2_000_000,
    }
    assert two_tower["train_args"] == {"splits": ["train", "eval"]} and two_tower["eval_args"] == {"splits": ["eval"]}
    assert kubeflow_runner.task_parameters(spec, "RankingTrainer")["run_fn"] == RANKING_RUN_FN
    schema = kubeflow_runner.task_parameters(spec, "ImportSchemaGen")
    assert schema["schema_file"] == kubeflow_runner.IMAGE_SCHEMA_PATH


def test_beam_args_reach_beam_components_and_component_args_only_their_component(compiled):
    _, spec = compiled
    for task in ("Ingestion", "StatisticsGen", "Transform"):
        args = kubeflow_runner.executor_args(spec, task)
        assert "--runner=DataflowRunner" in args and "--region=europe-west4" in args
        assert "--direct_num_workers=0" in args
    assert "--machine_type=n1-highmem-8" in kubeflow_runner.executor_args(spec, "Ingestion")
    assert "--machine_type=n1-highmem-8" not in kubeflow_runner.executor_args(spec, "Transform")


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no component 'IndexBuilderX'"):
        kubeflow_runner.compile_pipeline(
            _config(), IMAGE, str(tmp_path / "p.json"), component_beam_args={"IndexBuilderX": ["--a=1"]}
        )
    with pytest.raises(ValueError, match=r"\.json"):
        kubeflow_runner.compile_pipeline(_config(), IMAGE, str(tmp_path / "p.yaml"))
    with pytest.raises(ValueError, match="image"):
        kubeflow_runner.compile_pipeline(_config(), "", str(tmp_path / "p.json"))


def test_cli_compile_writes_the_spec_and_summarises(tmp_path, capsys):
    from towerflow.cli import pipeline_commands

    parser = argparse.ArgumentParser(prog="towerflow")
    pipeline_commands.add_commands(parser.add_subparsers(dest="command"))
    out = tmp_path / "spec.json"
    args = parser.parse_args(
        ["compile", "--target", "kubeflow", "--image", IMAGE, "--pipeline-root", ROOT, "--data-dir", str(DATA)]
        + ["--output", str(out), "--no-train", "--component-beam-arg=Ingestion=--runner=FlinkRunner"]
    )
    args.func(args)
    printed = capsys.readouterr().out
    assert "Compiled 4 components" in printed and str(out) in printed
    spec = json.loads(out.read_text())
    assert set(spec["pipelineSpec"]["root"]["dag"]["tasks"]) == DATA_COMPONENTS
    assert "--runner=FlinkRunner" in kubeflow_runner.executor_args(spec, "Ingestion")
    bad = parser.parse_args(["compile", "--image", IMAGE, "--pipeline-root", ROOT, "--component-beam-arg=Ingestion"])
    with pytest.raises(ValueError, match="COMPONENT="):
        bad.func(bad)
    other = parser.parse_args(["compile", "--target", "airflow", "--image", IMAGE, "--pipeline-root", ROOT])
    with pytest.raises(ValueError, match="unknown compile target"):
        other.func(other)


def test_dockerfile_installs_like_the_makefile_and_holds_the_schema_where_the_spec_points():
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "FROM ${PYTHON_IMAGE}" in dockerfile and "ARG PYTHON_IMAGE=python:3.11-slim" in dockerfile
    assert "--ignore-requires-python -c constraints.txt" in dockerfile
    assert f"WORKDIR {kubeflow_runner.IMAGE_WORKDIR}" in dockerfile and "COPY schemas ./schemas" in dockerfile
    assert kubeflow_runner.IMAGE_SCHEMA_PATH == f"{kubeflow_runner.IMAGE_WORKDIR}/schemas/schema.pbtxt"
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert {".venv", "data", "runs"} <= set(ignored)


@pytest.mark.parametrize("splits", [("eval",), ("train", "test"), ()])
def test_trainers_fit_on_train_or_train_and_eval_only(splits):
    with pytest.raises(ValueError, match="train_splits"):
        _config(train_splits=splits)


def test_held_out_eval_compiles_into_the_trainers(tmp_path):
    out = tmp_path / "spec.json"
    kubeflow_runner.compile_pipeline(_config(train_splits=("train",)), image=IMAGE, output_path=str(out))
    spec = json.loads(out.read_text())
    for trainer in ("TwoTowerTrainer", "RankingTrainer"):
        assert kubeflow_runner.task_parameters(spec, trainer)["train_args"] == {"splits": ["train"]}


def test_cli_compile_puts_the_trainers_on_a_vertex_training_cluster(tmp_path, capsys):
    from towerflow.cli import pipeline_commands

    parser = argparse.ArgumentParser(prog="towerflow")
    pipeline_commands.add_commands(parser.add_subparsers(dest="command"))
    out = tmp_path / "spec.json"
    args = parser.parse_args(
        ["compile", "--image", IMAGE, "--pipeline-root", ROOT, "--data-dir", str(DATA), "--output", str(out)]
        + ["--training-project", "acme", "--training-workers", "3", "--training-strategy", "parameter_server"]
        + ["--training-parameter-servers", "2"]
    )
    args.func(args)
    assert "Vertex AI training cluster" in capsys.readouterr().out
    spec = json.loads(out.read_text())
    for trainer in ("TwoTowerTrainer", "RankingTrainer"):
        custom = kubeflow_runner.task_parameters(spec, trainer)["custom_config"]
        assert custom["distribution"]["strategy"] == "parameter_server"
        pools = json.dumps(custom)
        assert "acme" in pools and '"replica_count": 3' in pools and '"replica_count": 2' in pools
