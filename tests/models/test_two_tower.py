"""Two-tower model: config validation, hand-computed loss pieces, towers, export."""

import math

import numpy as np
import pytest
import tensorflow as tf

from towerflow.models import embeddings as E
from towerflow.models import features as F
from towerflow.models import preprocessing as P
from towerflow.models.two_tower import RecencyWeighting, TwoTowerConfig, TwoTowerModel

# Unweighted unless a test says otherwise (recency weighting needs the data's RecencyWeighting).
SMALL = dict(embedding_dim=8, user_id_dim=8, item_id_dim=8, feature_dim=4, mlp_layers=(16,), batch_size=8)
SMALL["recency_half_life_days"] = 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"temperature": 0.0}, "temperature"),
        ({"history_pooling": "max"}, "history_pooling"),
        ({"embedding_backend": "gpu"}, "embedding_backend"),
        ({"num_random_negatives": -1}, "num_random_negatives"),
        ({"num_hard_negatives": 1.5}, "num_hard_negatives"),
        ({"mlp_layers": (32, 0)}, "mlp_layers"),
        ({"use_logq_correction": "yes"}, "use_logq_correction"),
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"recency_half_life_days": -1.0}, "recency_half_life_days"),
    ],
)
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        TwoTowerConfig(**overrides)


def test_config_defaults_and_list_layers():
    config = TwoTowerConfig(mlp_layers=[64, 32])
    assert config.mlp_layers == (64, 32)
    assert config.embedding_dim == 64 and config.use_logq_correction and config.remove_accidental_hits
    assert config.num_random_negatives == 0 and config.num_hard_negatives == 0


def test_random_negatives_need_a_catalog(table_sizes):
    with pytest.raises(ValueError, match="catalog"):
        TwoTowerModel(TwoTowerConfig(num_random_negatives=4, **SMALL), table_sizes)


# --- the loss, by hand -------------------------------------------------------------
#
# Three queries and three in-batch candidates; candidates 1 and 3 are the same
# item (id 10), candidate 2 is item 20. Temperature T = 0.5.
#   q1 = [1, 0], q2 = [0, 1], q3 = [0.6, 0.8];  c1 = [1, 0], c2 = [0, 1], c3 = [1, 0]
# logits = q . c / T:
#   row 1: [2.0, 0.0, 2.0]   positive = column 1
#   row 2: [0.0, 2.0, 0.0]   positive = column 2
#   row 3: [1.2, 1.6, 1.2]   positive = column 3
# The task sums the per-query softmax cross-entropy -log softmax(row)[positive].
QUERIES = tf.constant([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
CANDIDATES = tf.constant([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
CANDIDATE_IDS = tf.constant([10, 20, 10], tf.int64)
# Item 10 has half of all interactions, item 20 a quarter.
SAMPLING_PROBABILITY = tf.constant([0.5, 0.25, 0.5])
e = math.exp


def _task(table_sizes, **overrides):
    settings = {**SMALL, "temperature": 0.5, "remove_accidental_hits": False, **overrides}
    return TwoTowerModel(TwoTowerConfig(**settings), table_sizes).task


def test_loss_softmax_with_temperature(table_sizes):
    # row 1: log(e^2 + 1 + e^2) - 2 = log(15.778) - 2 = 0.7586
    # row 2: log(1 + e^2 + 1) - 2   = log(9.389) - 2  = 0.2395
    # row 3: log(2 e^1.2 + e^1.6) - 1.2 = log(11.593) - 1.2 = 1.2504
    expected = (math.log(2 * e(2) + 1) - 2) + (math.log(2 + e(2)) - 2) + (math.log(2 * e(1.2) + e(1.6)) - 1.2)
    assert expected == pytest.approx(2.2486, abs=1e-4)
    loss = _task(table_sizes)(QUERIES, CANDIDATES, compute_metrics=False)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_loss_with_log_q_correction(table_sizes):
    # logits - log q: every exp(logit) is divided by q, i.e. multiplied by [2, 4, 2].
    # row 1: exps [2e^2, 4, 2e^2]         -> log((4e^2 + 4) / 2e^2)            = 0.8201
    # row 2: exps [2, 4e^2, 2]            -> log((4 + 4e^2) / 4e^2)            = 0.1269
    # row 3: exps [2e^1.2, 4e^1.6, 2e^1.2] -> log((4e^1.2 + 4e^1.6) / 2e^1.2)  = 1.6062
    expected = (
        math.log((4 * e(2) + 4) / (2 * e(2)))
        + math.log((4 + 4 * e(2)) / (4 * e(2)))
        + math.log((4 * e(1.2) + 4 * e(1.6)) / (2 * e(1.2)))
    )
    assert expected == pytest.approx(2.5532, abs=1e-4)
    loss = _task(table_sizes)(
        QUERIES, CANDIDATES, candidate_sampling_probability=SAMPLING_PROBABILITY, compute_metrics=False
    )
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_loss_with_accidental_hits_removed(table_sizes):
    # Row 1's positive is item 10, so column 3 (also item 10) is dropped;
    # row 3's positive is item 10 too, so column 1 is dropped; row 2 keeps all.
    # row 1: log((e^2 + 1) / e^2)       = log(1 + e^-2)  = 0.1269
    # row 2: log((1 + e^2 + 1) / e^2)                    = 0.2395
    # row 3: log((e^1.6 + e^1.2) / e^1.2) = log(1 + e^0.4) = 0.9130
    expected = math.log(1 + e(-2)) + (math.log(2 + e(2)) - 2) + math.log(1 + e(0.4))
    assert expected == pytest.approx(1.2795, abs=1e-4)
    loss = _task(table_sizes, remove_accidental_hits=True)(
        QUERIES, CANDIDATES, candidate_ids=CANDIDATE_IDS, compute_metrics=False
    )
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_loss_with_hits_removed_and_one_hard_negative(table_sizes):
    # After hit removal each row keeps its positive and its best negative:
    # row 1: [2, 0] -> log(1 + e^-2); row 2: [2, 0] -> log(1 + e^-2); row 3: [1.2, 1.6] -> log(1 + e^0.4)
    expected = 2 * math.log(1 + e(-2)) + math.log(1 + e(0.4))
    loss = _task(table_sizes, remove_accidental_hits=True, num_hard_negatives=1)(
        QUERIES, CANDIDATES, candidate_ids=CANDIDATE_IDS, compute_metrics=False
    )
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def _reference_loss(query, candidate, temperature, log_q=None, ids=None):
    """Numpy sampled softmax: the same formula as above, for any batch."""
    logits = query @ candidate.T / temperature
    if log_q is not None:
        logits = logits - log_q[None, :]
    if ids is not None:
        duplicate = (ids[None, :] == ids[: len(query), None]) & ~np.eye(len(query), len(candidate), dtype=bool)
        logits = np.where(duplicate, -np.inf, logits)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -np.trace(log_softmax[:, : len(query)])


def test_compute_loss_wires_log_q_and_candidate_ids(table_sizes, make_batch):
    batch = make_batch(8, seed=3)
    batch[F.ITEM_ID_XF][:3] = 4  # accidental hits within the batch
    model = TwoTowerModel(TwoTowerConfig(temperature=0.2, **SMALL), table_sizes)
    query = model.query_model(batch).numpy()
    candidate = model.candidate_model(batch).numpy()
    expected = _reference_loss(query, candidate, 0.2, batch[F.ITEM_LOG_FREQUENCY_XF], batch[F.ITEM_ID_XF])
    assert float(model.compute_loss(batch)) == pytest.approx(expected, rel=1e-4)

    plain = TwoTowerModel(
        TwoTowerConfig(temperature=0.2, use_logq_correction=False, remove_accidental_hits=False, **SMALL),
        table_sizes,
    )
    query, candidate = plain.query_model(batch).numpy(), plain.candidate_model(batch).numpy()
    assert float(plain.compute_loss(batch)) == pytest.approx(_reference_loss(query, candidate, 0.2), rel=1e-4)


def test_recency_weights_halve_every_half_life_and_average_one():
    day = int(F.SECONDS_PER_DAY)
    timestamps = np.array([100 * day, 90 * day, 80 * day, 100 * day])
    recency = RecencyWeighting.from_timestamps(timestamps, half_life_days=10)
    assert recency.newest == 100 * day
    raw = np.array([1.0, 0.5, 0.25, 1.0])
    np.testing.assert_allclose(recency.weights(timestamps).numpy(), raw / raw.mean(), rtol=1e-6)
    assert float(tf.reduce_mean(recency.weights(timestamps))) == pytest.approx(1.0, rel=1e-6)
    # a later example (eval data) is not weighted above the newest training example
    assert float(recency.weights([110 * day])[0]) == pytest.approx(recency.scale)
    with pytest.raises(ValueError, match="at least one"):
        RecencyWeighting.from_timestamps([], 10)


def test_recency_weighting_weights_each_row_of_the_loss(table_sizes, make_batch):
    batch = make_batch(8, seed=5)
    batch[F.ITEM_ID_XF] = np.arange(1, 9, dtype=np.int64)  # no accidental hits
    config = TwoTowerConfig(**{**SMALL, "temperature": 0.2, "recency_half_life_days": 7.0})
    recency = RecencyWeighting(newest=int(batch[F.TIMESTAMP_XF].max()), half_life_days=7.0, scale=1.3)
    model = TwoTowerModel(config, table_sizes, recency=recency)
    query, candidate = model.query_model(batch).numpy(), model.candidate_model(batch).numpy()
    logits = query @ candidate.T / 0.2 - batch[F.ITEM_LOG_FREQUENCY_XF][None, :]
    per_row = np.log(np.exp(logits).sum(axis=1)) - np.diag(logits)
    age_days = (recency.newest - batch[F.TIMESTAMP_XF]) / F.SECONDS_PER_DAY
    weights = 1.3 * 2.0 ** (-age_days / 7.0)
    assert float(model.compute_loss(batch)) == pytest.approx(float((weights * per_row).sum()), rel=1e-4)
    with pytest.raises(ValueError, match="RecencyWeighting"):
        TwoTowerModel(config, table_sizes)


def _catalog(make_batch, size=5):
    catalog = make_batch(size, seed=9)
    catalog[F.ITEM_ID_XF] = np.arange(1, size + 1, dtype=np.int64)
    return {key: catalog[key] for key in E.CANDIDATE_ID_FEATURES + (F.ITEM_LOG_FREQUENCY_XF,)}


def test_mixed_negatives_append_catalog_items_with_mixture_probability(table_sizes, make_batch):
    catalog = _catalog(make_batch)
    model = TwoTowerModel(TwoTowerConfig(num_random_negatives=2, **SMALL), table_sizes, catalog=catalog)
    batch = make_batch(4, seed=1)
    candidates = model.candidates_for_batch(batch)
    assert candidates[F.ITEM_ID_XF].shape == (6,)
    assert candidates[F.ITEM_GENRES_XF].shape == (6, F.GENRES_MAX_LEN)
    np.testing.assert_array_equal(candidates[F.ITEM_ID_XF][:4], batch[F.ITEM_ID_XF])
    assert set(candidates[F.ITEM_ID_XF][4:].numpy()) <= set(catalog[F.ITEM_ID_XF])
    # B = 4 in-batch draws from the unigram q, R = 2 uniform draws over N = 5:
    # an item with q = 0.25 has (4 * 0.25 + 2 / 5) / (4 + 2) = 1.4 / 6.
    probability = model.sampling_probability({F.ITEM_LOG_FREQUENCY_XF: tf.math.log([0.25, 1e-9])}, 4)
    np.testing.assert_allclose(probability, [1.4 / 6, (2 / 5) / 6], rtol=1e-5)
    loss = model.compute_loss(batch)
    assert np.isfinite(float(loss))


def test_trains_with_mixed_and_hard_negatives_and_attention(table_sizes, make_batch, make_dataset):
    tf.keras.utils.set_random_seed(4)
    config = TwoTowerConfig(
        num_random_negatives=3, num_hard_negatives=4, history_pooling="attention", learning_rate=0.5, **SMALL
    )
    model = TwoTowerModel(config, table_sizes, catalog=_catalog(make_batch))
    model.compile()
    losses = model.fit(make_dataset(), epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] != losses[0]


def test_towers_output_unit_vectors_and_share_the_item_table(table_sizes, make_batch):
    model = TwoTowerModel(TwoTowerConfig(**{**SMALL, "embedding_dim": 6}), table_sizes)
    batch = make_batch(4, seed=2)
    batch[F.HIST_ITEM_IDS_XF][:] = F.PAD_ID
    batch[F.HIST_ITEM_IDS_XF][0, 0] = 7  # only user 0 has seen item 7
    batch[F.ITEM_ID_XF][:] = [7, 2, 3, 2]
    query, candidate = model.query_model(batch).numpy(), model.candidate_model(batch).numpy()
    assert query.shape == (4, 6) and candidate.shape == (4, 6)
    np.testing.assert_allclose(np.linalg.norm(query, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(candidate, axis=1), 1.0, rtol=1e-5)

    # Moving item 7's single embedding row moves both the candidate "item 7"
    # and the query whose history holds item 7, and nothing else.
    table = model.embeddings.table_variables()[P.ITEM_ID_TABLE]
    table.scatter_add(tf.IndexedSlices(tf.ones([1, table.shape[1]]), tf.constant([7])))
    moved_query, moved_candidate = model.query_model(batch).numpy(), model.candidate_model(batch).numpy()
    assert not np.allclose(moved_query[0], query[0]) and np.allclose(moved_query[1:], query[1:])
    assert not np.allclose(moved_candidate[0], candidate[0]) and np.allclose(moved_candidate[1:], candidate[1:])


def test_unknown_user_and_genre_at_inference(table_sizes, make_batch):
    model = TwoTowerModel(TwoTowerConfig(**SMALL), table_sizes)
    batch = make_batch(2, seed=7)
    # The OOV bucket is the table's last row (preprocessing maps unseen values there).
    batch[F.USER_ID_XF][:] = table_sizes[P.USER_ID_TABLE] - 1
    batch[F.ITEM_GENRES_XF][:, 0] = table_sizes[P.ITEM_GENRE_TABLE] - 1
    assert np.all(np.isfinite(model.query_model(batch).numpy()))
    assert np.all(np.isfinite(model.candidate_model(batch).numpy()))


def test_query_tower_save_reload_predict(tmp_path, table_sizes, make_batch):
    model = TwoTowerModel(TwoTowerConfig(**SMALL), table_sizes)
    batch = make_batch(3, seed=8)
    query_batch = {key: batch[key] for key in F.QUERY_FEATURES_XF}
    expected = model.query_model(query_batch).numpy()
    spec = {
        key: tf.TensorSpec([None, *value.shape[1:]], tf.as_dtype(value.dtype), name=key)
        for key, value in query_batch.items()
    }

    @tf.function(input_signature=[spec])
    def serve(features):
        return {"query_embedding": model.query_model(features)}

    export = tf.Module()
    export.query_model = model.query_model
    tf.saved_model.save(export, str(tmp_path / "query"), signatures={"serving_default": serve})
    reloaded = tf.saved_model.load(str(tmp_path / "query"))
    out = reloaded.signatures["serving_default"](**{k: tf.constant(v) for k, v in query_batch.items()})
    np.testing.assert_allclose(out["query_embedding"], expected, rtol=1e-5, atol=1e-6)


# --- data parallel: 2 replicas give single-process's loss and gradient ------------------------
#
# TensorFlow fixes its logical devices when it starts, and this process has started it with one CPU,
# so the check runs in a fresh interpreter that splits the CPU into two logical devices first.
_SPLIT_CPU_AND_CHECK = """
import json, os, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, sys.argv[1])
from test_two_tower import _two_replicas_against_one
print("RESULT " + json.dumps(_two_replicas_against_one(json.loads(sys.argv[2]))))
"""


def _dense(gradients) -> list[np.ndarray]:
    return [tf.convert_to_tensor(g).numpy() for g in gradients]


def _two_replicas_against_one(overrides: dict) -> dict:
    """One global batch of 16: single device vs a MirroredStrategy over 2 CPUs (8 rows each).

    Returns the losses, the largest gradient and first-update differences, and a control: the sum of
    the two halves' losses taken apart (each half only its own 8 candidates), which must differ.
    """
    from conftest import VOCABULARY_SIZES, make_transformed_batch

    devices = [device.name for device in tf.config.list_logical_devices("CPU")]
    assert len(devices) == 2, devices
    sizes = P.table_sizes(VOCABULARY_SIZES)
    batch = make_transformed_batch(16, seed=11)
    batch[F.ITEM_ID_XF][[0, 5, 12]] = 3  # accidental hits within a replica's half and across the halves
    batch = {key: tf.constant(value) for key, value in batch.items()}
    recency = RecencyWeighting.from_timestamps(batch[F.TIMESTAMP_XF].numpy(), 7.0)
    config = TwoTowerConfig(**{**SMALL, "temperature": 0.2, "recency_half_life_days": 7.0, **overrides})

    tf.keras.utils.set_random_seed(0)
    single = TwoTowerModel(config, sizes, recency=recency)
    single.compile()
    with tf.GradientTape() as tape:
        single_loss = single.compute_loss(batch, training=True)
    single_gradients = _dense(tape.gradient(single_loss, single.trainable_variables))
    initial = single.get_weights()
    halves = sum(float(single.compute_loss({k: v[i : i + 8] for k, v in batch.items()})) for i in (0, 8))

    strategy = tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
        mirrored = TwoTowerModel(config, sizes, recency=recency)
        mirrored.compile()
        mirrored.compute_loss(batch)  # builds the variables (cross-replica: nothing is gathered)
    mirrored.set_weights(initial)
    # Replica i holds rows 8i .. 8i+7, as a distributed dataset splits a batch of 16.
    split = strategy.experimental_distribute_values_from_function(
        lambda context: {k: v[8 * context.replica_id_in_sync_group :][:8] for k, v in batch.items()}
    )

    def loss_and_gradients(features):
        with tf.GradientTape() as tape:
            loss = mirrored.compute_loss(features, training=True)
        gradients = [tf.convert_to_tensor(g) for g in tape.gradient(loss, mirrored.trainable_variables)]
        # What the optimizer does with the replicas' gradients: sums them.
        return loss, tf.distribute.get_replica_context().all_reduce("sum", gradients)

    losses, gradients = tf.function(lambda x: strategy.run(loss_and_gradients, args=(x,)))(split)
    replica_loss = float(strategy.reduce("sum", losses, axis=None))
    replica_gradients = [strategy.experimental_local_results(g)[0].numpy() for g in gradients]

    single.train_step(batch)
    tf.function(lambda x: strategy.run(mirrored.train_step, args=(x,)))(split)
    return {
        "single_loss": float(single_loss),
        "replica_loss": replica_loss,
        "halves_apart_loss": halves,
        "gradient_max_difference": max(float(np.abs(a - b).max()) for a, b in zip(single_gradients, replica_gradients)),
        "gradient_max": max(float(np.abs(g).max()) for g in single_gradients),
        "update_max_difference": max(
            float(np.abs(a - b).max()) for a, b in zip(single.get_weights(), mirrored.get_weights())
        ),
        "update_max": max(float(np.abs(a - b).max()) for a, b in zip(single.get_weights(), initial)),
        "steps": [int(single.optimizer.iterations.numpy()), int(mirrored.optimizer.iterations.numpy())],
    }


@pytest.mark.parametrize("overrides", [{}, {"num_hard_negatives": 3}], ids=["all_negatives", "hard_negatives"])
def test_two_replicas_give_the_loss_gradient_and_update_of_one_process(overrides):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-c", _SPLIT_CPU_AND_CHECK, str(here), json.dumps(overrides)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    # Each replica alone would score its queries against its own 8 candidates: a different loss.
    assert abs(result["halves_apart_loss"] - result["single_loss"]) > 0.1
    assert result["replica_loss"] == pytest.approx(result["single_loss"], rel=1e-5)
    assert result["gradient_max"] > 1e-3  # a real gradient, so the comparison means something
    assert result["gradient_max_difference"] <= 1e-5 * result["gradient_max"] + 1e-7
    assert result["steps"] == [1, 1] and result["update_max"] > 1e-4
    assert result["update_max_difference"] <= 1e-5


def test_mean_loss_is_the_epochs_loss_per_example_not_the_last_batchs(table_sizes, make_batch):
    tf.keras.utils.set_random_seed(3)
    model = TwoTowerModel(TwoTowerConfig(**SMALL), table_sizes)
    model.compile()
    data = make_batch(40, seed=1)
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(16)  # 16 + 16 + 8 rows
    logs = model.evaluate(dataset, verbose=0, return_dict=True)
    batches = [{k: v[i : i + 16] for k, v in data.items()} for i in (0, 16, 32)]
    losses = [float(model.compute_loss(batch)) for batch in batches]
    assert logs["loss"] == pytest.approx(losses[-1], rel=1e-5)  # Keras' "loss": the last (8-row) batch's sum
    assert logs["mean_loss"] == pytest.approx(sum(losses) / 40, rel=1e-5)
