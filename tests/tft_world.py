"""A tiny world of users, items and interactions run through tf.Transform, shared by model tests.

`build_transform(tmp)` analyses `preprocessing_fn` on INTERACTIONS with
tf.Transform's Beam implementation (the Transform component's code path) and
returns the transformed training rows, transformed UNSEEN rows and the
TFTransformOutput whose serving layer the exported models embed.
"""

import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

from towerflow.models import features as F
from towerflow.models import preprocessing

SCALARS = {
    F.USER_ID: (tf.string, b""),
    F.ITEM_ID: (tf.string, b""),
    F.RATING: (tf.float32, 0.0),
    F.TIMESTAMP: (tf.int64, 0),
    F.LIKED: (tf.int64, 0),
    F.USER_AGE: (tf.int64, -1),
    F.USER_GENDER: (tf.string, b""),
    F.USER_OCCUPATION: (tf.string, b""),
    F.USER_ZIP: (tf.string, b""),
    F.ITEM_TITLE: (tf.string, b""),
    F.ITEM_RELEASE_YEAR: (tf.int64, 0),
    F.USER_PRIOR_COUNT: (tf.int64, 0),
    F.USER_PRIOR_MEAN_RATING: (tf.float32, 0.0),
    F.USER_DAYS_SINCE_FIRST: (tf.float32, 0.0),
    F.ITEM_PRIOR_COUNT: (tf.int64, 0),
    F.ITEM_RECENT_COUNT: (tf.int64, 0),
    F.ITEM_DAYS_SINCE_FIRST: (tf.float32, 0.0),
    F.CTX_HOUR: (tf.int64, 0),
    F.CTX_DAY_OF_WEEK: (tf.int64, 0),
}

ITEMS = {
    # item: (title, genres, year)
    "i1": ("Toy Story (1995)", ["Comedy", "Drama"], 1995),
    "i2": ("GoldenEye (1995)", ["Action"], 1995),
    "i3": ("Four Rooms", [], 0),
    "i4": ("Get Shorty!", ["Drama"], 1985),
}
USERS = {
    # user: (age, gender, occupation, zip)
    "u1": (25, "M", "writer", "10003"),
    "u2": (-1, "F", "artist", ""),
    "u3": (53, "", "", "94110"),
}
# (user, item, history); item counts i1:4 i2:3 i3:2 i4:1, user counts u1:5 u2:3 u3:2.
INTERACTIONS = [
    ("u1", "i1", []),
    ("u1", "i2", ["i1"]),
    ("u1", "i3", ["i1", "i2"]),
    ("u1", "i4", ["i1", "i2", "i3"]),
    ("u1", "i1", ["i1", "i2", "i3", "i4"]),
    ("u2", "i1", []),
    ("u2", "i2", ["i1"]),
    ("u2", "i3", ["i1", "i2"]),
    ("u3", "i1", []),
    ("u3", "i2", ["i1"]),
]


def instance(user, item, history, **overrides):
    age, gender, occupation, zip_code = USERS.get(user, (-1, "", "", ""))
    title, genres, year = ITEMS.get(item, ("Unknown Movie", [], 0))
    instance = {
        F.USER_ID: user.encode(),
        F.ITEM_ID: item.encode(),
        F.RATING: 4.0,
        F.TIMESTAMP: 1000,
        F.LIKED: 1,
        F.USER_AGE: age,
        F.USER_GENDER: gender.encode(),
        F.USER_OCCUPATION: occupation.encode(),
        F.USER_ZIP: zip_code.encode(),
        F.ITEM_TITLE: title.encode(),
        F.ITEM_GENRES: [g.encode() for g in genres],
        F.ITEM_RELEASE_YEAR: year,
        F.HIST_ITEM_IDS: [h.encode() for h in history],
        F.USER_PRIOR_COUNT: len(history),
        F.USER_PRIOR_MEAN_RATING: 4.0 if history else 0.0,
        F.USER_DAYS_SINCE_FIRST: 2.0 if history else 0.0,
        F.ITEM_PRIOR_COUNT: 3,
        F.ITEM_RECENT_COUNT: 2,
        F.ITEM_DAYS_SINCE_FIRST: 5.5,
        F.CTX_HOUR: 13,
        F.CTX_DAY_OF_WEEK: 2,
    }
    instance.update(overrides)
    return instance


def metadata():
    spec = {key: tf.io.FixedLenFeature([], dtype) for key, (dtype, _) in SCALARS.items()}
    spec[F.ITEM_GENRES] = tf.io.VarLenFeature(tf.string)
    spec[F.HIST_ITEM_IDS] = tf.io.VarLenFeature(tf.string)
    return dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))


def unseen_instances():
    """Unknown user, unknown item and genre, a history with an unknown item, and an over-long history."""
    return [
        instance("u99", "i99", ["i2", "i99"], **{F.ITEM_GENRES: [b"Western", b"Comedy"]}),
        instance("u1", "i2", ["i4"] + ["i1"] * F.HIST_MAX_LEN),
    ]


def build_transform(tmp):
    """(transformed train rows, transformed unseen rows, TFTransformOutput)."""
    train = [instance(*row) for row in INTERACTIONS]
    meta = metadata()
    with tft_beam.Context(temp_dir=str(tmp / "tmp")):
        (train_rows, _), transform_fn = (train, meta) | tft_beam.AnalyzeAndTransformDataset(
            preprocessing.preprocessing_fn
        )
        unseen_rows, _ = ((unseen_instances(), meta), transform_fn) | tft_beam.TransformDataset()
        _ = transform_fn | tft_beam.WriteTransformFn(str(tmp / "transform_output"))
    # The raw schema, as the Transform component writes it; exports read their input specs from it.
    metadata_io.write_metadata(meta, str(tmp / "transform_output" / tft.TFTransformOutput.RAW_METADATA_DIR))
    return train_rows, unseen_rows, tft.TFTransformOutput(str(tmp / "transform_output"))
