"""Tiny stand-ins for the pipeline's artifacts: a hashing two-tower SavedModel, a catalog, eval examples.

The fake towers have the real signature names and RAW inputs (models/features.py
keys, list features as [B, None] strings padded with ""), but no weights: an id's
embedding is a deterministic hash of the string, L2-normalised, and a query is
its user's embedding plus the mean of its history items' embeddings. So a user
whose history is item "i7" gets "i7" near the top -- enough to tell a working
index from a broken one.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from towerflow.models import features as F  # noqa: E402

DIM = 16
NUM_ITEMS = 60
NUM_USERS = 25


def _dtype(key):
    if key in F.INT_FEATURES:
        return tf.int64
    if key in F.FLOAT_FEATURES:
        return tf.float32
    return tf.string


def _raw_specs(keys):
    return {k: tf.TensorSpec([None, None] if k in F.LIST_FEATURES else [None], _dtype(k), name=k) for k in keys}


def _parse_spec(keys):
    return {
        k: tf.io.VarLenFeature(_dtype(k)) if k in F.LIST_FEATURES else tf.io.FixedLenFeature([], _dtype(k))
        for k in keys
    }


def _hash_embed(strings):
    """[...] strings -> [..., DIM] unnormalised embeddings, one independent hash per dimension."""
    dims = [tf.strings.to_hash_bucket_strong(strings, 10_000, key=[d, 7]) for d in range(DIM)]
    return tf.cast(tf.stack(dims, axis=-1), tf.float32) / 10_000.0 - 0.5


def _normalize(x):
    return tf.math.l2_normalize(x, axis=-1)


class FakeTwoTower(tf.Module):
    def query(self, raw):
        user = _hash_embed(raw[F.USER_ID])
        hist = raw[F.HIST_ITEM_IDS]
        mask = tf.cast(tf.not_equal(hist, ""), tf.float32)[..., None]
        mean = tf.reduce_sum(_hash_embed(hist) * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
        return {"embedding": _normalize(0.2 * user + mean)}

    def candidate(self, raw):
        return {"embedding": _normalize(_hash_embed(raw[F.ITEM_ID]))}


def _dense(parsed):
    return {
        k: tf.sparse.to_dense(v, default_value="") if isinstance(v, tf.SparseTensor) else v for k, v in parsed.items()
    }


def save_fake_two_tower(path: str) -> str:
    module = FakeTwoTower()
    signatures = {}
    for name, keys, head in (
        ("query_tower", F.QUERY_FEATURES, module.query),
        ("candidate_tower", F.CANDIDATE_FEATURES, module.candidate),
    ):
        specs = _raw_specs(keys)
        parse = _parse_spec(keys)
        signatures[name] = tf.function(head, input_signature=[specs]).get_concrete_function()
        signatures[f"{name}_examples"] = tf.function(
            lambda examples, head=head, parse=parse: head(_dense(tf.io.parse_example(examples, parse))),
            input_signature=[tf.TensorSpec([None], tf.string, name="examples")],
        ).get_concrete_function()
    signatures["serving_default"] = signatures["query_tower"]
    tf.saved_model.save(module, path, signatures=signatures)
    return path


def _feature(values, key):
    values = values if isinstance(values, list | tuple) else [values]
    if key in F.INT_FEATURES:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    if key in F.FLOAT_FEATURES:
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in values]))


def make_example(values: dict) -> bytes:
    return tf.train.Example(
        features=tf.train.Features(feature={k: _feature(v, k) for k, v in values.items()})
    ).SerializeToString()


def write_records(path: str, records) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for record in records:
            writer.write(record)


def catalog_examples(num_items: int = NUM_ITEMS):
    return [
        make_example(
            {
                F.ITEM_ID: f"i{j}",
                F.ITEM_TITLE: f"Title {j}",
                F.ITEM_GENRES: ["Drama"] if j % 2 else [],
                F.ITEM_RELEASE_YEAR: 1990 + j % 10,
            }
        )
        for j in range(num_items)
    ]


def query_examples(num: int = NUM_USERS, num_items: int = NUM_ITEMS, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for u in range(num):
        hist = [f"i{j}" for j in rng.choice(num_items, size=rng.integers(0, 4), replace=False)]
        out.append(
            make_example(
                {
                    F.USER_ID: f"u{u}",
                    F.ITEM_ID: f"i{rng.integers(num_items)}",
                    F.USER_AGE: 30,
                    F.USER_GENDER: "F",
                    F.USER_OCCUPATION: "writer",
                    F.USER_ZIP: "12345",
                    F.HIST_ITEM_IDS: hist,
                    F.USER_PRIOR_COUNT: len(hist),
                    F.USER_PRIOR_MEAN_RATING: 4.0,
                    F.USER_DAYS_SINCE_FIRST: 3.0,
                    F.CTX_HOUR: 12,
                    F.CTX_DAY_OF_WEEK: 2,
                    F.RATING: 4.0,
                    F.TIMESTAMP: 1000 + u,
                }
            )
        )
    return out


def embed_catalog(tower_dir: str, num_items: int = NUM_ITEMS):
    """(item ids, embeddings) of the fake catalog, through the candidate tower's raw signature."""
    ids = np.array([f"i{j}" for j in range(num_items)])
    tower = tf.saved_model.load(tower_dir)
    out = tower.signatures["candidate_tower"](
        item_id=tf.constant(ids),
        item_title=tf.constant([""] * num_items),
        item_genres=tf.constant([[""]] * num_items),
        item_release_year=tf.zeros([num_items], tf.int64),
    )
    return ids, out["embedding"].numpy()
