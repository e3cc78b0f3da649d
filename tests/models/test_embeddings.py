"""Embedding backends: lookups, training on CPU with both, TPU -> Keras weight transfer."""

import numpy as np
import pytest
import tensorflow as tf

from towerflow.models import embeddings as E
from towerflow.models import features as F
from towerflow.models import preprocessing as P
from towerflow.models.ranking import DCNRankingModel, RankingConfig
from towerflow.models.two_tower import TwoTowerConfig, TwoTowerModel

SMALL = dict(user_id_dim=8, item_id_dim=8, feature_dim=4, batch_size=16, epochs=1)


def _tables(backend):
    specs = [E.TableSpec("item", rows=6, dim=3), E.TableSpec("user", rows=4, dim=2)]
    features = {"item": "item", "hist": "item", "user": "user"}
    return E.FeatureEmbeddings(specs, features, backend=backend, optimizer=E.make_optimizer("adagrad", 0.1))


@pytest.mark.parametrize("backend", E.EMBEDDING_BACKENDS)
def test_lookup_shapes_and_subsets(backend):
    layer = _tables(backend)
    ids = {"item": tf.constant([1, 2]), "hist": tf.constant([[1, 2, 0], [3, 0, 0]]), "user": tf.constant([0, 3])}
    out = layer(ids)
    assert out["item"].shape == (2, 3) and out["hist"].shape == (2, 3, 3) and out["user"].shape == (2, 2)
    # History and candidate ids read the same table row.
    np.testing.assert_allclose(out["hist"][0, 0], out["item"][0])
    # A subset (one tower alone) gives the same vectors as the full lookup.
    subset = layer({"hist": ids["hist"]})
    np.testing.assert_allclose(subset["hist"], out["hist"])
    assert sorted(layer.table_variables()) == ["item", "user"]


def test_tpu_backend_runs_tpu_embedding_for_serving_on_cpu():
    assert not isinstance(tf.distribute.get_strategy(), tf.distribute.TPUStrategy)
    layer = _tables("tpu")
    layer({"item": tf.constant([1]), "hist": tf.constant([[1]]), "user": tf.constant([1])})
    assert isinstance(layer._tpu._tpu_embedding, tf.tpu.experimental.embedding.TPUEmbeddingForServing)
    # Outside a TPUStrategy the tables are ordinary trainable variables.
    trainable = {id(v) for v in layer.trainable_variables}
    assert all(id(table) in trainable for table in layer.table_variables().values())


def test_strategy_without_accelerators_is_the_default(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    monkeypatch.delenv("COLAB_TPU_ADDR", raising=False)
    strategy = E.strategy_for_hardware()
    assert strategy is tf.distribute.get_strategy()


def test_unknown_backend_and_table_are_rejected():
    with pytest.raises(ValueError, match="backend"):
        E.FeatureEmbeddings([E.TableSpec("t", 2, 2)], {"f": "t"}, backend="gpu")
    with pytest.raises(ValueError, match="without a spec"):
        E.FeatureEmbeddings([E.TableSpec("t", 2, 2)], {"f": "other"})
    with pytest.raises(ValueError, match="no embedding table"):
        _tables("keras")({"nope": tf.constant([1])})


def test_masked_mean_ignores_padding_and_empty_rows_are_zero():
    emb = tf.constant([[[1.0, 1.0], [3.0, 5.0], [100.0, 100.0]], [[7.0, 7.0], [9.0, 9.0], [9.0, 9.0]]])
    ids = tf.constant([[4, 2, F.PAD_ID], [F.PAD_ID, F.PAD_ID, F.PAD_ID]])
    np.testing.assert_allclose(E.masked_mean(emb, ids), [[2.0, 3.0], [0.0, 0.0]])


def test_attention_pooling_masks_padding():
    pooling = E.HistoryPooling("attention")
    history = tf.random.normal([2, 4, 3], seed=1)
    ids = tf.constant([[5, 6, F.PAD_ID, F.PAD_ID], [F.PAD_ID] * 4])
    query = tf.random.normal([2, 5], seed=2)
    pooled = pooling((history, ids, query))
    # Changing what sits in padded positions changes nothing.
    noisy = tf.concat([history[:, :2], 50.0 + history[:, 2:]], axis=1)
    np.testing.assert_allclose(pooling((noisy, ids, query)), pooled, atol=1e-6)
    np.testing.assert_allclose(pooled[1], np.zeros(3))  # empty history
    # The pooled vector is a convex combination of the real entries.
    assert np.all(np.isfinite(pooled.numpy()))


def test_transformer_pooling_reads_every_real_item_and_masks_padding():
    tf.keras.utils.set_random_seed(3)
    pooling = E.HistoryPooling("transformer")
    history = tf.random.normal([3, 5, 4], seed=1)
    ids = tf.constant([[3, 4, F.PAD_ID, F.PAD_ID, F.PAD_ID], [F.PAD_ID] * 5, [1, 2, 3, 4, 5]])
    query = tf.random.normal([3, 6], seed=2)
    pooled = pooling((history, ids, query)).numpy()
    assert pooled.shape == (3, 4)
    np.testing.assert_allclose(pooled[1], np.zeros(4))  # empty history
    # Padding positions change nothing.
    noisy = tf.concat([history[:, :2], 50.0 + history[:, 2:]], axis=1)
    np.testing.assert_allclose(pooling((noisy, ids, query)).numpy()[0], pooled[0], atol=1e-5)
    # The output is the newest real position's: an older item matters, and so does the newest.
    for position in (0, 4):
        changed = history.numpy()
        changed[2, position] += 1.0
        assert np.abs(pooling((tf.constant(changed), ids, query)).numpy()[2] - pooled[2]).max() > 1e-4
    # A shorter history: the item that became padding no longer matters.
    shorter = tf.constant([[3, 4, F.PAD_ID, F.PAD_ID, F.PAD_ID], [F.PAD_ID] * 5, [1, 2, 3, 4, F.PAD_ID]])
    base = pooling((history, shorter, query)).numpy()[2]
    changed = history.numpy()
    changed[2, 4] += 5.0
    np.testing.assert_allclose(pooling((tf.constant(changed), shorter, query)).numpy()[2], base, atol=1e-5)


def test_two_tower_with_transformer_history_trains(table_sizes, make_dataset):
    tf.keras.utils.set_random_seed(1)
    losses = _train(_two_tower("keras", table_sizes, learning_rate=0.5, history_pooling="transformer"), make_dataset())
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]


def _train(model, steps_dataset, epochs=3):
    model.compile()
    history = model.fit(steps_dataset, epochs=epochs, verbose=0)
    return history.history["loss"]


def _two_tower(backend, table_sizes, **overrides):
    settings = {**SMALL, "embedding_dim": 8, "mlp_layers": (16,), "recency_half_life_days": 0, **overrides}
    config = TwoTowerConfig(embedding_backend=backend, **settings)
    return TwoTowerModel(config, table_sizes)


@pytest.mark.parametrize("backend", E.EMBEDDING_BACKENDS)
def test_two_tower_trains_with_both_backends(backend, table_sizes, make_dataset):
    tf.keras.utils.set_random_seed(1)
    losses = _train(_two_tower(backend, table_sizes, learning_rate=0.5), make_dataset())
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("backend", E.EMBEDDING_BACKENDS)
def test_ranking_trains_with_both_backends(backend, table_sizes, make_dataset):
    tf.keras.utils.set_random_seed(1)
    config = RankingConfig(deep_layers=(16,), embedding_backend=backend, learning_rate=0.1, **SMALL)
    losses = _train(DCNRankingModel(config, table_sizes), make_dataset())
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]


def test_tpu_checkpoint_restores_into_keras_two_tower(tmp_path, table_sizes, make_batch, make_dataset):
    tf.keras.utils.set_random_seed(2)
    batch = make_batch(8, seed=5)
    trained = _two_tower("tpu", table_sizes, history_pooling="attention")
    _train(trained, make_dataset(), epochs=2)
    checkpoint_path = tf.train.Checkpoint(model=trained).save(str(tmp_path / "ckpt"))

    # Serving side: a TPU-backend twin on CPU reads the checkpoint, then hands
    # its weights to the Keras-backend model.
    tpu_twin = _two_tower("tpu", table_sizes, history_pooling="attention")
    keras_model = _two_tower("keras", table_sizes, history_pooling="attention")
    for model in (tpu_twin, keras_model):
        model.query_model(batch), model.candidate_model(batch)
    tf.train.Checkpoint(model=tpu_twin).restore(checkpoint_path).assert_existing_objects_matched()
    E.tpu_to_keras_weights(tpu_twin, keras_model)

    for tower in ("query_model", "candidate_model"):
        expected = getattr(trained, tower)(batch).numpy()
        np.testing.assert_allclose(getattr(tpu_twin, tower)(batch), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(getattr(keras_model, tower)(batch), expected, rtol=1e-5, atol=1e-6)
    item_table = keras_model.embeddings.table_variables()[P.ITEM_ID_TABLE].numpy()
    np.testing.assert_allclose(item_table, trained.embeddings.table_variables()[P.ITEM_ID_TABLE].numpy())


def test_tpu_weights_transfer_into_keras_ranking(table_sizes, make_batch, make_dataset):
    tf.keras.utils.set_random_seed(3)
    batch = make_batch(8, seed=6)
    config = dict(deep_layers=(16,), projection_dim=4, **SMALL)
    tpu_model = DCNRankingModel(RankingConfig(embedding_backend="tpu", **config), table_sizes)
    _train(tpu_model, make_dataset(), epochs=1)
    keras_model = DCNRankingModel(RankingConfig(embedding_backend="keras", **config), table_sizes)
    keras_model(batch)
    E.tpu_to_keras_weights(tpu_model, keras_model)
    for key, value in tpu_model(batch).items():
        np.testing.assert_allclose(keras_model(batch)[key], value, rtol=1e-5, atol=1e-6)


def test_weight_transfer_rejects_different_models(table_sizes, make_batch):
    batch = make_batch(4)
    a = _two_tower("tpu", table_sizes)
    b = _two_tower("keras", table_sizes, mlp_layers=(16, 16))
    for model in (a, b):
        model.query_model(batch), model.candidate_model(batch)
    with pytest.raises(ValueError, match="differ"):
        E.tpu_to_keras_weights(a, b)
