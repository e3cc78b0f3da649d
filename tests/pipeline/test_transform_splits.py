"""Transform writes exactly the splits the Trainers read (the test window is scored from raw examples)."""

import json
from pathlib import Path

import pytest
from google.protobuf import json_format
from tfx import v1 as tfx

from towerflow.pipeline.config import PipelineConfig
from towerflow.pipeline.pipeline import TRANSFORMED_SPLITS, create_pipeline

DATA = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "ml-100k"


def _splits_config(component) -> tfx.proto.SplitsConfig:
    value = component.exec_properties["splits_config"]
    if isinstance(value, str):
        return json_format.Parse(value, tfx.proto.SplitsConfig())
    return value


@pytest.mark.parametrize("train_splits", [("train",), ("train", "eval")])
def test_transform_writes_the_splits_the_trainers_read_and_not_test(tmp_path, train_splits):
    config = PipelineConfig(
        data_dir=str(DATA),
        pipeline_root=str(tmp_path / "root"),
        metadata_path=str(tmp_path / "m.sqlite"),
        train_splits=train_splits,
    )
    components = {c.id: c for c in create_pipeline(config).components}
    splits = _splits_config(components["Transform"])
    assert list(splits.analyze) == ["train"]
    assert list(splits.transform) == list(TRANSFORMED_SPLITS) == ["train", "eval"]
    for trainer in ("TwoTowerTrainer", "RankingTrainer"):
        properties = components[trainer].exec_properties
        read = set(json.loads(properties["train_args"])["splits"]) | set(json.loads(properties["eval_args"])["splits"])
        assert read <= set(splits.transform), trainer
