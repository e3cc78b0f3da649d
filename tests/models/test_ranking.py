"""DCN ranking model: config validation, both heads, the weighted loss, training."""

import numpy as np
import pytest
import tensorflow as tf

from models import features as F
from models import preprocessing as P
from models.ranking import (
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


def test_call_returns_rating_and_liked_probability(table_sizes, make_batch):
    model = DCNRankingModel(RankingConfig(**SMALL), table_sizes)
    out = model(make_batch(5))
    assert set(out) == {RATING_OUTPUT, LIKED_OUTPUT}  # the interaction head is off by default
    assert out[RATING_OUTPUT].shape == (5, 1) and out[LIKED_OUTPUT].shape == (5, 1)
    assert np.all((out[LIKED_OUTPUT].numpy() > 0) & (out[LIKED_OUTPUT].numpy() < 1))


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


def test_interaction_loss_contrasts_each_user_with_another_rows_item(table_sizes, make_batch):
    # With a batch of 2 the only non-zero roll is 1: the negatives are (user0, item1) and (user1, item0).
    config = RankingConfig(rating_weight=0.0, liked_weight=0.0, interaction_weight=1.0, num_negatives=1, **SMALL)
    model = DCNRankingModel(config, table_sizes)
    batch = make_batch(2, seed=7)
    swapped = dict(batch)
    for key in CANDIDATE_SIDE_FEATURES:
        swapped[key] = batch[key][::-1]
    p_pos = model(batch)[INTERACTION_OUTPUT].numpy()[:, 0]
    p_neg = model(swapped)[INTERACTION_OUTPUT].numpy()[:, 0]
    # binary cross-entropy: positives labelled 1, negatives 0, averaged over the 4 pairs
    expected = -np.mean(np.concatenate([np.log(p_pos), np.log(1 - p_neg)]))
    assert float(model.compute_loss(batch)) == pytest.approx(expected, rel=1e-4)


def test_interaction_task_needs_negatives():
    with pytest.raises(ValueError, match="num_negatives"):
        RankingConfig(interaction_weight=1.0, num_negatives=0)
