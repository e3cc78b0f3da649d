"""preprocessing_fn run through tf.Transform's Beam implementation on inline data."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
from tft_world import INTERACTIONS

from towerflow.models import features as F
from towerflow.models import preprocessing
from towerflow.models.vocabulary import VOCABULARY_CONFIG_KEY, VocabularyLimits


@pytest.fixture
def transformed(tft_world):
    return tft_world


def test_vocabularies_and_shared_item_ids(transformed):
    rows, _, tft_output = transformed
    # Vocabularies are ordered by frequency; ids are shifted by one past PAD_ID.
    item = {b"i1": 1, b"i2": 2, b"i3": 3, b"i4": 4}
    assert tft_output.vocabulary_by_name(F.ITEM_ID_VOCAB) == [b"i1", b"i2", b"i3", b"i4"]
    assert [r[F.ITEM_ID_XF] for r in rows] == [item[i.encode()] for _, i, _ in INTERACTIONS]
    assert [r[F.USER_ID_XF] for r in rows] == [1] * 5 + [2] * 3 + [3] * 2
    # The history uses the candidate vocabulary: same item -> same id.
    assert list(rows[4][F.HIST_ITEM_IDS_XF][:5]) == [1, 2, 3, 4, F.PAD_ID]
    assert rows[1][F.HIST_ITEM_IDS_XF][0] == rows[0][F.ITEM_ID_XF]


def test_padding_to_fixed_lengths(transformed):
    rows, unseen, _ = transformed
    for row in rows + unseen:
        assert row[F.HIST_ITEM_IDS_XF].shape == (F.HIST_MAX_LEN,)
        assert row[F.ITEM_GENRES_XF].shape == (F.GENRES_MAX_LEN,)
        assert row[F.ITEM_TITLE_TOKENS_XF].shape == (F.TITLE_MAX_TOKENS,)
    assert np.all(rows[0][F.HIST_ITEM_IDS_XF] == F.PAD_ID)  # no history at all
    assert np.all(rows[2][F.ITEM_GENRES_XF] == F.PAD_ID)  # item without genres
    # The history keeps its newest HIST_MAX_LEN entries (i4 was the oldest).
    assert list(unseen[1][F.HIST_ITEM_IDS_XF]) == [1] * F.HIST_MAX_LEN


def test_unknown_values_map_to_oov_buckets(transformed):
    _, unseen, tft_output = transformed
    sizes = preprocessing.table_sizes_from_transform_output(tft_output)
    assert sizes[preprocessing.USER_ID_TABLE] == 1 + 3 + F.NUM_OOV_BUCKETS
    assert sizes[preprocessing.ITEM_ID_TABLE] == 1 + 4 + F.NUM_OOV_BUCKETS
    oov_item = 1 + 4  # the first row after the 4 known items
    row = unseen[0]
    assert row[F.USER_ID_XF] == 1 + 3
    assert row[F.ITEM_ID_XF] == oov_item
    assert list(row[F.HIST_ITEM_IDS_XF][:3]) == [2, oov_item, F.PAD_ID]
    genres = tft_output.vocabulary_by_name(F.ITEM_GENRE_VOCAB)
    assert genres == [b"Drama", b"Comedy", b"Action"]
    assert list(row[F.ITEM_GENRES_XF][:3]) == [1 + len(genres), 2, F.PAD_ID]  # Western is OOV
    for key in (F.USER_ID_XF, F.ITEM_ID_XF, F.USER_GENDER_XF, F.USER_OCCUPATION_XF, F.USER_ZIP_PREFIX_XF):
        table = {
            F.USER_ID_XF: preprocessing.USER_ID_TABLE,
            F.ITEM_ID_XF: preprocessing.ITEM_ID_TABLE,
            F.USER_GENDER_XF: preprocessing.USER_GENDER_TABLE,
            F.USER_OCCUPATION_XF: preprocessing.USER_OCCUPATION_TABLE,
            F.USER_ZIP_PREFIX_XF: preprocessing.USER_ZIP_PREFIX_TABLE,
        }[key]
        assert 1 <= row[key] < sizes[table]


def test_categories_buckets_and_numbers(transformed):
    rows, _, tft_output = transformed
    assert tft_output.vocabulary_by_name(F.USER_ZIP_PREFIX_VOCAB) == [b"100", b"941"]  # "" is dropped
    u1, u2 = rows[0], rows[5]
    assert u1[F.USER_ZIP_PREFIX_XF] == 1
    assert u2[F.USER_ZIP_PREFIX_XF] == 1 + 2  # unknown zip -> OOV bucket
    assert u1[F.USER_AGE_BUCKET_XF] == 3  # 25 is in [25, 35)
    assert u2[F.USER_AGE_BUCKET_XF] == 0  # unknown age has bucket 0
    assert rows[0][F.ITEM_YEAR_BUCKET_XF] == 7  # 1995 is in [1995, 2000)
    assert rows[2][F.ITEM_YEAR_BUCKET_XF] == 0  # unknown year has bucket 0
    tokens = tft_output.vocabulary_by_name(F.ITEM_TITLE_TOKEN_VOCAB)
    assert {b"toy", b"story", b"1995", b"get", b"shorty"} <= set(tokens)
    toy_story = [tokens[i - 1] for i in rows[0][F.ITEM_TITLE_TOKENS_XF] if i != F.PAD_ID]
    assert toy_story == [b"toy", b"story", b"1995"]
    assert rows[4][F.USER_PRIOR_COUNT_LOG_XF] == pytest.approx(math.log1p(4))
    assert rows[4][F.USER_PRIOR_MEAN_RATING_XF] == pytest.approx(0.8)
    assert rows[0][F.CTX_HOUR_XF] == 13 and rows[0][F.CTX_DAY_OF_WEEK_XF] == 2
    assert rows[0][F.LIKED_XF] == 1.0 and rows[0][F.RATING_XF] == 4.0


def test_item_log_frequency(transformed):
    rows, unseen, _ = transformed
    # Share of the 10 training interactions: i1 4/10, i2 3/10, i3 2/10, i4 1/10.
    expected = {1: 0.4, 2: 0.3, 3: 0.2, 4: 0.1}
    for row in rows:
        assert row[F.ITEM_LOG_FREQUENCY_XF] == pytest.approx(math.log(expected[row[F.ITEM_ID_XF]]), rel=1e-5)
    # An unseen item gets the smallest training share.
    assert unseen[0][F.ITEM_LOG_FREQUENCY_XF] == pytest.approx(math.log(0.1), rel=1e-5)


@pytest.mark.parametrize("form", ["sparse", "ragged"])
def test_list_helpers_accept_sparse_and_ragged(form):
    ragged = tf.ragged.constant([[5, 6, 7], [], [8]], dtype=tf.int64)
    x = ragged.to_sparse() if form == "sparse" else ragged
    ids = preprocessing._to_ragged(x)
    pad = F.PAD_ID
    np.testing.assert_array_equal(preprocessing._pad_to_dense(ids, 2, keep="last"), [[6, 7], [pad, pad], [8, pad]])
    np.testing.assert_array_equal(preprocessing._pad_to_dense(ids, 2), [[5, 6], [pad, pad], [8, pad]])
    np.testing.assert_array_equal(preprocessing._pad_to_dense(ids, 4)[0], [5, 6, 7, pad])


def test_serving_layer_transforms_query_features_without_labels_or_item(transformed):
    """The lead stacks tft_layer + tower: the query side must not need item or label inputs."""
    _, _, tft_output = transformed
    layer = tft_output.transform_features_layer()
    raw = {
        F.USER_ID: tf.constant([b"u1", b"nobody"]),
        F.USER_AGE: tf.constant([25, -1], tf.int64),
        F.USER_GENDER: tf.constant([b"M", b""]),
        F.USER_OCCUPATION: tf.constant([b"writer", b"astronaut"]),
        F.USER_ZIP: tf.constant([b"10003", b""]),
        F.HIST_ITEM_IDS: tf.sparse.from_dense(tf.constant([[b"i1", b"i2"], [b"", b""]])),
        F.USER_PRIOR_COUNT: tf.constant([2, 0], tf.int64),
        F.USER_PRIOR_MEAN_RATING: tf.constant([4.0, 0.0]),
        F.USER_DAYS_SINCE_FIRST: tf.constant([1.0, 0.0]),
        F.CTX_HOUR: tf.constant([1, 2], tf.int64),
        F.CTX_DAY_OF_WEEK: tf.constant([3, 4], tf.int64),
    }
    out = layer(raw)
    for key in F.QUERY_FEATURES_XF:
        assert key in out, key
    np.testing.assert_array_equal(out[F.USER_ID_XF].numpy(), [1, 4])
    np.testing.assert_array_equal(out[F.HIST_ITEM_IDS_XF].numpy()[:, :3], [[1, 2, 0], [0, 0, 0]])


def test_raw_unknown_user_through_transform_and_query_tower(transformed):
    """tft_layer + query tower on raw features, as the serving function stacks them."""
    from towerflow.models.two_tower import TwoTowerConfig, TwoTowerModel

    _, _, tft_output = transformed
    sizes = preprocessing.table_sizes_from_transform_output(tft_output)
    model = TwoTowerModel(TwoTowerConfig(embedding_dim=8, mlp_layers=(8,), recency_half_life_days=0), sizes)
    raw = {
        F.USER_ID: tf.constant([b"never-seen-user"]),
        F.USER_AGE: tf.constant([-1], tf.int64),
        F.USER_GENDER: tf.constant([b""]),
        F.USER_OCCUPATION: tf.constant([b"astronaut"]),
        F.USER_ZIP: tf.constant([b"ABCDE"]),
        F.HIST_ITEM_IDS: tf.sparse.from_dense(tf.constant([[b"i1", b"never-seen-item"]])),
        F.USER_PRIOR_COUNT: tf.constant([2], tf.int64),
        F.USER_PRIOR_MEAN_RATING: tf.constant([3.0]),
        F.USER_DAYS_SINCE_FIRST: tf.constant([1.0]),
        F.CTX_HOUR: tf.constant([23], tf.int64),
        F.CTX_DAY_OF_WEEK: tf.constant([6], tf.int64),
    }
    embedding = model.query_model(tft_output.transform_features_layer()(raw)).numpy()
    assert embedding.shape == (1, 8) and np.all(np.isfinite(embedding))


def test_vocabulary_limits_bound_the_id_vocabularies(tmp_path):
    """top_k / min_count cut rare values into the OOV bucket; the contract (PAD_ID, shift, OOV row) holds."""
    import functools

    import tensorflow_transform.beam as tft_beam
    from tft_world import instance, metadata

    limits = VocabularyLimits(item_top_k=2, user_min_count=3)
    fn = functools.partial(preprocessing.preprocessing_fn, custom_config={VOCABULARY_CONFIG_KEY: limits.settings()})
    train = [instance(*row) for row in INTERACTIONS]
    with tft_beam.Context(temp_dir=str(tmp_path / "tmp")):
        (rows, _), transform_fn = (train, metadata()) | tft_beam.AnalyzeAndTransformDataset(fn)
        _ = transform_fn | tft_beam.WriteTransformFn(str(tmp_path / "out"))
    tft_output = tft.TFTransformOutput(str(tmp_path / "out"))
    # items by count: i1 4, i2 3, i3 2, i4 1 -> top 2 kept; users u1 5, u2 3, u3 2 -> u3 below 3
    assert tft_output.vocabulary_by_name(F.ITEM_ID_VOCAB) == [b"i1", b"i2"]
    assert tft_output.vocabulary_by_name(F.USER_ID_VOCAB) == [b"u1", b"u2"]
    oov_item, oov_user = 1 + 2, 1 + 2
    assert [r[F.ITEM_ID_XF] for r in rows] == [{"i1": 1, "i2": 2}.get(i, oov_item) for _, i, _ in INTERACTIONS]
    assert [r[F.USER_ID_XF] for r in rows] == [1] * 5 + [2] * 3 + [oov_user] * 2
    assert list(rows[4][F.HIST_ITEM_IDS_XF][:5]) == [1, 2, oov_item, oov_item, F.PAD_ID]
    # cut items get the smallest count in the frequency file (i2's 3 of 10), never log(0)
    i3 = [r for r, (_, i, _) in zip(rows, INTERACTIONS) if i == "i3"][0]
    assert i3[F.ITEM_LOG_FREQUENCY_XF] == pytest.approx(math.log(3 / 10))
    sizes = preprocessing.table_sizes_from_transform_output(tft_output)
    assert sizes[preprocessing.ITEM_ID_TABLE] == 1 + 2 + F.NUM_OOV_BUCKETS


def test_vocabulary_limits_are_validated():
    assert VocabularyLimits.from_custom_config(None) == VocabularyLimits()
    assert VocabularyLimits.from_custom_config({"code_fingerprint": "x"}).item_top_k is None
    with pytest.raises(ValueError, match="item_top_k must be a positive integer"):
        VocabularyLimits(item_top_k=0)
    with pytest.raises(ValueError, match="user_min_count must be an integer >= 1"):
        VocabularyLimits(user_min_count=0)
    assert VocabularyLimits.from_settings({"item_top_k": 7}).item_top_k == 7
    with pytest.raises(ValueError, match="unknown vocabulary settings"):
        VocabularyLimits.from_settings({"item_topk": 7})
    with pytest.raises(ValueError, match="unknown vocabulary settings"):
        VocabularyLimits.from_custom_config({VOCABULARY_CONFIG_KEY: {"top_k": 5}})


def test_item_frequency_table_is_built_once_not_on_every_call(transformed):
    # The transform graph's signature must not re-read the frequency vocabulary file on every call (each
    # batch Transform applies, each call of an exported model): its table is built in the init scope.
    _, _, tft_output = transformed
    loaded = tf.saved_model.load(tft_output.transform_savedmodel_dir)
    signature = loaded.signatures["serving_default"]
    ops = [op.type for op in signature.graph.get_operations()]
    ops += [node.op for function in signature.graph.as_graph_def().library.function for node in function.node_def]
    assert "InitializeTableFromTextFileV2" not in ops
    assert "LookupTableFindV2" in ops  # the lookups themselves are still there
