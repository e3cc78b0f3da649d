"""Both retrieval SavedModels return the numpy top-K after a save -> load round trip."""

import numpy as np
import pytest
import tensorflow as tf
from index_fakes import NUM_ITEMS, embed_catalog, query_examples

from towerflow.components.index import export
from towerflow.components.index.scann_index import brute_force_top_k, derive_params


@pytest.fixture(scope="module")
def exported(tower_dir, tmp_path_factory):
    ids, embeddings = embed_catalog(tower_dir)
    # force a tree on the tiny catalog so the ScaNN model is really approximate-capable
    params = derive_params(NUM_ITEMS, num_neighbors=10, brute_force_below=10, tree_from=20, num_leaves_to_search=8)
    paths = export.export_retrieval_models(tower_dir, ids, embeddings, str(tmp_path_factory.mktemp("idx")), 10, params)
    return ids, embeddings, paths


@pytest.mark.parametrize("flavour", [export.BRUTE_FORCE_DIR, export.SCANN_DIR])
def test_saved_model_gives_numpy_top_k(exported, tower_dir, flavour):
    ids, embeddings, paths = exported
    model = export.load_retrieval_model(paths[flavour])
    assert {"retrieve", "retrieve_examples", "query_tower", "query_tower_examples", "serving_default"} <= set(
        model.signatures
    )
    tower = tf.saved_model.load(tower_dir)
    raw_inputs = tower.signatures["query_tower"].structured_input_signature[1]
    assert model.signatures["retrieve"].structured_input_signature[1] == raw_inputs

    examples = tf.constant(query_examples())
    out = model.signatures["retrieve_examples"](examples=examples)
    assert out["item_ids"].dtype == tf.string and out["item_ids"].shape == (len(query_examples()), 10)
    queries = tower.signatures["query_tower_examples"](examples=examples)["embedding"].numpy()
    expected, expected_scores = brute_force_top_k(queries, embeddings, 10)
    np.testing.assert_array_equal(out["item_ids"].numpy().astype(str), ids[expected])
    np.testing.assert_allclose(out["scores"].numpy(), expected_scores, atol=1e-4)

    # the raw-feature signature agrees with the tf.Example one
    raw = {
        "user_id": tf.constant(["u1"]),
        "user_age": tf.constant([30], tf.int64),
        "user_gender": tf.constant(["F"]),
        "user_occupation": tf.constant(["writer"]),
        "user_zip": tf.constant(["12345"]),
        "hist_item_ids": tf.constant([["i3", "i7", ""]]),
        "user_prior_count": tf.constant([2], tf.int64),
        "user_prior_mean_rating": tf.constant([4.0]),
        "user_days_since_first": tf.constant([3.0]),
        "ctx_hour": tf.constant([12], tf.int64),
        "ctx_day_of_week": tf.constant([2], tf.int64),
    }
    query = model.signatures["query_tower"](**raw)["embedding"].numpy()
    expected, _ = brute_force_top_k(query, embeddings, 10)
    got = model.signatures["retrieve"](**raw)["item_ids"].numpy().astype(str)
    np.testing.assert_array_equal(got, ids[expected])
