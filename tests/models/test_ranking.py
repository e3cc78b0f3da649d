"""DCN ranking model: config validation, the three heads, the weighted loss, training."""

import numpy as np
import pytest
import tensorflow as tf

from towerflow.models import features as F
from towerflow.models import preprocessing as P
from towerflow.models.ranking import (
    CANDIDATE_SIDE_FEATURES,
    INTERACTION_OUTPUT,
    LIKED_OUTPUT,
    RATING_OUTPUT,
    DCNRankingModel,
    RankingConfig,
)

SMALL = dict(user_id_dim=8, item_id_dim=8, feature_dim=4, deep_layers=(16,), batch_size=16)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_cross_layers": -1}, "num_cross_layers"),
        ({"projection_dim": 0}, "projection_dim"),
        ({"structure": "sideways"}, "structure"),
        ({"deep_layers": (8, -2)}, "deep_layers"),
        ({"rating_weight": -1.0}, "rating_weight"),
        ({"rating_weight": 0.0, "liked_weight": 0.0, "interaction_weight": 0.0}, "cannot all be 0"),
        ({"num_cross_layers": 0, "deep_layers": ()}, "at least one"),
        ({"embedding_backend": "gpu"}, "embedding_backend"),
    ],
)
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        RankingConfig(**overrides)


def test_call_returns_all_three_heads(table_sizes, make_batch):
    model = DCNRankingModel(RankingConfig(**SMALL), table_sizes)
    out = model(make_batch(5))
    assert set(out) == {RATING_OUTPUT, LIKED_OUTPUT, INTERACTION_OUTPUT}
    assert all(value.shape == (5, 1) for value in out.values())
    assert np.all((out[LIKED_OUTPUT].numpy() > 0) & (out[LIKED_OUTPUT].numpy() < 1))


def test_no_interaction_output_when_its_head_is_untrained(table_sizes, make_batch):
    model = DCNRankingModel(RankingConfig(interaction_weight=0.0, **SMALL), table_sizes)
    assert set(model(make_batch(3))) == {RATING_OUTPUT, LIKED_OUTPUT}


def test_item_popularity_features_reach_the_scores(table_sizes, make_batch):
    model = DCNRankingModel(RankingConfig(**SMALL), table_sizes)
    batch = make_batch(4, seed=2)
    before = model(batch)[INTERACTION_OUTPUT].numpy()
    batch[F.ITEM_RECENT_COUNT_LOG_XF] = batch[F.ITEM_RECENT_COUNT_LOG_XF] + 3.0
    assert not np.allclose(model(batch)[INTERACTION_OUTPUT].numpy(), before)


def test_loss_is_the_weighted_sum_of_mse_and_bce(table_sizes, make_batch):
    config = RankingConfig(rating_weight=0.5, liked_weight=2.0, interaction_weight=0.0, **SMALL)
    model = DCNRankingModel(config, table_sizes)
    batch = make_batch(6, seed=4)
    out = model(batch)
    rating, liked = out[RATING_OUTPUT].numpy()[:, 0], out[LIKED_OUTPUT].numpy()[:, 0]
    mse = np.mean((batch[F.RATING_XF] - rating) ** 2)
    labels = batch[F.LIKED_XF]
    bce = -np.mean(labels * np.log(liked) + (1 - labels) * np.log(1 - liked))
    assert float(model.compute_loss(batch)) == pytest.approx(0.5 * mse + 2.0 * bce, rel=1e-4)


@pytest.mark.parametrize(
    "overrides",
    [
        {"structure": "stacked"},
        {"structure": "parallel", "projection_dim": 4},
        {"structure": "stacked", "num_cross_layers": 0, "history_pooling": "attention"},
    ],
)
def test_trains(overrides, table_sizes, make_dataset):
    tf.keras.utils.set_random_seed(5)
    model = DCNRankingModel(RankingConfig(learning_rate=0.1, **{**SMALL, **overrides}), table_sizes)
    model.compile()
    losses = model.fit(make_dataset(), epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]


def test_low_rank_cross_layers_use_the_projection(table_sizes, make_batch):
    model = DCNRankingModel(RankingConfig(projection_dim=3, num_cross_layers=2, **SMALL), table_sizes)
    model(make_batch(2))
    kernels = [w for layer in model.cross_layers for w in layer.weights if len(w.shape) == 2]
    assert len(kernels) == 4 and {3} <= {dim for w in kernels for dim in w.shape}


def test_unknown_user_and_genre_at_inference(table_sizes, make_batch):
    model = DCNRankingModel(RankingConfig(**SMALL), table_sizes)
    batch = make_batch(2, seed=7)
    batch[F.USER_ID_XF][:] = table_sizes[P.USER_ID_TABLE] - 1
    batch[F.ITEM_GENRES_XF][:, 0] = table_sizes[P.ITEM_GENRE_TABLE] - 1
    for value in model(batch).values():
        assert np.all(np.isfinite(value.numpy()))


def _softmax_ce(logits):
    """Cross-entropy of column 0 (the positive) per row, averaged."""
    logits = logits - logits.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(logits).sum(axis=1)) - logits[:, 0]))


def test_interaction_loss_is_a_log_q_corrected_softmax_over_another_rows_item(table_sizes, make_batch):
    # With a batch of 2 the only non-zero roll is 1: the negatives are (user0, item1) and (user1, item0).
    config = RankingConfig(rating_weight=0.0, liked_weight=0.0, num_negatives=1, **SMALL)
    model = DCNRankingModel(config, table_sizes)
    batch = make_batch(2, seed=7)
    batch[F.ITEM_ID_XF] = np.array([3, 5], np.int64)
    swapped = dict(batch)
    for key in CANDIDATE_SIDE_FEATURES:
        swapped[key] = batch[key][::-1]
    s_pos = model(batch)[INTERACTION_OUTPUT].numpy()[:, 0]
    s_neg = model(swapped)[INTERACTION_OUTPUT].numpy()[:, 0]
    log_q = batch[F.ITEM_RECENT_COUNT_LOG_XF]
    logits = np.stack([s_pos - log_q, s_neg - log_q[::-1]], axis=1)
    assert float(model.compute_loss(batch)) == pytest.approx(_softmax_ce(logits), rel=1e-4)


def test_negatives_score_like_rows_whose_raw_item_features_were_rolled(table_sizes, make_batch):
    # The candidate vectors are rolled once encoded; that must equal encoding the rolled raw features.
    for structure in ("stacked", "parallel"):
        model = DCNRankingModel(RankingConfig(num_negatives=3, structure=structure, **SMALL), table_sizes)
        batch = make_batch(5, seed=11)
        batch[F.ITEM_ID_XF] = np.array([1, 2, 3, 2, 5], np.int64)
        features = {key: tf.constant(value) for key, value in batch.items()}
        shifts = tf.constant([1, 3, 4], tf.int32)
        query, candidate = model._encode(features)
        logits, hits = model.interaction_logits(features, query, candidate, model._top(query, candidate), shifts)
        log_q = batch[F.ITEM_RECENT_COUNT_LOG_XF]
        expected = [model(batch)[INTERACTION_OUTPUT].numpy()[:, 0] - log_q]
        expected_hits = [np.zeros(5, bool)]
        for shift in (1, 3, 4):
            rolled = dict(batch)
            for key in CANDIDATE_SIDE_FEATURES:
                rolled[key] = np.roll(batch[key], shift, axis=0)
            expected.append(model(rolled)[INTERACTION_OUTPUT].numpy()[:, 0] - rolled[F.ITEM_RECENT_COUNT_LOG_XF])
            expected_hits.append(rolled[F.ITEM_ID_XF] == batch[F.ITEM_ID_XF])
        np.testing.assert_allclose(logits.numpy(), np.stack(expected, axis=1), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(hits.numpy(), np.stack(expected_hits, axis=1))
        assert hits.numpy()[1, 2]  # rows 1 and 3 share item 2: the roll by 3 pairs row 1 with row 3's item


def test_interaction_loss_ignores_a_negative_that_is_the_positive_item(table_sizes, make_batch):
    # Both rows hold item 4: each row's only negative is an accidental hit, so only the positive is left.
    config = RankingConfig(rating_weight=0.0, liked_weight=0.0, num_negatives=1, **SMALL)
    model = DCNRankingModel(config, table_sizes)
    batch = make_batch(2, seed=3)
    batch[F.ITEM_ID_XF] = np.array([4, 4], np.int64)
    assert float(model.compute_loss(batch)) == pytest.approx(0.0, abs=1e-6)


def test_interaction_task_needs_negatives():
    with pytest.raises(ValueError, match="num_negatives"):
        RankingConfig(interaction_weight=1.0, num_negatives=0)


def test_time_bucket_must_be_non_negative():
    with pytest.raises(ValueError, match="time_bucket_hours"):
        RankingConfig(time_bucket_hours=-1)


def test_mean_loss_is_the_epochs_loss_per_example(table_sizes, make_batch):
    tf.keras.utils.set_random_seed(3)
    # without the interaction head, whose negatives are drawn at random on every call: deterministic losses
    model = DCNRankingModel(RankingConfig(interaction_weight=0.0, **SMALL), table_sizes)
    model.compile()
    data = make_batch(40, seed=1)
    logs = model.evaluate(tf.data.Dataset.from_tensor_slices(data).batch(16), verbose=0, return_dict=True)
    rows = (16, 16, 8)
    losses = [float(model.compute_loss({k: v[i : i + n] for k, v in data.items()})) for i, n in zip((0, 16, 32), rows)]
    assert logs["loss"] == pytest.approx(losses[-1], rel=1e-5)  # per example, of the last batch only
    assert logs["mean_loss"] == pytest.approx(sum(n * loss for n, loss in zip(rows, losses)) / 40, rel=1e-5)
