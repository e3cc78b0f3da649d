"""The evaluators' lower-memory paths give the answers of the code they replaced (kept here as the
reference): loading the artifacts, the eval set from integer (user, item) keys, the validation frame
of a few columns, the fallback's seen items and the ranker's inputs built a batch at a time."""

import glob
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from towerflow.components.evaluation import baselines as B
from towerflow.components.evaluation import offline
from towerflow.components.evaluation.protocol import EvalSet
from towerflow.models import features as F

# --------------------------------------------------------------------------- references (the old code)


def reference_from_artifacts(examples_uri: str, catalog_uri: str):
    """OfflineData.from_artifacts's frame and users before: every column of every split joined, then cut."""
    spec = {
        F.USER_ID: tf.io.FixedLenFeature([], tf.string),
        F.ITEM_ID: tf.io.FixedLenFeature([], tf.string),
        F.RATING: tf.io.FixedLenFeature([], tf.float32),
        F.TIMESTAMP: tf.io.FixedLenFeature([], tf.int64),
        F.USER_AGE: tf.io.FixedLenFeature([], tf.int64),
        F.USER_GENDER: tf.io.FixedLenFeature([], tf.string),
        F.USER_OCCUPATION: tf.io.FixedLenFeature([], tf.string),
        F.USER_ZIP: tf.io.FixedLenFeature([], tf.string),
    }
    frames = []
    for split in ("train", "eval", "test"):
        cols = offline._read_records(os.path.join(examples_uri, f"Split-{split}", "*.gz"), spec)
        frame = pd.DataFrame({k: offline._column(v) for k, v in cols.items()})
        frame["split"] = split
        frames.append(frame)
    full = pd.concat(frames, ignore_index=True)
    users = full.drop_duplicates(F.USER_ID).set_index(F.USER_ID)[list(offline.USER_STATIC)]
    return full[list(offline.FRAME_KEYS) + ["split"]], users


def _reference_group_sets(pairs: pd.DataFrame) -> dict:
    users = pairs["user_id"].to_numpy()
    order = np.argsort(users, kind="stable")
    users_sorted = users[order]
    items_sorted = pairs["item_id"].to_numpy()[order].tolist()
    starts = np.flatnonzero(np.r_[True, users_sorted[1:] != users_sorted[:-1]]) if len(users) else np.zeros(0, int)
    ends = np.r_[starts[1:], len(users)].astype(int)
    return {users_sorted[a]: frozenset(items_sorted[a:b]) for a, b in zip(starts.tolist(), ends.tolist())}


def reference_eval_set(df: pd.DataFrame, catalog=None) -> dict:
    """EvalSet.from_frame's fields before: frames of str pairs, a merge and a set per user."""
    frame = pd.DataFrame(
        {
            "user_id": df["user_id"].astype(str).to_numpy(),
            "item_id": df["item_id"].astype(str).to_numpy(),
            "is_test": (df["split"] == "test").to_numpy(),
        }
    )
    test_ts = df.loc[df["split"] == "test", "timestamp"]
    if test_ts.empty:
        raise ValueError("no test interactions")
    history = frame.loc[~frame["is_test"], ["user_id", "item_id"]].drop_duplicates()
    test = frame.loc[frame["is_test"], ["user_id", "item_id"]].drop_duplicates()
    marked = test.merge(history, on=["user_id", "item_id"], how="left", indicator=True)
    relevant_pairs = marked.loc[marked["_merge"] == "left_only", ["user_id", "item_id"]]
    relevant_by_user = _reference_group_sets(relevant_pairs)
    seen_by_user = _reference_group_sets(history)
    user_ids = tuple(sorted(relevant_by_user))
    seen = tuple(seen_by_user.get(u, frozenset()) for u in user_ids)
    if catalog is None:
        catalog_items = tuple(sorted(pd.unique(frame["item_id"])))
    else:
        catalog_items = tuple(pd.unique(np.asarray([str(i) for i in catalog], dtype=object)))
        outside = set(relevant_pairs["item_id"]) - set(catalog_items)
        if outside:
            raise ValueError(f"relevant items missing from the catalog: {sorted(outside)[:5]}")
    return {
        "user_ids": user_ids,
        "relevant": tuple(relevant_by_user[u] for u in user_ids),
        "seen": seen,
        "is_warm": [len(s) > 0 for s in seen],
        "cutoff": float(test_ts.min()),
        "catalog": catalog_items,
        "item_popularity": {str(k): int(v) for k, v in history["item_id"].value_counts().items()},
        "n_dropped_users": int(test["user_id"].nunique() - len(user_ids)),
    }


def reference_validation_frame(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame[frame["split"] != "test"].copy()
    out.loc[out["split"] == "eval", "split"] = "test"
    return out


def reference_seen(frame: pd.DataFrame) -> dict:
    """serving_lists's seen items before: a set per user from a groupby."""
    seen = frame.groupby(frame[F.USER_ID].astype(str))[F.ITEM_ID].agg(lambda s: set(map(str, s)))
    return dict(seen.items())


def reference_ranker_inputs(data, query, candidates, popularity) -> dict:
    """RerankedRecommender's ranker inputs before: every (user, candidate) pair at once."""
    rows, items = [], []
    for u, cands in enumerate(candidates):
        rows.extend([u] * len(cands))
        items.extend(cands)
    inputs = {key: value[rows] for key, value in query.items()}
    inputs.update(offline.candidate_features(data, items))
    by_item = {key: dict(zip(data.catalog.index, values)) for key, values in popularity.items()}
    for key, values in by_item.items():
        inputs[key] = np.array([values[i] for i in items])
    return inputs


# --------------------------------------------------------------------------- random frames


def _random_frame(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(0, 12, n),
            "item_id": [f"i{x}" for x in rng.integers(0, 15, n)],
            "timestamp": rng.integers(0, 100, n),
        }
    )
    if seed % 3 == 0:
        frame["user_id"] = frame["user_id"].astype(str)
    if seed % 5 == 1:
        frame["item_id"] = rng.integers(0, 15, n)  # ids compared as strings
    if seed % 7 == 2:  # 1 and "1" are one user, "01" another
        frame["user_id"] = frame["user_id"].astype(object)
        frame.loc[frame.index[: min(3, n)], "user_id"] = ["1", 1, "01"][: min(3, n)]
    frame["split"] = np.where(frame["timestamp"] < 60, "train", np.where(frame["timestamp"] < 80, "eval", "test"))
    return frame


# --------------------------------------------------------------------------- tests


def test_from_artifacts_as_before(artifact_dirs, tmp_path):
    examples = str(tmp_path / "examples")
    shutil.copytree(artifact_dirs["examples"], examples)
    for path in glob.glob(os.path.join(examples, "Split-eval", "*")):
        os.remove(path)  # and with an empty split: the dtypes pandas gives the join then
    for uri in (artifact_dirs["examples"], examples):
        data = offline.OfflineData.from_artifacts(uri, artifact_dirs["catalog"])
        frame, users = reference_from_artifacts(uri, artifact_dirs["catalog"])
        pd.testing.assert_frame_equal(data.frame, frame)
        pd.testing.assert_frame_equal(data.users, users)
    assert (frame["split"] == "eval").sum() == 0 and len(frame) > 0


@pytest.mark.parametrize("seed", range(24))
def test_eval_set_from_integer_keys_as_before(seed):
    frame = _random_frame(seed)
    catalogs = [None, sorted({str(i) for i in frame["item_id"]}) + ["zz"], ["i1", "i2"]]
    for catalog in catalogs:
        try:
            want = reference_eval_set(frame, catalog)
        except ValueError as error:
            with pytest.raises(ValueError) as got:
                EvalSet.from_frame(frame, catalog=catalog)
            assert str(got.value) == str(error)
            continue
        got = EvalSet.from_frame(frame, catalog=catalog)
        for name, value in want.items():
            assert (list(got.is_warm) if name == "is_warm" else getattr(got, name)) == value, name
        assert type(got.cutoff) is float


def test_validation_frame_of_some_columns_is_the_same_rows(world):
    frame = world.frame
    want = reference_validation_frame(frame)
    pd.testing.assert_frame_equal(B.validation_frame(frame), want)
    columns = [F.USER_ID, F.ITEM_ID, F.TIMESTAMP]
    pd.testing.assert_frame_equal(B.validation_frame(frame, columns), want[[*columns, "split"]])
    assert (frame["split"] == "eval").any()  # the original is left as it was
    assert set(B.validation_frame(frame)["split"]) == {"train", "test"}


@pytest.mark.parametrize("seed", range(6))
def test_fallback_seen_items_as_before(seed):
    frame = _random_frame(seed).rename(columns={"user_id": F.USER_ID, "item_id": F.ITEM_ID})
    got = B._items_by_user(frame)
    assert list(got) == sorted(got, key=list(got).index)  # one entry per user
    assert {user: set(items) for user, items in got.items()} == reference_seen(frame)
    assert all(len(items) == len(set(items)) for items in got.values())


def test_serving_lists_as_before(world):
    frame, catalog = world.frame, list(world.catalog.index)
    for name, settings in (
        (B.POPULARITY, {}),
        (B.RECENT_POPULARITY, {"window_days": 3.0}),
        (B.SEGMENT_POPULARITY, {}),
        (B.ITEM_KNN, {"neighbors": 10.0, "fallback_window_days": 3.0}),
    ):
        got = B.serving_lists(name, settings, frame, world.users, catalog, n=20)
        fit = B.FitInput(frame[[F.USER_ID, F.ITEM_ID, F.TIMESTAMP]], world.users, tuple(catalog), got["as_of"])
        recommend = B.build(name, fit, settings)
        seen = reference_seen(frame)
        users = sorted(set(seen) | {str(u) for u in world.users.index})
        assert got["users"] == dict(zip(users, recommend(users, 20, [seen.get(u, set()) for u in users]))), name


def test_ranker_inputs_built_a_batch_at_a_time_as_before(world, model_dirs):
    ranker = tf.saved_model.load(os.path.join(model_dirs["ranker"], "Format-Serving")).signatures["ranker"]
    users = ["u0", "u1", "u3", "u5", "nobody", "b2"]
    as_of = 10_000
    query = offline.query_features(world, users, as_of)
    catalog = list(world.catalog.index)
    # lengths that do not divide the batch, an empty list, items with one and two genres
    candidates = [catalog[3:14], [], catalog[0:1], catalog[40:71], catalog[7:9], catalog[100:117]]
    popularity = offline.item_popularity_features(world, catalog, as_of)
    for batch_size in (7, 4096):
        want = offline._call(ranker, reference_ranker_inputs(world, query, candidates, popularity), batch_size)
        got = offline._call_pairs(ranker, world, query, candidates, popularity, batch_size)
        assert set(got) == set(want)
        for key in want:
            assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key]), key


def test_release_freed_memory_is_harmless_with_or_without_malloc_trim(monkeypatch):
    offline.release_freed_memory()  # glibc here: malloc_trim(0)
    monkeypatch.setattr(offline.ctypes.util, "find_library", lambda name: None)
    offline.release_freed_memory()  # no C library found: nothing to do


def reference_newcomer_scores(fit: B.FitInput, window_days: float, first_n: int) -> np.ndarray:
    """NewcomerPopularity's counts before: a sorted copy of the fit's frame and a groupby per setting."""
    frame = fit.frame.sort_values(F.TIMESTAMP, kind="stable")
    ordinal = frame.groupby(frame[F.USER_ID].astype(str), sort=False).cumcount()
    early = frame[(ordinal < first_n).to_numpy()]
    recent = early[early[F.TIMESTAMP] >= fit.as_of - window_days * B.SECONDS_PER_DAY]
    return B._counts(recent, fit.catalog)


@pytest.mark.parametrize("seed", range(8))
def test_newcomer_and_recent_counts_as_before(seed):
    frame = _random_frame(seed).rename(columns={"user_id": F.USER_ID, "item_id": F.ITEM_ID, "timestamp": F.TIMESTAMP})
    frame[F.TIMESTAMP] = frame[F.TIMESTAMP] * (B.SECONDS_PER_DAY // 4)  # many ties: the frame's order decides
    catalog = tuple(sorted({str(i) for i in frame[F.ITEM_ID]}) + ["never"])
    as_of = float(frame[F.TIMESTAMP].max()) + 1.0
    fit = B.FitInput(frame[[F.USER_ID, F.ITEM_ID, F.TIMESTAMP]], pd.DataFrame(), catalog, as_of)
    assert 0 < (frame[F.TIMESTAMP] >= as_of - 3 * B.SECONDS_PER_DAY).sum() < len(frame)  # windows cut the rows
    for window in (1, 3, 30):
        recent = frame[frame[F.TIMESTAMP] >= fit.as_of - window * B.SECONDS_PER_DAY]
        assert np.array_equal(B.RecentPopularity(fit, window)._scores, B._counts(recent, catalog))
        for first_n in (1, 2, 5, 50):
            got = B.NewcomerPopularity(fit, window, first_n)._scores
            assert np.array_equal(got, reference_newcomer_scores(fit, window, first_n)), (window, first_n)
