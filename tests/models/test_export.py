"""Exported SavedModels: save -> reload -> predict through both signatures, and no training/serving skew.

Marked e2e: tracing and saving the Transform layer with two models takes minutes on two cores.

The "training" side is what the Trainer sees: rows transformed by tf.Transform's
Beam implementation. The "serving" side is the exported signature fed RAW
features, with the Transform graph inside. They must agree.
"""

import numpy as np
import pytest
import tensorflow as tf
from tft_world import INTERACTIONS, SCALARS, instance, unseen_instances

from towerflow.components.ingestion.beam_ingest import to_tf_example
from towerflow.models import features as F
from towerflow.models import run_fns
from towerflow.models.preprocessing import table_sizes_from_transform_output
from towerflow.models.ranking import DCNRankingModel, RankingConfig
from towerflow.models.two_tower import TwoTowerConfig, TwoTowerModel

pytestmark = pytest.mark.e2e

SMALL = {"user_id_dim": 4, "item_id_dim": 4, "feature_dim": 2, "batch_size": 4, "epochs": 1}


def _stack(rows, keys):
    return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in keys}


def _raw_tensors(instances, keys):
    """Raw signature inputs: scalars [B], list features [B, L] padded with ""."""
    out = {}
    for key in keys:
        values = [inst[key] for inst in instances]
        if key in F.LIST_FEATURES:
            width = max(1, max(len(v) for v in values))
            out[key] = tf.constant([list(v) + [b""] * (width - len(v)) for v in values])
        else:
            out[key] = tf.constant(values, dtype=SCALARS[key][0])
    return out


def _serialized(instances):
    decoded = [
        {
            k: ([x.decode() for x in v] if isinstance(v, list) else v.decode() if isinstance(v, bytes) else v)
            for k, v in inst.items()
        }
        for inst in instances
    ]
    return tf.constant([to_tf_example(d).SerializeToString() for d in decoded])


@pytest.fixture(scope="module")
def two_tower_export(tft_world, tmp_path_factory):
    train_rows, _, tft_output = tft_world
    model = TwoTowerModel(
        TwoTowerConfig(embedding_dim=8, mlp_layers=(8,), recency_half_life_days=0, **SMALL),
        table_sizes_from_transform_output(tft_output),
    )
    model.compile()
    batch = _stack(train_rows, train_rows[0].keys())
    model.fit(tf.data.Dataset.from_tensor_slices(batch).batch(4), epochs=1, verbose=0)
    path = str(tmp_path_factory.mktemp("export") / "two_tower")
    run_fns.export_two_tower(model, tft_output, path)
    return model, tf.saved_model.load(path), batch


@pytest.fixture(scope="module")
def ranker_export(tft_world, tmp_path_factory):
    train_rows, _, tft_output = tft_world
    model = DCNRankingModel(
        RankingConfig(deep_layers=(8,), num_negatives=1, **SMALL), table_sizes_from_transform_output(tft_output)
    )
    model.compile()
    batch = _stack(train_rows, train_rows[0].keys())
    model.fit(tf.data.Dataset.from_tensor_slices(batch).batch(4), epochs=1, verbose=0)
    path = str(tmp_path_factory.mktemp("export") / "ranker")
    run_fns.export_ranking(model, tft_output, path)
    return model, tf.saved_model.load(path), batch


def test_two_tower_signatures(two_tower_export):
    _, loaded, _ = two_tower_export
    assert {
        "query_tower",
        "candidate_tower",
        "query_tower_examples",
        "candidate_tower_examples",
        "serving_default",
    } <= set(loaded.signatures)
    query_inputs = set(loaded.signatures["query_tower"].structured_input_signature[1])
    assert query_inputs == set(F.QUERY_FEATURES)
    assert set(loaded.signatures["candidate_tower"].structured_input_signature[1]) == set(F.CANDIDATE_FEATURES)


@pytest.mark.parametrize("tower,keys", [("query", F.QUERY_FEATURES), ("candidate", F.CANDIDATE_FEATURES)])
def test_exported_towers_match_the_training_graph_on_raw_features(two_tower_export, tower, keys):
    model, loaded, batch = two_tower_export
    instances = [instance(*row) for row in INTERACTIONS]
    # training path: tf.Transform-transformed rows into the Keras tower
    keras_tower = model.query_model if tower == "query" else model.candidate_model
    expected = keras_tower(batch).numpy()
    # serving path 1: named raw tensors
    named = loaded.signatures[f"{tower}_tower"](**_raw_tensors(instances, keys))["embedding"].numpy()
    # serving path 2: serialized tf.Examples
    examples = loaded.signatures[f"{tower}_tower_examples"](examples=_serialized(instances))["embedding"].numpy()
    np.testing.assert_allclose(named, expected, atol=1e-5)
    np.testing.assert_allclose(examples, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(named, axis=1), 1.0, atol=1e-5)


def test_ranker_matches_the_training_graph_through_both_signatures(ranker_export):
    model, loaded, batch = ranker_export
    instances = [instance(*row) for row in INTERACTIONS]
    expected = {k: v.numpy().reshape(-1) for k, v in model(batch).items()}
    named = loaded.signatures["ranker"](**_raw_tensors(instances, run_fns.RANKER_FEATURES))
    examples = loaded.signatures["ranker_examples"](examples=_serialized(instances))
    assert set(named) == set(expected) == {"rating", "liked_probability", "interaction_score"}
    for key, value in expected.items():
        np.testing.assert_allclose(named[key].numpy(), value, atol=1e-5)
        np.testing.assert_allclose(examples[key].numpy(), value, atol=1e-5)


def test_unknown_user_item_and_genre_do_not_fail(two_tower_export, ranker_export):
    _, towers, _ = two_tower_export
    _, ranker, _ = ranker_export
    unseen = unseen_instances()
    query = towers.signatures["query_tower"](**_raw_tensors(unseen, F.QUERY_FEATURES))["embedding"].numpy()
    cand = towers.signatures["candidate_tower"](**_raw_tensors(unseen, F.CANDIDATE_FEATURES))["embedding"].numpy()
    scores = ranker.signatures["ranker"](**_raw_tensors(unseen, run_fns.RANKER_FEATURES))
    assert np.isfinite(query).all() and np.isfinite(cand).all()
    assert all(np.isfinite(v.numpy()).all() for v in scores.values())


def test_user_side_signature_ignores_item_defaults(two_tower_export):
    """The query tower never reads item-side raw features, so their defaults cannot change it."""
    _, loaded, _ = two_tower_export
    a = instance("u1", "i1", ["i2"])
    b = instance("u1", "i4", ["i2"])  # same user state, different item
    out = loaded.signatures["query_tower_examples"](examples=_serialized([a, b]))["embedding"].numpy()
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)


def test_rank_candidates_equals_the_ranker_on_repeated_query_rows(ranker_export):
    """The online signature: one query row ([1] inputs) with N candidates, broadcast inside the graph."""
    _, loaded, _ = ranker_export
    instances = [instance(*row) for row in INTERACTIONS]
    candidate_keys = F.CANDIDATE_FEATURES + F.ITEM_POINT_IN_TIME_FEATURES
    for user in (4, len(instances) - 1):  # two different users' query features
        rows = [{**inst, **{k: instances[user][k] for k in F.QUERY_FEATURES}} for inst in instances]
        expected = loaded.signatures["ranker"](**_raw_tensors(rows, run_fns.RANKER_FEATURES))
        inputs = _raw_tensors(instances, candidate_keys)
        inputs.update(_raw_tensors([instances[user]], F.QUERY_FEATURES))
        broadcast = loaded.signatures["rank_candidates"](**inputs)
        assert set(broadcast) == set(expected)
        for key, value in expected.items():
            assert broadcast[key].shape == (len(instances),)
            np.testing.assert_allclose(broadcast[key].numpy(), value.numpy(), atol=1e-5)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError, TypeError)):  # two query rows: refused
        two = _raw_tensors(instances, candidate_keys)
        two.update(_raw_tensors(instances[:2], F.QUERY_FEATURES))
        loaded.signatures["rank_candidates"](**two)
