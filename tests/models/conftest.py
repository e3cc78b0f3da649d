"""Shared fixtures for the model tests: tiny inline data, no files needed.

TensorFlow Recommenders needs Keras 2, so the legacy-Keras switch is set here,
before anything imports TensorFlow.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from towerflow.models import features as F  # noqa: E402
from towerflow.models import preprocessing  # noqa: E402

# Vocabulary sizes of a tiny world; table rows follow from them.
VOCABULARY_SIZES = {
    F.USER_ID_VOCAB: 6,
    F.ITEM_ID_VOCAB: 9,
    F.USER_GENDER_VOCAB: 2,
    F.USER_OCCUPATION_VOCAB: 4,
    F.USER_ZIP_PREFIX_VOCAB: 5,
    F.ITEM_GENRE_VOCAB: 5,
    F.ITEM_TITLE_TOKEN_VOCAB: 20,
}


@pytest.fixture
def table_sizes():
    return preprocessing.table_sizes(VOCABULARY_SIZES)


def make_transformed_batch(batch_size: int, seed: int = 0, table_sizes=None) -> dict:
    """A batch shaped like preprocessing_fn's output, with random valid ids."""
    sizes = table_sizes or preprocessing.table_sizes(VOCABULARY_SIZES)
    rng = np.random.default_rng(seed)

    def ids(table, shape=None, padded=False):
        low = 0 if table in preprocessing.FIXED_TABLE_SIZES else 1
        values = rng.integers(low, sizes[table], size=shape or (batch_size,))
        if padded:
            # Right padding of a random length, like the padded lists.
            lengths = rng.integers(0, values.shape[1] + 1, size=batch_size)
            values[np.arange(values.shape[1])[None, :] >= lengths[:, None]] = F.PAD_ID
        return values.astype(np.int64)

    return {
        F.USER_ID_XF: ids(preprocessing.USER_ID_TABLE),
        F.USER_GENDER_XF: ids(preprocessing.USER_GENDER_TABLE),
        F.USER_OCCUPATION_XF: ids(preprocessing.USER_OCCUPATION_TABLE),
        F.USER_ZIP_PREFIX_XF: ids(preprocessing.USER_ZIP_PREFIX_TABLE),
        F.USER_AGE_BUCKET_XF: ids(preprocessing.USER_AGE_BUCKET_TABLE),
        F.HIST_ITEM_IDS_XF: ids(preprocessing.ITEM_ID_TABLE, (batch_size, F.HIST_MAX_LEN), padded=True),
        F.USER_PRIOR_COUNT_LOG_XF: rng.uniform(0, 3, batch_size).astype(np.float32),
        F.USER_PRIOR_MEAN_RATING_XF: rng.uniform(0, 1, batch_size).astype(np.float32),
        F.USER_DAYS_SINCE_FIRST_LOG_XF: rng.uniform(0, 5, batch_size).astype(np.float32),
        F.CTX_HOUR_XF: ids(preprocessing.CTX_HOUR_TABLE),
        F.CTX_DAY_OF_WEEK_XF: ids(preprocessing.CTX_DAY_OF_WEEK_TABLE),
        F.ITEM_ID_XF: ids(preprocessing.ITEM_ID_TABLE),
        F.ITEM_GENRES_XF: ids(preprocessing.ITEM_GENRE_TABLE, (batch_size, F.GENRES_MAX_LEN), padded=True),
        F.ITEM_TITLE_TOKENS_XF: ids(
            preprocessing.ITEM_TITLE_TOKEN_TABLE, (batch_size, F.TITLE_MAX_TOKENS), padded=True
        ),
        F.ITEM_YEAR_BUCKET_XF: ids(preprocessing.ITEM_YEAR_BUCKET_TABLE),
        F.ITEM_PRIOR_COUNT_LOG_XF: rng.uniform(0, 4, batch_size).astype(np.float32),
        F.ITEM_RECENT_COUNT_LOG_XF: rng.uniform(0, 3, batch_size).astype(np.float32),
        F.ITEM_DAYS_SINCE_FIRST_LOG_XF: rng.uniform(0, 5, batch_size).astype(np.float32),
        F.ITEM_LOG_FREQUENCY_XF: np.log(rng.uniform(0.01, 0.2, batch_size)).astype(np.float32),
        F.RATING_XF: rng.integers(1, 6, batch_size).astype(np.float32),
        F.LIKED_XF: rng.integers(0, 2, batch_size).astype(np.float32),
        F.TIMESTAMP_XF: rng.integers(0, 30 * 86400, batch_size).astype(np.int64),
    }


@pytest.fixture
def transformed_batch():
    return make_transformed_batch(8)


def make_dataset(num_examples: int = 64, batch_size: int = 16, seed: int = 0):
    """A tf.data pipeline of transformed examples, as the trainer would feed it."""
    return tf.data.Dataset.from_tensor_slices(make_transformed_batch(num_examples, seed)).batch(
        batch_size, drop_remainder=True
    )


@pytest.fixture
def make_batch():
    """Factory fixture: make_batch(batch_size, seed=0) -> dict of numpy arrays."""
    return make_transformed_batch


@pytest.fixture(name="make_dataset")
def make_dataset_fixture():
    """Factory fixture: make_dataset(num_examples=64, batch_size=16, seed=0) -> tf.data.Dataset."""
    return make_dataset


@pytest.fixture(scope="session")
def tft_world(tmp_path_factory):
    """(transformed train rows, transformed unseen rows, TFTransformOutput) of tests/tft_world.py, built once."""
    from tft_world import build_transform

    return build_transform(tmp_path_factory.mktemp("tft"))
