"""Hand-made cases for the hard-negative ranker's training data and loss (models/hard_negatives.py)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from towerflow.models import embeddings as E
from towerflow.models import features as F
from towerflow.models import hard_negatives as H
from towerflow.models.ranking import INTERACTION_OUTPUT, RankingConfig

DAY = F.SECONDS_PER_DAY


def test_point_in_time_popularity_matches_item_features_at():
    rng = np.random.default_rng(3)
    items = rng.integers(0, 5, 200)
    timestamps = rng.integers(0, 60 * DAY, 200)
    index = H.EventIndex(items, timestamps, n_items=6)  # item 5 has no events
    query_items = rng.integers(0, 6, 300)
    query_times = rng.integers(-DAY, 70 * DAY, 300)
    got = index.popularity(query_items, query_times)
    for j, (item, t) in enumerate(zip(query_items, query_times)):
        expected = F.item_features_at(sorted(timestamps[items == item].tolist()), int(t))
        assert got[F.ITEM_PRIOR_COUNT][j] == expected[F.ITEM_PRIOR_COUNT]
        assert got[F.ITEM_RECENT_COUNT][j] == expected[F.ITEM_RECENT_COUNT]
        assert got[F.ITEM_DAYS_SINCE_FIRST][j] == pytest.approx(expected[F.ITEM_DAYS_SINCE_FIRST])


def test_point_in_time_counts_are_strictly_before():
    index = H.EventIndex(np.array([0, 0, 1]), np.array([10, 20, 20]), n_items=2)
    got = index.popularity(np.array([0, 0, 1, 1]), np.array([10, 21, 20, 21]))
    assert got[F.ITEM_PRIOR_COUNT].tolist() == [0, 2, 0, 1]
    assert got[F.ITEM_DAYS_SINCE_FIRST][0] == 0.0
    assert got[F.ITEM_DAYS_SINCE_FIRST][1] == pytest.approx(11 / DAY)


def test_popular_order_recent_then_all_time_ties_by_id():
    ids = ["d", "a", "c", "b", "e"]
    recent = np.array([2, 2, 0, 5, 0])
    prior = np.array([9, 9, 7, 9, 8])
    # b (5 recent); a, d (2 each, by id); then no recent events: e (8 all-time), c (7)
    assert [ids[j] for j in H.popular_order(recent, prior, ids)] == ["b", "a", "d", "e", "c"]


def test_candidate_pools_exclude_positive_and_seen_and_take_the_union():
    # 6 items; retrieval prefers 0 > 1 > 2 > 3 > 4 > 5; popularity order 5, 4, 0, 3, 2, 1
    scores = np.array([[6.0, 5, 4, 3, 2, 1]])
    order = np.array([[5, 4, 0, 3, 2, 1]])
    excluded = np.zeros((1, 6), dtype=bool)
    excluded[0, [0, 5]] = True  # the positive (0) and a seen item (5)
    pools = H.candidate_pools(scores, excluded, order, depth=2)
    assert pools.shape == (1, 4)
    # retrieval's best 2 unexcluded: 1, 2; popular's first 2 unexcluded: 4, 3
    assert sorted(pools[0].tolist()) == [1, 2, 3, 4]


def test_candidate_pools_pad_when_the_union_overlaps():
    scores = np.array([[1.0, 5, 4, 0, 0]])
    order = np.array([[1, 2, 0, 3, 4]])
    excluded = np.array([[True, False, False, False, False]])
    pools = H.candidate_pools(scores, excluded, order, depth=2)
    assert sorted(p for p in pools[0].tolist() if p >= 0) == [1, 2]
    assert (pools[0] == -1).sum() == 2


def test_sample_negatives_distinct_from_pool_and_short_pools_padded():
    rng = np.random.default_rng(0)
    pools = np.array([[3, 7, 9, 11, -1, -1], [4, 5, -1, -1, -1, -1]])
    for _ in range(20):
        got = H.sample_negatives(pools, 3, rng)
        assert len(set(got[0].tolist())) == 3 and set(got[0].tolist()) <= {3, 7, 9, 11}
        assert sorted(got[1].tolist()) == [-1, 4, 5]


def test_sample_negatives_is_uniform_over_the_pool():
    rng = np.random.default_rng(1)
    pools = np.tile(np.array([[0, 1, 2, 3, -1]]), (20000, 1))
    counts = np.bincount(H.sample_negatives(pools, 2, rng).ravel(), minlength=4)
    assert np.allclose(counts / counts.sum(), 0.25, atol=0.01)


def test_listwise_softmax_loss_known_case():
    logits = tf.constant([[2.0, 1.0, 0.0, 5.0], [0.0, 0.0, 0.0, 0.0]])
    valid = tf.constant([[True, True, True, False], [True, True, False, False]])
    # row 0: -log(e^2 / (e^2 + e^1 + e^0)); row 1: -log(1/2); the invalid 5.0 does not count
    expected = -math.log(math.exp(2) / (math.exp(2) + math.exp(1) + 1)) + math.log(2)
    assert float(H.listwise_softmax_loss(logits, valid)) == pytest.approx(expected, rel=1e-6)
    cce = tf.keras.losses.CategoricalCrossentropy(from_logits=True, reduction=tf.keras.losses.Reduction.SUM)
    labels = tf.one_hot([0, 0], 4)
    assert float(cce(labels, H.mask_invalid(logits, valid))) == pytest.approx(expected, rel=1e-5)


def test_transformed_popularity_is_log1p():
    got = H.transformed_popularity(
        {
            F.ITEM_PRIOR_COUNT: np.array([0, 9]),
            F.ITEM_RECENT_COUNT: np.array([1, 3]),
            F.ITEM_DAYS_SINCE_FIRST: np.array([0.0, 2.5]),
        }
    )
    assert got.shape == (2, 3) and got.dtype == np.float32
    assert np.allclose(got, np.log1p([[0, 1, 0.0], [9, 3, 2.5]]))


# --------------------------------------------------------------------------- the model

SMALL = dict(user_id_dim=8, item_id_dim=8, feature_dim=4, deep_layers=(16,), batch_size=16)


def _catalog(make_batch, n_items=4):
    """A tiny catalog: the candidate id features of `n_items` rows of a made batch."""
    items = make_batch(n_items, seed=21)
    return {key: items[key] for key in E.CANDIDATE_ID_FEATURES}


def _with_item(batch, catalog, rows, popularity):
    """`batch` with each row's item replaced by catalog row rows[i] and its popularity features."""
    out = dict(batch)
    for key in E.CANDIDATE_ID_FEATURES:
        out[key] = catalog[key][rows]
    for j, key in enumerate(F.ITEM_POPULARITY_XF):
        out[key] = popularity[:, j]
    return out


def test_negatives_score_as_the_exported_call_scores_that_item(table_sizes, make_batch):
    catalog = _catalog(make_batch)
    model = H.HardNegativeRanker(RankingConfig(num_negatives=2, **SMALL), table_sizes, catalog)
    batch = make_batch(3, seed=5)
    negatives = np.array([[0, 2], [3, 1], [1, 0]], np.int32)
    popularity = np.random.default_rng(2).uniform(0, 3, (3, 2, 3)).astype(np.float32)
    features = {key: tf.constant(v) for key, v in batch.items()}
    features[H.NEGATIVE_ITEMS] = tf.constant(negatives)
    features[H.NEGATIVE_POPULARITY] = tf.constant(popularity)
    query, candidate = model._encode(features)
    logits, valid = model.hard_negative_logits(features, query, model._top(query, candidate))
    expected = [model(batch)[INTERACTION_OUTPUT].numpy()[:, 0]]
    for j in range(2):
        swapped = _with_item(batch, catalog, negatives[:, j], popularity[:, j])
        expected.append(model(swapped)[INTERACTION_OUTPUT].numpy()[:, 0])
    np.testing.assert_allclose(logits.numpy(), np.stack(expected, axis=1), rtol=1e-5, atol=1e-5)
    assert valid.numpy().all()


def test_loss_is_the_softmax_over_the_valid_negatives_plus_the_base(table_sizes, make_batch):
    catalog = _catalog(make_batch)
    config = RankingConfig(rating_weight=0.0, liked_weight=0.0, num_negatives=2, **SMALL)
    model = H.HardNegativeRanker(config, table_sizes, catalog)
    batch = make_batch(2, seed=9)
    negatives = np.array([[1, -1], [2, 3]], np.int32)  # row 0 has one negative
    popularity = np.ones((2, 2, 3), np.float32)
    base = np.array([[0.5, -1.0, 7.0], [0.0, 2.0, 1.0]], np.float32)
    features = {**batch, H.NEGATIVE_ITEMS: negatives, H.NEGATIVE_POPULARITY: popularity}
    scores = [model(batch)[INTERACTION_OUTPUT].numpy()[:, 0]]
    for j in range(2):
        swapped = _with_item(batch, catalog, np.maximum(negatives[:, j], 0), popularity[:, j])
        scores.append(model(swapped)[INTERACTION_OUTPUT].numpy()[:, 0])
    logits = np.stack(scores, axis=1)

    def softmax_ce(values):  # mean over rows; row 0 without its padded column
        rows = [values[0, :2], values[1]]
        return float(np.mean([np.log(np.exp(r).sum()) - r[0] for r in rows]))

    assert float(model.compute_loss(features)) == pytest.approx(softmax_ce(logits), rel=1e-4)
    with_base = {**features, H.BASE_SCORES: base}
    assert float(model.compute_loss(with_base)) == pytest.approx(softmax_ce(logits + base), rel=1e-4)


def test_base_score_is_the_blends_fixed_terms():
    base = H.BaseScore(
        queries=np.array([[1.0, 0.0], [0.0, 2.0]]),
        item_embeddings=np.array([[1.0, 1.0], [3.0, -1.0], [0.0, 0.5]]),
        temperature=0.5,
        popularity_weight=4.0,
    )
    items = np.array([[0, 1], [2, 0]])
    log_recent = np.array([[0.0, 1.0], [0.5, 0.0]])
    # logit = q . e / 0.5 + 4 x log_recent
    assert np.allclose(base.scores(items, log_recent), [[2.0, 6.0 + 4.0], [2.0 + 2.0, 4.0]])


def test_trains_and_lowers_the_loss(table_sizes, make_batch):
    catalog = _catalog(make_batch, n_items=6)
    config = RankingConfig(
        num_negatives=3,
        learning_rate=0.1,
        batch_size=16,
        epochs=1,
        **{k: v for k, v in SMALL.items() if k != "batch_size"},
    )
    model = H.HardNegativeRanker(config, table_sizes, catalog)
    model.compile()
    n = 64
    columns = make_batch(n, seed=4)
    rows = np.random.default_rng(0).integers(0, 6, n)
    for key in E.CANDIDATE_ID_FEATURES:
        columns[key] = catalog[key][rows]
    timestamps = np.arange(n, dtype=np.int64) * 3600
    events = H.EventIndex(rows, timestamps, n_items=6)
    pools = np.array([[j for j in range(6) if j != r] for r in rows], np.int32)
    history = H.fit(model, columns, pools, events, timestamps, epochs=6, seed=0)
    assert history[-1]["mean_loss"] < history[0]["mean_loss"]


def test_in_batch_weight_adds_todays_in_batch_softmax(table_sizes, make_batch):
    from towerflow.models.ranking import DCNRankingModel

    catalog = _catalog(make_batch)
    config = RankingConfig(rating_weight=0.0, liked_weight=0.0, num_negatives=1, **SMALL)
    model = H.HardNegativeRanker(config, table_sizes, catalog)
    batch = make_batch(2, seed=13)  # a batch of 2: the in-batch negative is the other row's item
    batch[F.ITEM_ID_XF] = np.array([3, 5], np.int64)
    features = {**batch, H.NEGATIVE_ITEMS: np.array([[1], [2]], np.int32)}
    features[H.NEGATIVE_POPULARITY] = np.ones((2, 1, 3), np.float32)
    hard = float(model.compute_loss(features))
    in_batch = float(DCNRankingModel.compute_loss(model, batch))
    model.in_batch_weight = 0.5
    assert float(model.compute_loss(features)) == pytest.approx(hard + 0.5 * in_batch, rel=1e-4)
