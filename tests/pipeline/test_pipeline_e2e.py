"""The whole pipeline on MovieLens-100K through LocalDagRunner, then MLMD and the outputs inspected."""

import os

import numpy as np
import pytest
from ingestion_checks import assert_no_leakage, read_examples, read_quarantine
from ml_metadata.proto import metadata_store_pb2
from pipeline_components import PUSHERS, TRAINED_COMPONENTS

from towerflow.components.ingestion import readers
from towerflow.pipeline.local_runner import run_local
from towerflow.pipeline.mlmd import execution_nodes, open_store

pytestmark = pytest.mark.e2e

COMPONENTS = TRAINED_COMPONENTS | PUSHERS


@pytest.fixture(scope="module")
def ml100k_run(pipeline_run):
    return pipeline_run


def test_every_component_completes_and_progress_is_reported(ml100k_run):
    _, summary, messages = ml100k_run
    assert dict(summary.executions) == {name: "complete" for name in COMPONENTS}
    assert any("Ingestion" in m and "complete" in m for m in messages)
    assert "Splits (global_time)" in summary.format()


def test_examples_artifact_records_splits_cutoffs_and_counts(ml100k_run, ml100k_dir):
    config, summary, _ = ml100k_run
    store = open_store(config.metadata_path)
    # Transform's transformed_examples are Examples too: take the one MLMD records as Ingestion's output
    nodes = execution_nodes(store)
    ingested = {
        ev.artifact_id
        for ev in store.get_events_by_execution_ids(list(nodes))
        if ev.type == metadata_store_pb2.Event.OUTPUT
        and nodes[ev.execution_id] == "Ingestion"
        and ev.path.steps[0].key == "examples"
    }
    [examples] = store.get_artifacts_by_id(list(ingested))
    props = summary.examples_properties
    data = readers.load_dataset(ml100k_dir)
    timestamps = data.interactions["timestamp"].to_numpy()
    assert props["split_cutoffs"] == pytest.approx(list(np.quantile(timestamps, [0.8, 0.9])))
    assert sum(props["split_counts"].values()) == 100_000
    assert props["num_users"] == 943 and props["num_items"] == 1682
    assert props["malformed_by_table"] == {}
    assert props["input_path"] == os.path.abspath(ml100k_dir)
    assert len(props["input_fingerprint"]) == 32
    assert examples.uri == summary.artifacts["Ingestion.examples"]
    # MLMD lineage: exactly the components that read raw examples consumed this artifact
    consumers = {
        ev.execution_id
        for ev in store.get_events_by_artifact_ids([examples.id])
        if ev.type == metadata_store_pb2.Event.INPUT
    }
    assert sorted(nodes[c] for c in consumers) == [
        "BaselineEvaluator",
        "IndexEvaluator",
        "ModelEvaluator",
        "StatisticsGen",
        "Transform",
    ]


def test_real_output_has_no_leakage(ml100k_run, ml100k_dir):
    _, summary, _ = ml100k_run
    uri = summary.artifacts["Ingestion.examples"]
    splits = {s: read_examples(os.path.join(uri, f"Split-{s}")) for s in ("train", "eval", "test")}
    assert sum(len(v) for v in splits.values()) == 100_000
    data = readers.load_dataset(ml100k_dir)
    raw = data.interactions[["user_id", "item_id", "rating", "timestamp"]].itertuples(index=False)
    cutoffs = summary.examples_properties["split_cutoffs"]
    assert assert_no_leakage(splits, raw, history_length=20, cutoffs=cutoffs) == 100_000
    assert read_quarantine(summary.artifacts["Ingestion.quarantine"]) == []


# Resolved from MLMD on every run: after run 1 blessed a model, the evaluator re-judges against it.
RE_EVALUATED = {"LatestBlessedModelResolver", "ModelEvaluator", "TwoTowerPusher", "RankingPusher"}


def test_rerun_with_unchanged_inputs_is_cached(ml100k_run):
    config, _, _ = ml100k_run
    summary = run_local(config, report=None)
    states = dict(summary.executions)
    assert {name: states[name] for name in COMPONENTS - RE_EVALUATED} == {
        name: "cached" for name in COMPONENTS - RE_EVALUATED
    }
    assert states["ModelEvaluator"] == "complete"
