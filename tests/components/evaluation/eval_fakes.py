"""Tiny world for the ModelEvaluator tests: interactions where the fake two-tower is right, a broken
two-tower, a fake DCN ranker, and writers for the Examples / ItemCatalog artifacts.

The good model is tests/components/index/index_fakes.py's hashing two-tower (a query is its user's
hash embedding plus the mean of its history items'). Test interactions are built from it: each
test user's relevant items are 3 of the good model's top items (outside the popular head) plus 2
popular items. So the good model beats popularity, popularity beats a model that ranks at random,
and the broken model (queries ignore the history, items hash under another key) is random.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "index"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402
from index_fakes import _dense, _parse_spec, _raw_specs, make_example, save_fake_two_tower, write_records  # noqa: E402

from towerflow.components.evaluation.offline import OfflineData, TwoTowerRecommender  # noqa: E402
from towerflow.models import features as F  # noqa: E402

NUM_ITEMS = 150
NUM_POPULAR = 8
NUM_TEST_USERS = 48
NUM_BACKGROUND_USERS = 30
GENRES = ("Drama", "Comedy", "Action", "Horror")
AGES = (15, 21, 30, 40, 47, 53, 60, -1)
TEST_T0 = 10_000

__all__ = ["make_world", "save_broken_two_tower", "save_fake_ranker", "save_fake_two_tower", "write_artifacts"]


def _hash(strings, key):
    dims = [tf.strings.to_hash_bucket_strong(strings, 10_000, key=[d, key]) for d in range(16)]
    return tf.cast(tf.stack(dims, axis=-1), tf.float32) / 10_000.0 - 0.5


class BrokenTwoTower(tf.Module):
    """Right signatures, useless embeddings: the query ignores the history, items hash differently."""

    def query(self, raw):
        return {"embedding": tf.math.l2_normalize(_hash(raw[F.USER_ID], 99), axis=-1)}

    def candidate(self, raw):
        return {"embedding": tf.math.l2_normalize(_hash(raw[F.ITEM_ID], 98), axis=-1)}


def save_broken_two_tower(path: str) -> str:
    module = BrokenTwoTower()
    signatures = {}
    for name, keys, head in (
        ("query_tower", F.QUERY_FEATURES, module.query),
        ("candidate_tower", F.CANDIDATE_FEATURES, module.candidate),
    ):
        parse = _parse_spec(keys)
        signatures[name] = tf.function(head, input_signature=[_raw_specs(keys)]).get_concrete_function()
        signatures[f"{name}_examples"] = tf.function(
            lambda examples, head=head, parse=parse: head(_dense(tf.io.parse_example(examples, parse))),
            input_signature=[tf.TensorSpec([None], tf.string, name="examples")],
        ).get_concrete_function()
    tf.saved_model.save(module, path, signatures=signatures)
    return path


class FakeRanker(tf.Module):
    """Scores (query, item) with the good two-tower's dot product, as both ranker heads."""

    def score(self, raw):
        user = _hash(raw[F.USER_ID], 7)
        hist = raw[F.HIST_ITEM_IDS]
        mask = tf.cast(tf.not_equal(hist, ""), tf.float32)[..., None]
        mean = tf.reduce_sum(_hash(hist, 7) * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
        query = tf.math.l2_normalize(0.2 * user + mean, axis=-1)
        item = tf.math.l2_normalize(_hash(raw[F.ITEM_ID], 7), axis=-1)
        p = tf.sigmoid(5.0 * tf.reduce_sum(query * item, axis=-1))
        return {"interaction_score": 5.0 * tf.reduce_sum(query * item, axis=-1), "liked_probability": p}


def save_fake_ranker(path: str) -> str:
    module = FakeRanker()
    keys = (*F.QUERY_FEATURES, *F.CANDIDATE_FEATURES, *F.ITEM_POINT_IN_TIME_FEATURES)
    ranker = tf.function(module.score, input_signature=[_raw_specs(keys)]).get_concrete_function()
    tf.saved_model.save(module, path, signatures={"ranker": ranker})
    return path


def _catalog() -> pd.DataFrame:
    rows = [
        {
            F.ITEM_ID: f"i{j}",
            F.ITEM_TITLE: f"Title {j}",
            F.ITEM_GENRES: [GENRES[j % 4]] + ([GENRES[(j + 1) % 4]] if j % 3 == 0 else []),
            F.ITEM_RELEASE_YEAR: 1990 + j % 10,
        }
        for j in range(NUM_ITEMS)
    ]
    return pd.DataFrame(rows).set_index(F.ITEM_ID)


def make_world(good_tower_dir: str, seed: int = 0) -> OfflineData:
    """OfflineData whose test items are what the good tower (at `good_tower_dir`) ranks high."""
    rng = np.random.default_rng(seed)
    users, rows = [], []
    for b in range(NUM_BACKGROUND_USERS):  # they make items i0..i7 the popular head
        uid = f"b{b}"
        users.append({F.USER_ID: uid, F.USER_AGE: 30, F.USER_GENDER: "M", F.USER_OCCUPATION: "x", F.USER_ZIP: "1"})
        for j in rng.choice(NUM_POPULAR, size=5, replace=False):
            rows.append((uid, f"i{j}", 4.0, int(rng.integers(0, 8_000)), "train"))
    for u in range(NUM_TEST_USERS):
        uid = f"u{u}"
        gender = "F" if u % 2 else "M"
        users.append(
            {F.USER_ID: uid, F.USER_AGE: AGES[u % len(AGES)], F.USER_GENDER: gender, F.USER_OCCUPATION: "y"}
            | {F.USER_ZIP: "2"}
        )
        if u % 4 == 3:
            continue  # cold user: no history
        for j in rng.choice(np.arange(NUM_POPULAR, NUM_ITEMS), size=2, replace=False):
            rows.append((uid, f"i{j}", 5.0, int(rng.integers(0, 8_000)), "train"))
        rows.append((uid, f"i{rng.integers(NUM_POPULAR, NUM_ITEMS)}", 3.0, int(rng.integers(8_000, 9_000)), "eval"))
    frame = pd.DataFrame(rows, columns=[F.USER_ID, F.ITEM_ID, F.RATING, F.TIMESTAMP, "split"])
    frame = frame.drop_duplicates([F.USER_ID, F.ITEM_ID])
    users_df = pd.DataFrame(users).set_index(F.USER_ID)
    catalog = _catalog()

    history = OfflineData(frame, users_df, catalog)
    test_users = [f"u{u}" for u in range(NUM_TEST_USERS)]
    seen = [set(frame.loc[frame[F.USER_ID] == uid, F.ITEM_ID]) for uid in test_users]
    tower = TwoTowerRecommender(good_tower_dir, history, TEST_T0)
    top = tower(test_users, 40, seen)
    test_rows = []
    for uid, items, ex in zip(test_users, top, seen):
        liked = [i for i in items if int(i[1:]) >= NUM_POPULAR][:3]
        popular = [f"i{j}" for j in rng.choice(NUM_POPULAR, size=2, replace=False) if f"i{j}" not in ex]
        for item in liked + popular:
            test_rows.append((uid, item, 5.0, TEST_T0 + int(rng.integers(0, 500)), "test"))
    test = pd.DataFrame(test_rows, columns=frame.columns)
    return OfflineData(pd.concat([frame, test], ignore_index=True), users_df, catalog)


def write_artifacts(data: OfflineData, examples_uri: str, catalog_uri: str) -> None:
    """The Examples (Split-*/...gz) and ItemCatalog layout OfflineData.from_artifacts reads."""
    full = data.frame.join(data.users, on=F.USER_ID)
    for split in ("train", "eval", "test"):
        part = full[full["split"] == split]
        records = [
            make_example(
                {
                    F.USER_ID: r[F.USER_ID],
                    F.ITEM_ID: r[F.ITEM_ID],
                    F.RATING: float(r[F.RATING]),
                    F.TIMESTAMP: int(r[F.TIMESTAMP]),
                    F.USER_AGE: int(r[F.USER_AGE]),
                    F.USER_GENDER: r[F.USER_GENDER],
                    F.USER_OCCUPATION: r[F.USER_OCCUPATION],
                    F.USER_ZIP: r[F.USER_ZIP],
                }
            )
            for _, r in part.iterrows()
        ]
        write_records(os.path.join(examples_uri, f"Split-{split}", "data_tfrecord-00000-of-00001.gz"), records)
    items = [
        make_example({F.ITEM_ID: item, **{k: row[k] for k in (F.ITEM_TITLE, F.ITEM_GENRES, F.ITEM_RELEASE_YEAR)}})
        for item, row in data.catalog.iterrows()
    ]
    write_records(os.path.join(catalog_uri, "items-00000-of-00001.gz"), items)
