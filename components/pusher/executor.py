"""ServingPusher's executor: check every blessing, then push into the serving root.

Records on the PushedModel artifact the TFX Pusher's custom properties
(`pushed` 1/0, `pushed_destination`, `pushed_version`) plus `serving_root`,
`model_name` and, when nothing was pushed, `not_pushed_reason` -- so lineage
shows why a model did or did not reach serving.

What the online recommender needs with a model travels inside the pushed
version (`model_repository.push`'s extras), found through the blessings:
an IndexEvaluator blessing names the index (`index_uri`): its ScaNN searcher,
item ids and item embeddings go in as `index`; a ModelEvaluator blessing holds
the evaluation: its re-ranking settings (weight, popularity weight, depth, score), headline
metrics and score distribution (the canary's drift reference) go in as
`evaluation.json`. So the service reads a version's index and
re-ranking weight from the version itself, never from another run.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any

from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils

from towerflow.components.pusher import model_repository as repo

log = logging.getLogger(__name__)

MODEL_KEY = "model"
BLESSINGS_KEY = "blessings"
PUSHED_MODEL_KEY = "pushed_model"
INDEX_EXTRA = "index"  # the ScaNN index directory (components/index/scann_index.py layout)
EVALUATION_EXTRA = "evaluation.json"  # re-ranking settings + headline metrics of the blessing evaluation
_INDEX_SUBDIR = "index"  # IndexBuilder writes the ScaNN index under <index_uri>/index
_MODEL_EVALUATION_FILE = "model_evaluation.json"


def unblessed(blessings) -> list[str]:
    """Names of the blessings that do not say blessed=1 (TFX's ModelBlessing convention)."""
    bad = []
    for blessing in blessings:
        has = blessing.has_custom_property("blessed")
        if not has or blessing.get_int_custom_property("blessed") != 1:
            producer = blessing.producer_component or blessing.name or blessing.uri
            bad.append(f"{producer} ({blessing.uri})")
    return bad


def serving_model_dir(model_uri: str, subdir: str) -> str:
    """The SavedModel inside a Model artifact (Trainer writes it under Format-Serving)."""
    for candidate in (f"{model_uri}/{subdir}" if subdir else None, model_uri):
        if candidate and repo.is_saved_model_dir(candidate):
            return candidate
    raise FileNotFoundError(f"no SavedModel in the Model artifact {model_uri} (looked in {subdir or '.'} and .)")


def serving_extras(blessings, workdir: str) -> dict[str, str]:
    """The extras to push with the model, found through its blessings (see the module docstring)."""
    extras = {}
    for blessing in blessings:
        if blessing.has_custom_property("index_uri"):
            index_dir = os.path.join(blessing.get_string_custom_property("index_uri"), _INDEX_SUBDIR)
            if os.path.isdir(index_dir):
                extras[INDEX_EXTRA] = index_dir
        evaluation_path = os.path.join(blessing.uri, _MODEL_EVALUATION_FILE)
        if os.path.isfile(evaluation_path):
            with open(evaluation_path, encoding="utf-8") as f:
                result = json.load(f)
            config = result.get("config", {})
            summary = {
                "blessing_uri": blessing.uri,
                "rerank_weight": config.get("rerank_weight"),
                "popularity_weight": config.get("popularity_weight"),
                "rerank_depth": config.get("rerank_depth"),
                "rerank_score": config.get("rerank_score"),
                "test_cutoff": result.get("data", {}).get("test_cutoff"),
                "metrics": {name: r.get("metrics", {}).get("all", {}) for name, r in result.get("reports", {}).items()},
                "score_distribution": result.get("score_distribution"),
            }
            path = os.path.join(workdir, EVALUATION_EXTRA)
            with open(path, "w", encoding="utf-8") as f:
                json.dump(summary, f, indent=2)
            extras[EVALUATION_EXTRA] = path
    return extras


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict: dict[str, list], output_dict: dict[str, list], exec_properties: dict[str, Any]) -> None:  # noqa: N802
        model = artifact_utils.get_single_instance(input_dict[MODEL_KEY])
        blessings = list(input_dict.get(BLESSINGS_KEY) or [])
        pushed = artifact_utils.get_single_instance(output_dict[PUSHED_MODEL_KEY])
        name = exec_properties["model_name"]
        serving_root = exec_properties["serving_root"]
        pushed.set_string_custom_property("model_name", name)
        pushed.set_string_custom_property("serving_root", serving_root)
        bad = unblessed(blessings)
        if bad:
            reason = f"not blessed by {', '.join(bad)}"
            log.warning("ServingPusher: %s is %s; nothing pushed", model.uri, reason)
            pushed.set_int_custom_property("pushed", 0)
            pushed.set_string_custom_property("not_pushed_reason", reason)
            return
        with tempfile.TemporaryDirectory() as workdir:
            extras = serving_extras(blessings, workdir)
            result = repo.push(
                serving_root,
                name,
                serving_model_dir(model.uri, exec_properties.get("model_subdir") or ""),
                canary=bool(exec_properties.get("canary")),
                keep_versions=int(exec_properties.get("keep_versions") or 2),
                retain_on_disk=int(exec_properties.get("retain_on_disk") or 5),
                extras=extras,
            )
        pushed.set_json_value_custom_property("pushed_extras", sorted(extras))
        pushed.set_int_custom_property("pushed", 1)
        pushed.set_string_custom_property("pushed_destination", result.path)
        pushed.set_string_custom_property("pushed_version", str(result.version))
        log.info(
            "ServingPusher: pushed %s as %s version %d (%s)", model.uri, name, result.version, result.state.format()
        )
