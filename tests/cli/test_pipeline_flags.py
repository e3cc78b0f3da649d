"""`towerflow run` and `towerflow compile` build the same pipeline from the same flags.

The flags that decide what the pipeline computes are defined once
(cli/pipeline_commands.add_pipeline_flags) and become a config in one place
(PipelineConfig.from_args); these tests hold both commands to that, down to
every parameter of every component in the compiled Kubeflow spec.
"""

import json
from pathlib import Path

import pytest

from towerflow.cli.main import build_parser
from towerflow.cli.pipeline_commands import compile_config, run_config
from towerflow.models.vocabulary import VOCABULARY_CONFIG_KEY, VocabularyLimits
from towerflow.pipeline.config import IngestionConfig, PipelineConfig, StatisticsConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "ml-100k"
# Every pipeline flag set away from its default.
FLAGS = [
    "--data-dir", str(FIXTURE),
    "--pipeline-name", "flags-check",
    "--split", "leave_last_n",
    "--leave-last-n", "2",
    "--train-fraction", "0.7",
    "--eval-fraction", "0.85",
    "--history-length", "7",
    "--max-bad-fraction", "0.05",
    "--seed", "3",
    "--example-budget", "5000",
    "--train-splits", "train",
    "--epochs", "2",
    "--stats-sample-rate", "0.25",
    "--stats-sample-above", "3",
    "--no-stats-sketch",
    "--transform-statistics",
    "--user-top-k", "50",
    "--user-min-count", "2",
    "--item-top-k", "60",
    "--item-min-count", "3",
    "--title-token-top-k", "70",
    "--no-cache",
]  # fmt: skip


def _args(command: str, tmp_path: Path, *extra: str):
    runner = {
        "run": ["--output-dir", str(tmp_path / "run")],
        "compile": ["--image", "img:1", "--pipeline-root", "gs://bucket/root", "--output", str(tmp_path / "spec.json")],
    }[command]
    return build_parser().parse_args([command, *FLAGS, *runner, *extra])


def test_every_flag_reaches_the_config_of_both_commands(tmp_path):
    local, compiled = run_config(_args("run", tmp_path)), compile_config(_args("compile", tmp_path))
    assert local.settings() == compiled.settings()
    expected_ingestion = IngestionConfig(
        split_strategy="leave_last_n",
        leave_last_n=2,
        train_fraction=0.7,
        eval_fraction=0.85,
        history_length=7,
        max_bad_fraction=0.05,
    )
    for config in (local, compiled):
        assert config.ingestion == expected_ingestion
        assert config.pipeline_name == "flags-check"
        assert (config.seed, config.train_splits, config.enable_cache) == (3, ("train",), False)
        assert config.example_budget == 5000
        assert config.two_tower == {"epochs": 2} and config.ranking == {"epochs": 2}
        assert config.data_dir == str(FIXTURE)
        assert config.vocabulary == VocabularyLimits(50, 2, 60, 3, 70)
        assert config.statistics == StatisticsConfig(
            sample_rate=0.25, sample_above_rows=3, sketch_top_k=False, transform_statistics=True
        )


def test_no_flags_means_the_dataclass_defaults(tmp_path):
    args = build_parser().parse_args(["run", "--data-dir", str(FIXTURE), "--output-dir", str(tmp_path)])
    config = run_config(args)
    defaults = PipelineConfig(data_dir=str(FIXTURE), pipeline_root="x", metadata_path="y")
    assert config.settings() == defaults.settings()


# Where a runner keeps things, not what the pipeline computes: the deletion ledger lives beside a local
# run's pipeline root (components/ingestion/deletions.py); a remote root has none.
RUNNER_LOCATIONS = {("Ingestion", "deletion_ledger"), ("Ingestion", "deletion_ledger_fingerprint")}


def _decoded(value):
    """exec_properties hold dicts and protos as JSON strings; the compiled spec's parameters are decoded."""
    if isinstance(value, str) and value[:1] in "{[":
        return json.loads(value)
    return value


@pytest.fixture(scope="module")
def both_pipelines(tmp_path_factory):
    from towerflow.pipeline import kubeflow_runner
    from towerflow.pipeline.pipeline import create_pipeline

    tmp = tmp_path_factory.mktemp("flags")
    local = create_pipeline(run_config(_args("run", tmp, "--no-push")))
    compiled = kubeflow_runner.compile_pipeline(
        compile_config(_args("compile", tmp)), image="img:1", output_path=str(tmp / "spec.json"), schema_uri=None
    )
    return local, compiled.spec


def test_compiled_spec_has_every_parameter_of_the_local_pipeline(both_pipelines):
    from towerflow.pipeline.kubeflow_runner import task_parameters

    local, spec = both_pipelines
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    compared = 0
    for component in local.components:
        if component.id == "LatestBlessedModelResolver":  # compiled as two resolver tasks, no parameters
            continue
        assert component.id in tasks
        parameters = task_parameters(spec, component.id)
        for name, value in component.exec_properties.items():
            if (component.id, name) in RUNNER_LOCATIONS:
                continue
            assert parameters.get(name) == _decoded(value), f"{component.id}.{name}"
            compared += 1
    assert compared >= 30  # ingestion, transform, both trainers, index, evaluators: nothing silently skipped


def test_statistics_flags_reach_statisticsgen(both_pipelines):
    """The fixture's 6 interactions are above --stats-sample-above 3: both pipelines sample at 0.25, exact top-k."""
    import tensorflow_data_validation as tfdv

    from towerflow.pipeline.kubeflow_runner import task_parameters

    local, spec = both_pipelines
    (statistics_gen,) = [c for c in local.components if c.id == "StatisticsGen"]
    compiled = json.dumps(task_parameters(spec, "StatisticsGen")["stats_options_json"])
    for options in (statistics_gen.exec_properties["stats_options_json"], compiled):
        options = tfdv.StatsOptions.from_json(options)
        assert options.sample_rate == 0.25 and options.use_sketch_based_topk_uniques is False


@pytest.mark.e2e
def test_local_run_records_the_parameters_the_spec_compiles(both_pipelines, tmp_path):
    """The data part of the pipeline run locally from the same flags: MLMD holds the spec's values."""
    from towerflow.pipeline import mlmd
    from towerflow.pipeline.kubeflow_runner import task_parameters
    from towerflow.pipeline.local_runner import run_local

    _, spec = both_pipelines
    config = run_config(_args("run", tmp_path, "--no-train", "--no-push", "--beam-in-memory"))
    run_local(config, report=None)
    recorded = mlmd.execution_parameters(config.metadata_path, "Ingestion")
    expected = task_parameters(spec, "Ingestion")
    compared = {k for k in expected if ("Ingestion", k) not in RUNNER_LOCATIONS}
    assert len(compared) >= 10
    assert {k: recorded[k] for k in compared} == {k: expected[k] for k in compared}


def test_vocabulary_flags_reach_transform(both_pipelines):
    from towerflow.pipeline.kubeflow_runner import task_parameters

    local, spec = both_pipelines
    (transform,) = [c for c in local.components if c.id == "Transform"]
    expected = VocabularyLimits(50, 2, 60, 3, 70).settings()
    assert json.loads(transform.exec_properties["custom_config"])[VOCABULARY_CONFIG_KEY] == expected
    assert task_parameters(spec, "Transform")["custom_config"][VOCABULARY_CONFIG_KEY] == expected
    # --transform-statistics: Transform computes its own statistics (off by default)
    assert transform.exec_properties["disable_statistics"] == 0
    assert task_parameters(spec, "Transform")["disable_statistics"] == 0


def test_the_example_budget_reaches_both_trainers(both_pipelines, tmp_path):
    from towerflow.pipeline.kubeflow_runner import task_parameters

    local, spec = both_pipelines
    for trainer in ("TwoTowerTrainer", "RankingTrainer"):
        (component,) = [c for c in local.components if c.id == trainer]
        assert json.loads(component.exec_properties["custom_config"])["example_budget"] == 5000
        assert task_parameters(spec, trainer)["custom_config"]["example_budget"] == 5000
    unbounded = run_config(_args("run", tmp_path, "--example-budget", "0"))
    assert unbounded.example_budget is None


def test_statistics_are_sampled_only_above_the_threshold():
    config = StatisticsConfig(sample_rate=0.1, sample_above_rows=1000)
    assert config.stats_options(1000) == {"use_sketch_based_topk_uniques": True}
    assert config.stats_options(1001) == {"use_sketch_based_topk_uniques": True, "sample_rate": 0.1}
    assert "sample_rate" not in StatisticsConfig(sample_rate=1.0, sample_above_rows=0).stats_options(10**9)
    assert StatisticsConfig(sketch_top_k=False).stats_options(0) == {"use_sketch_based_topk_uniques": False}
    with pytest.raises(ValueError, match="sample_rate"):
        StatisticsConfig(sample_rate=0.0)
    with pytest.raises(ValueError, match="sample_above_rows"):
        StatisticsConfig(sample_above_rows=-1)


def test_a_negative_memory_saving_threshold_is_refused(tmp_path):
    args = build_parser().parse_args(
        ["run", "--data-dir", str(FIXTURE), "--output-dir", str(tmp_path), "--memory-saving-above", "-1"]
    )
    with pytest.raises(ValueError, match="memory_saving_above_rows must be >= 0"):
        run_config(args)
