"""`create_pipeline`: the one factory of the towerflow TFX pipeline.

Runners (local_runner.py, kubeflow_runner.py) resolve roots and metadata and
call this; every path and setting comes in through `PipelineConfig`.
"""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow_data_validation as tfdv
from tfx import v1 as tfx

from towerflow.components.evaluation.model_evaluator import BaselineEvaluator, ModelEvaluator
from towerflow.components.index.component import IndexBuilder, IndexEvaluator
from towerflow.components.ingestion import deletions, readers
from towerflow.components.ingestion.component import Ingestion
from towerflow.components.pusher import ServingPusher
from towerflow.models.input_pipeline import EXAMPLE_BUDGET_KEY
from towerflow.models.vocabulary import VOCABULARY_CONFIG_KEY
from towerflow.pipeline.config import PipelineConfig, code_fingerprint, fingerprint_dir

PREPROCESSING_FN = "towerflow.models.preprocessing.preprocessing_fn"
TWO_TOWER_RUN_FN = "towerflow.models.run_fns.run_two_tower"
RANKING_RUN_FN = "towerflow.models.run_fns.run_ranking"


def _index_components(config: PipelineConfig, ingestion, two_tower_trainer) -> list:
    """IndexBuilder (catalog embedded with Beam, ScaNN + brute-force exports) -> IndexEvaluator (blessing)."""
    index_builder = IndexBuilder(
        model=two_tower_trainer.outputs["model"],
        item_catalog=ingestion.outputs["item_catalog"],
        **config.index_builder.parameters(),
    )
    index_evaluator = IndexEvaluator(
        index=index_builder.outputs["index"],
        examples=ingestion.outputs["examples"],
        **config.index_evaluator.parameters(),
    )
    return [index_builder, index_evaluator]


def latest_blessed_model_resolver(model_producer: str = "TwoTowerTrainer", model_output: str = "model"):
    """The newest `model_producer` model that ModelEvaluator blessed (nothing on a first run)."""
    return tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(
            type=tfx.types.standard_artifacts.Model, producer_component_id=model_producer, output_key=model_output
        ),
        model_blessing=tfx.dsl.Channel(
            type=tfx.types.standard_artifacts.ModelBlessing,
            producer_component_id="ModelEvaluator",
            output_key="blessing",
        ),
    ).with_id("LatestBlessedModelResolver")


def _model_evaluation(config: PipelineConfig, ingestion, two_tower_trainer, ranking_trainer, index_components) -> list:
    """ModelEvaluator on the test split, against the baselines (BaselineEvaluator, which needs only the
    data) and the last blessed model (from MLMD).

    The ANN recall/latency frontier comes from the IndexEvaluator (`index_evaluation`), so the evaluator
    builds no second index (`ann_queries=0`).
    """
    index_builder, index_evaluator = index_components
    baseline = latest_blessed_model_resolver()
    parameters = config.model_evaluator.parameters()
    # The baselines need no model: they are selected and scored while the models train.
    baseline_evaluator = BaselineEvaluator(
        examples=ingestion.outputs["examples"],
        item_catalog=ingestion.outputs["item_catalog"],
        **{key: parameters[key] for key in ("ks", "baselines", "guarded_metrics") if key in parameters},
    )
    model_evaluator = ModelEvaluator(
        examples=ingestion.outputs["examples"],
        item_catalog=ingestion.outputs["item_catalog"],
        model=two_tower_trainer.outputs["model"],
        ranker_model=ranking_trainer.outputs["model"],
        baseline_model=baseline.outputs["model"],
        baseline_blessing=baseline.outputs["model_blessing"],
        index=index_builder.outputs["index"],
        index_evaluation=index_evaluator.outputs["blessing"],
        baseline_evaluation=baseline_evaluator.outputs["evaluation"],
        ann_queries=0,
        **parameters,
    ).with_id("ModelEvaluator")
    return [baseline, baseline_evaluator, model_evaluator]


def _pushers(config: PipelineConfig, two_tower_trainer, ranking_trainer, index_evaluator, model_evaluator) -> list:
    """Blessing-gated pushes of both models into the TF Serving model root."""
    return [
        ServingPusher(
            model=two_tower_trainer.outputs["model"],
            blessings=[index_evaluator.outputs["blessing"], model_evaluator.outputs["blessing"]],
            serving_root=config.serving_root,
            model_name="two_tower",
        ).with_id("TwoTowerPusher"),
        ServingPusher(
            model=ranking_trainer.outputs["model"],
            blessings=[model_evaluator.outputs["blessing"]],
            serving_root=config.serving_root,
            model_name="ranker",
        ).with_id("RankingPusher"),
    ]


def _trainer_config(config: PipelineConfig, key: str, values: dict) -> dict:
    """A Trainer's custom_config: its model's settings, the seed, the example budget (run_fns._fit)."""
    custom_config = {key: dict(values), "seed": config.seed, "code_fingerprint": code_fingerprint("models")}
    if config.example_budget is not None:
        custom_config[EXAMPLE_BUDGET_KEY] = config.example_budget
    return custom_config


# The splits Transform writes: what the Trainers read (train, eval). The test window is scored from the raw
# examples through the models' raw-feature signatures (ModelEvaluator), so a transformed test split would be
# written and never read (10% of Transform's per-row work).
TRANSFORMED_SPLITS = ("train", "eval")


def _training_components(config: PipelineConfig, ingestion, schema_gen) -> list:
    """Transform (analysed on train only) -> two-tower Trainer and DCN Trainer -> index -> pushes."""
    transform = tfx.components.Transform(
        examples=ingestion.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        splits_config=tfx.proto.SplitsConfig(analyze=["train"], transform=list(TRANSFORMED_SPLITS)),
        disable_statistics=not config.statistics.transform_statistics,
        custom_config={
            "code_fingerprint": code_fingerprint("models"),
            VOCABULARY_CONFIG_KEY: config.vocabulary.settings(),
        },
    )
    trainers = []
    for component_id, run_fn, key, values in (
        ("TwoTowerTrainer", TWO_TOWER_RUN_FN, "two_tower", config.two_tower),
        ("RankingTrainer", RANKING_RUN_FN, "ranking", config.ranking),
    ):
        trainer = tfx.components.Trainer(
            run_fn=run_fn,
            examples=transform.outputs["transformed_examples"],
            transform_graph=transform.outputs["transform_graph"],
            schema=schema_gen.outputs["schema"],
            train_args=tfx.proto.TrainArgs(splits=list(config.train_splits)),
            eval_args=tfx.proto.EvalArgs(splits=["eval"]),
            custom_config=_trainer_config(config, key, values),
        ).with_id(component_id)
        trainers.append(trainer)
    two_tower_trainer, ranking_trainer = trainers
    index_builder, index_evaluator = _index_components(config, ingestion, two_tower_trainer)
    index_components = (index_builder, index_evaluator)
    evaluation = _model_evaluation(config, ingestion, two_tower_trainer, ranking_trainer, index_components)
    pushers = []
    if config.serving_root:
        pushers = _pushers(config, two_tower_trainer, ranking_trainer, index_evaluator, evaluation[-1])
    return [transform, *trainers, index_builder, index_evaluator, *evaluation, *pushers]


def _statistics_gen(config: PipelineConfig, ingestion, data_dir: str, dataset_format: str):
    """StatisticsGen with TFDV options for the data's size: a sample of large data (`StatisticsConfig`).

    The size is the raw interactions' line count, known before ingestion runs, as the options must be.
    Its Beam pipeline keeps the pipeline's worker processes on large data too: run in one process
    (no workers) it used one core at most, beside Transform and then the trainers, and in the 20M run
    of round 6 it was still computing statistics 96 minutes after it started, the run's last stage.
    """
    rows = readers.count_lines(data_dir, dataset_format)
    options = tfdv.StatsOptions(**config.statistics.stats_options(rows))
    return tfx.components.StatisticsGen(examples=ingestion.outputs["examples"], stats_options=options)


def create_pipeline(config: PipelineConfig, metadata_connection_config=None) -> tfx.dsl.Pipeline:
    """Ingestion -> StatisticsGen -> SchemaGen|ImportSchemaGen -> ExampleValidator -> Transform -> Trainers
    -> IndexBuilder -> IndexEvaluator -> ModelEvaluator -> Pushers (when `serving_root` is set)."""
    ing = config.ingestion
    data_dir = os.path.abspath(config.data_dir)
    dataset_format = ing.dataset_format or readers.detect_format(data_dir)
    ledger = deletions.ledger_for_pipeline_root(config.pipeline_root)
    ingestion = Ingestion(
        data_dir=data_dir,
        dataset_format=dataset_format,
        input_fingerprint=fingerprint_dir(data_dir),
        code_fingerprint=code_fingerprint("components/ingestion", "models/features.py"),
        split_strategy=ing.split_strategy,
        train_fraction=ing.train_fraction,
        eval_fraction=ing.eval_fraction,
        leave_last_n=ing.leave_last_n,
        history_length=ing.history_length,
        max_bad_fraction=ing.max_bad_fraction,
        deletion_ledger=ledger,
        deletion_ledger_fingerprint=deletions.fingerprint(ledger),
    )
    statistics_gen = _statistics_gen(config, ingestion, data_dir, dataset_format)
    if config.schema_path and Path(config.schema_path).is_file():
        schema_gen = tfx.components.ImportSchemaGen(schema_file=str(config.schema_path))
    else:
        schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    )
    components = [ingestion, statistics_gen, schema_gen, example_validator]
    if config.train_models:
        components += _training_components(config, ingestion, schema_gen)
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=components,
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(config.beam_pipeline_args),
    )
