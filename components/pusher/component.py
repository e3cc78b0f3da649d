"""ServingPusher: pushes a Trainer's model to `<serving_root>/<model_name>/<version>/` if every blessing says so.

    pusher = ServingPusher(
        model=two_tower_trainer.outputs["model"],
        blessings=[index_evaluator.outputs["blessing"], model_evaluator.outputs["blessing"]],
        serving_root="/srv/towerflow/serving",
        model_name="two_tower",
    ).with_id("TwoTowerPusher")

`blessings` takes zero or more ModelBlessing channels (a list is unioned into
one channel); the model is pushed only if every blessing artifact carries
`blessed` = 1. With no blessings it always pushes. The serving root layout,
versioning and `models.config` are `components/pusher/model_repository.py`'s.
"""

from __future__ import annotations

from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import channel as channel_lib
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from towerflow.components.pusher import executor


class ServingPusherSpec(ComponentSpec):
    PARAMETERS = {
        "serving_root": ExecutionParameter(type=str),
        "model_name": ExecutionParameter(type=str),
        "model_subdir": ExecutionParameter(type=str, optional=True),
        "canary": ExecutionParameter(type=int, optional=True),
        "keep_versions": ExecutionParameter(type=int, optional=True),
        "retain_on_disk": ExecutionParameter(type=int, optional=True),
    }
    INPUTS = {
        executor.MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        executor.BLESSINGS_KEY: ChannelParameter(type=standard_artifacts.ModelBlessing, optional=True),
    }
    OUTPUTS = {executor.PUSHED_MODEL_KEY: ChannelParameter(type=standard_artifacts.PushedModel)}


class ServingPusher(base_component.BaseComponent):
    """Blessing-gated push into a TF Serving model root (integer versions, models.config, labels)."""

    SPEC_CLASS = ServingPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(
        self,
        model,
        serving_root: str,
        model_name: str,
        blessings=None,
        model_subdir: str = "Format-Serving",
        canary: bool = False,
        keep_versions: int = 2,
        retain_on_disk: int = 5,
    ):
        from towerflow.components.pusher.model_repository import validate_model_name

        validate_model_name(model_name)
        if isinstance(blessings, list | tuple):
            blessings = None if not blessings else blessings[0] if len(blessings) == 1 else channel_lib.union(blessings)
        spec = ServingPusherSpec(
            model=model,
            blessings=blessings,
            serving_root=serving_root,
            model_name=model_name,
            model_subdir=model_subdir,
            canary=int(canary),
            keep_versions=keep_versions,
            retain_on_disk=retain_on_disk,
            pushed_model=channel_lib.Channel(type=standard_artifacts.PushedModel),
        )
        super().__init__(spec=spec)
