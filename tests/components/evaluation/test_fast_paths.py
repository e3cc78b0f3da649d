"""The evaluator's vectorised and cached paths give the answers of the straightforward code they
replaced (kept here as the reference): baseline top-K, the point-in-time query and item features,
the candidate features, retrieval's top-K, the records read from the artifacts and the protocol's
exclusion check."""

import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from towerflow.components.evaluation import baselines as B
from towerflow.components.evaluation import offline
from towerflow.components.evaluation.protocol import EvalSet, ExcludedItemError, evaluate
from towerflow.models import features as F

DAY = B.SECONDS_PER_DAY


# --------------------------------------------------------------------------- references (the old code)


def lexsort_top_k(scores, tie_rank, k):
    ties = np.broadcast_to(tie_rank, scores.shape)
    return np.lexsort((ties, -scores), axis=1)[:, :k]


def reference_recommend(recommender: B.ScoredRecommender, user_ids, k, exclude):
    """ScoredRecommender.__call__ before: one full lexsort per row, exclusions row by row."""
    index = {item: j for j, item in enumerate(recommender.catalog)}
    out = []
    scores = np.array(recommender.scores(list(user_ids)), dtype=np.float64, copy=True)
    for row, seen in enumerate(exclude):
        scores[row, [index[i] for i in seen if i in index]] = -np.inf
    for row, cols in enumerate(lexsort_top_k(scores, recommender._tie_rank, k)):
        out.append([recommender.catalog[j] for j in cols if scores[row, j] != -np.inf])
    return out


def reference_query_history(frame, user_ids, as_of, history_length):
    past = frame[(frame["split"] != "test") & (frame[F.TIMESTAMP] < as_of)]
    events = {
        user: [F.Event(int(t), i, float(r)) for i, r, t in zip(g[F.ITEM_ID], g[F.RATING], g[F.TIMESTAMP])]
        for user, g in past.groupby(F.USER_ID)
    }
    history = [F.history_features(events.get(u, []), as_of, history_length) for u in user_ids]
    return {
        F.HIST_ITEM_IDS: offline._pad([h[F.HIST_ITEM_IDS] for h in history]),
        F.USER_PRIOR_COUNT: np.array([h[F.USER_PRIOR_COUNT] for h in history], dtype=np.int64),
        F.USER_PRIOR_MEAN_RATING: np.array([h[F.USER_PRIOR_MEAN_RATING] for h in history], dtype=np.float32),
        F.USER_DAYS_SINCE_FIRST: np.array([h[F.USER_DAYS_SINCE_FIRST] for h in history], dtype=np.float32),
    }


def reference_item_popularity(frame, item_ids, as_of):
    past = frame[(frame["split"] != "test") & (frame[F.TIMESTAMP] < as_of)]
    timestamps = {item: sorted(g.tolist()) for item, g in past.groupby(F.ITEM_ID)[F.TIMESTAMP]}
    rows = [F.item_features_at(timestamps.get(item, []), as_of) for item in item_ids]
    return {
        F.ITEM_PRIOR_COUNT: np.array([r[F.ITEM_PRIOR_COUNT] for r in rows], dtype=np.int64),
        F.ITEM_RECENT_COUNT: np.array([r[F.ITEM_RECENT_COUNT] for r in rows], dtype=np.int64),
        F.ITEM_DAYS_SINCE_FIRST: np.array([r[F.ITEM_DAYS_SINCE_FIRST] for r in rows], dtype=np.float32),
    }


def reference_candidates(catalog, item_ids):
    rows = catalog.reindex(list(item_ids))
    return {
        F.ITEM_ID: np.array(item_ids, dtype=object),
        F.ITEM_TITLE: rows[F.ITEM_TITLE].fillna("").to_numpy(dtype=object),
        F.ITEM_GENRES: offline._pad([g if isinstance(g, list) else [] for g in rows[F.ITEM_GENRES]]),
        F.ITEM_RELEASE_YEAR: rows[F.ITEM_RELEASE_YEAR].fillna(0).astype(np.int64).to_numpy(),
    }


def reference_read_records(pattern, keys):
    import glob

    files = sorted(glob.glob(pattern))
    if not files:
        return {k: np.array([]) for k in keys}
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(8192)
    columns = {k: [] for k in keys}
    for batch in dataset.map(lambda s: tf.io.parse_example(s, keys)):
        for key, value in batch.items():
            if isinstance(value, tf.SparseTensor):
                columns[key].extend(tf.RaggedTensor.from_sparse(value).to_list())
            else:
                columns[key].extend(value.numpy().reshape(-1).tolist())
    return columns


def assert_same_arrays(got: dict, want: dict):
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert got[key].shape == want[key].shape, key
        assert np.array_equal(got[key], want[key]), key


# --------------------------------------------------------------------------- a random world


def _random_frame(seed=0, n_users=40, n_items=30, n_rows=600) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            F.USER_ID: [f"u{u}" for u in rng.integers(0, n_users, n_rows)],
            F.ITEM_ID: [f"i{i}" for i in rng.zipf(1.5, n_rows) % n_items],
            # 0.1, 3.3 and 4.7 are not binary fractions: sums in another order differ in the last bit
            F.RATING: rng.choice([0.1, 2.5, 3.3, 4.0, 4.7, 5.0], n_rows),
            # few distinct timestamps: many ties for the (timestamp, item, rating) order
            F.TIMESTAMP: (rng.integers(0, 60, n_rows) * DAY // 2).astype(np.int64),
        }
    )
    t = frame[F.TIMESTAMP]
    frame["split"] = np.where(t < 20 * DAY, "train", np.where(t < 25 * DAY, "eval", "test"))
    return frame


def _users(frame) -> pd.DataFrame:
    ids = sorted(set(frame[F.USER_ID]))
    return pd.DataFrame(
        {
            F.USER_AGE: [18 + 7 * (j % 6) for j in range(len(ids))],
            F.USER_GENDER: [["F", "M"][j % 2] for j in range(len(ids))],
            F.USER_OCCUPATION: "x",
            F.USER_ZIP: "1",
        },
        index=pd.Index(ids, name=F.USER_ID),
    )


def test_top_k_is_the_first_k_of_a_full_lexsort():
    rng = np.random.default_rng(1)
    for trial in range(300):
        n_cols, n_rows, k = int(rng.integers(1, 40)), int(rng.integers(0, 12)), int(rng.integers(1, 50))
        if trial % 3:  # few distinct values: ties everywhere, some -inf
            scores = rng.integers(0, 3, size=(n_rows, n_cols)).astype(np.float64)
            scores[rng.random(scores.shape) < 0.25] = -np.inf
        else:
            scores = rng.random((n_rows, n_cols))
        tie_rank = rng.permutation(n_cols) if trial % 2 else rng.integers(0, 4, n_cols)  # a non-permutation too
        want = lexsort_top_k(scores, tie_rank, k)
        got = B.top_k(scores, tie_rank, k)
        assert len(got) == n_rows
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    scores = np.array([[1.0, np.nan, 1.0, 0.0]])  # nan: the full sort's order
    np.testing.assert_array_equal(B.top_k(scores, np.arange(4), 2)[0], lexsort_top_k(scores, np.arange(4), 2)[0])


@pytest.mark.parametrize("k", [1, 5, 29, 100])
def test_every_scored_baseline_ranks_as_before(k):
    frame = _random_frame()
    users = _users(frame)
    catalog = tuple(f"i{j}" for j in range(32))  # two items nobody touched
    fit = B._fit_input(frame, users, catalog, ("train", "eval"))
    fallback = B.RecentPopularity(fit, 3)
    recommenders = [
        fallback,
        B.SegmentPopularity(fit),
        B.ItemKNN(fit, 0, fallback),
        B.ItemKNN(fit, 5, fallback),
        B.Ease(fit, 10.0, fallback),
    ]
    user_ids = [f"u{u}" for u in range(45)]  # five cold users
    seen = frame[frame["split"] != "test"].groupby(F.USER_ID)[F.ITEM_ID].agg(set)
    exclude = [seen.get(u, set()) | ({"not-in-catalog"} if j % 3 == 0 else set()) for j, u in enumerate(user_ids)]
    for recommender in recommenders:
        assert recommender(user_ids, k, exclude) == reference_recommend(recommender, user_ids, k, exclude)


def test_fit_caches_hold_what_each_fit_computed_before():
    frame = _random_frame(2)
    fit = B._fit_input(frame, _users(frame), tuple(f"i{j}" for j in range(30)), ("train",))
    _, matrix = B._interaction_matrix(fit)
    np.testing.assert_array_equal(fit.cooccurrence, (matrix.T @ matrix).astype(np.float64))
    np.testing.assert_array_equal(fit.interactions[1], matrix)
    assert fit.cooccurrence is fit.cooccurrence  # computed once
    ranking = B.PopularityRecommender(fit.frame, catalog=fit.catalog).ranking
    np.testing.assert_array_equal(fit.popularity_rank, [ranking.index(item) for item in fit.catalog])
    # EASE does not modify the shared Gram matrix
    before = fit.cooccurrence.copy()
    B.Ease(fit, 5.0, B.RecentPopularity(fit, 3))
    np.testing.assert_array_equal(fit.cooccurrence, before)


@pytest.mark.parametrize("history_length", [0, 3, 20])
def test_query_history_features_match_history_features_of_each_user(history_length):
    frame = _random_frame(3)
    data = offline.OfflineData(frame, _users(frame), pd.DataFrame(index=pd.Index([], name=F.ITEM_ID)))
    user_ids = ["u7", "nobody", "u0", "u7", "u39"] + [f"u{u}" for u in range(10, 30)]
    for as_of in (int(10 * DAY), int(25 * DAY), int(25 * DAY) + 1):
        got = offline.query_features(data, user_ids, as_of, history_length)
        want = reference_query_history(frame, user_ids, as_of, history_length)
        assert_same_arrays({key: got[key] for key in want}, want)
        assert got[F.USER_PRIOR_COUNT][1] == 0 and list(got[F.HIST_ITEM_IDS][1]) == [""] * got[F.HIST_ITEM_IDS].shape[1]
    # the last request is kept: asking again gives equal arrays in a new dict
    again = offline.query_features(data, user_ids, as_of, history_length)
    assert again is not got and all(np.array_equal(again[k], got[k]) for k in got)


def test_item_popularity_features_match_item_features_at_each_item():
    frame = _random_frame(4)
    data = offline.OfflineData(frame, _users(frame), pd.DataFrame(index=pd.Index([], name=F.ITEM_ID)))
    items = [f"i{j}" for j in range(32)] + ["unknown", "i3"]
    for as_of in (int(DAY), int(12 * DAY), int(25 * DAY), int(40 * DAY)):
        assert_same_arrays(
            offline.item_popularity_features(data, items, as_of), reference_item_popularity(frame, items, as_of)
        )


def test_candidate_features_match_reindexing_the_catalog():
    catalog = pd.DataFrame(
        {
            F.ITEM_TITLE: ["A", None, "C", "D"],
            F.ITEM_GENRES: [["Drama"], [], ["Comedy", "Drama", "War"], None],
            F.ITEM_RELEASE_YEAR: [1990, 1991, 1992, 1993],
        },
        index=pd.Index(["a", "b", "c", "d"], name=F.ITEM_ID),
    )
    data = offline.OfflineData(pd.DataFrame(), pd.DataFrame(), catalog)
    for items in (["a", "b", "c", "d"], ["b", "d", "a"], ["zz", "c", "a", "zz"], ["b"], ["zz"]):
        assert_same_arrays(offline.candidate_features(data, items), reference_candidates(catalog, items))


@pytest.mark.parametrize("chunk", [7, 47])  # 48 users: chunks of 7 (the last of 6); 47 + 1 -> one of 48
def test_retrieval_top_k_in_user_chunks_and_replayed(world, model_dirs, monkeypatch, chunk):
    retrieval = offline.TwoTowerRecommender(os.path.join(model_dirs["good"], "Format-Serving"), world, 10_000)
    eval_set = world.eval_set()
    users = list(eval_set.user_ids)
    exclude = [set(s) for s in eval_set.seen]
    # the reference: every user's scores at once, exclusions row by row
    scores = retrieval.query_embeddings(users) @ retrieval.item_embeddings.T
    for row, seen in enumerate(exclude):
        scores[row, [retrieval._index[i] for i in seen if i in retrieval._index]] = -np.inf
    top = np.argpartition(-scores, 19, axis=1)[:, :20]
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
    ranked = np.take_along_axis(top, order, axis=1)
    want_items = [[retrieval.item_ids[j] for j in row if np.isfinite(scores[r, j])] for r, row in enumerate(ranked)]
    want_scores = [scores[r, [j for j in row if np.isfinite(scores[r, j])]] for r, row in enumerate(ranked)]

    assert len(users) == 48
    monkeypatch.setattr(offline.TwoTowerRecommender, "CHUNK_USERS", chunk)
    items, values = retrieval.scored(users, 20, exclude)
    assert items == want_items
    for a, b in zip(values, want_scores):
        np.testing.assert_array_equal(a, b)
    # the same request again (new but equal exclusion sets) replays; other exclusions do not
    replay = retrieval.scored(users, 20, [set(s) for s in eval_set.seen])
    assert replay[0] == items and all(np.array_equal(a, b) for a, b in zip(replay[1], values))
    replay[0][0].append("mutated")  # the caller's copy, not the kept answer
    assert retrieval.scored(users, 20, exclude)[0] == items
    fewer = retrieval.scored(users, 20, [set() for _ in users])[0]
    assert fewer != items and not any(set(a) & set(s) for a, s in zip(items, exclude))


def test_records_are_read_as_before(artifact_dirs):
    spec = {
        F.USER_ID: tf.io.FixedLenFeature([], tf.string),
        F.ITEM_ID: tf.io.FixedLenFeature([], tf.string),
        F.RATING: tf.io.FixedLenFeature([], tf.float32),
        F.TIMESTAMP: tf.io.FixedLenFeature([], tf.int64),
        F.USER_AGE: tf.io.FixedLenFeature([], tf.int64),
    }
    pattern = os.path.join(artifact_dirs["examples"], "Split-train", "*.gz")
    got = offline._read_records(pattern, spec)
    want = reference_read_records(pattern, spec)
    got_frame = pd.DataFrame({k: offline._column(v) for k, v in got.items()})
    want_frame = pd.DataFrame({k: offline._decode(v) for k, v in want.items()})
    pd.testing.assert_frame_equal(got_frame, want_frame)
    assert len(got_frame) > 0
    empty = offline._read_records(os.path.join(artifact_dirs["examples"], "nothing", "*.gz"), spec)
    pd.testing.assert_frame_equal(
        pd.DataFrame({k: offline._column(v) for k, v in empty.items()}),
        pd.DataFrame({k: offline._decode(v) for k, v in empty.items()}),
    )


def test_offline_data_from_artifacts_is_unchanged(world, artifact_dirs):
    data = offline.OfflineData.from_artifacts(artifact_dirs["examples"], artifact_dirs["catalog"])
    assert data.eval_set() is data.eval_set()  # built once per dataset
    frame = data.frame.sort_values([F.USER_ID, F.ITEM_ID]).reset_index(drop=True)
    expected = world.frame.sort_values([F.USER_ID, F.ITEM_ID]).reset_index(drop=True)
    assert list(frame.dtypes) == ["object", "object", "float64", "int64", "object"]
    pd.testing.assert_frame_equal(frame, expected[list(frame.columns)], check_dtype=False)
    assert list(data.catalog[F.ITEM_GENRES].iloc[:3]) == list(world.catalog[F.ITEM_GENRES].iloc[:3])


def test_the_exclusion_check_still_catches_a_seen_item():
    frame = pd.DataFrame(
        {
            "user_id": ["a", "a", "b", "a", "b"],
            "item_id": ["x", "y", "x", "z", "y"],
            "timestamp": [1, 2, 3, 10, 11],
            "split": ["train", "eval", "train", "test", "test"],
        }
    )
    eval_set = EvalSet.from_frame(frame, catalog=["x", "y", "z", "w"])
    report = evaluate(lambda users, k, exclude: [["z", "w"], ["y", "z"]], eval_set, (2,))
    assert report.metric("hit_rate", 2) == 1.0
    with pytest.raises(ExcludedItemError, match="'x' for user 'b'"):
        evaluate(lambda users, k, exclude: [["z"], ["x"]], eval_set, (2,))
    with pytest.raises(ExcludedItemError, match="'y' for user 'a'"):
        evaluate(lambda users, k, exclude: [["w", "y"], []], eval_set, (2,))


def test_one_list_for_everyone_skips_the_per_row_top_k(monkeypatch):
    frame = _random_frame(5)
    fit = B._fit_input(frame, _users(frame), tuple(f"i{j}" for j in range(32)), ("train", "eval"))
    recent = B.RecentPopularity(fit, 7)
    user_ids = [f"u{u}" for u in range(45)]
    exclude = [{f"i{(u * 7 + j) % 32}" for j in range(u % 33)} for u in range(45)]  # up to every item
    want = {k: reference_recommend(recent, user_ids, k, exclude) for k in (1, 10, 40)}

    def no_top_k(*args):
        raise AssertionError("the per-row top_k ran")

    monkeypatch.setattr(B, "top_k", no_top_k)
    for k, lists in want.items():
        assert recent(user_ids, k, exclude) == lists


def test_slicings_from_one_evaluate_equal_one_evaluate_per_slicing(world, model_dirs):
    retrieval = offline.TwoTowerRecommender(os.path.join(model_dirs["good"], "Format-Serving"), world, 10_000)
    eval_set = world.eval_set()
    slicings = offline.user_slicings(world.users)
    genres = dict(world.catalog[F.ITEM_GENRES].items())
    calls = []

    def recommend(users, k, exclude):
        calls.append(1)
        return retrieval(users, k, exclude)

    report = offline.evaluate_sliced(recommend, eval_set, (5, 20), item_genres=genres, slicings=slicings)
    assert len(calls) == 1
    # before: one evaluate per slicing, the labels of the later ones added to the first report
    want = evaluate(retrieval, eval_set, (5, 20), item_genres=genres, slices=slicings["gender"])
    extra = evaluate(retrieval, eval_set, (5, 20), item_genres=genres, slices=slicings["age"])
    for name in extra.metrics:
        if name not in want.metrics:
            want.metrics[name], want.n_users[name], want.masks[name] = (
                extra.metrics[name],
                extra.n_users[name],
                extra.masks[name],
            )
    assert list(report.metrics) == list(want.metrics) and report.n_users == want.n_users
    np.testing.assert_equal(report.metrics, want.metrics)
    assert report.beyond_accuracy == want.beyond_accuracy
    assert all(np.array_equal(report.masks[n], want.masks[n]) for n in want.masks)
    with pytest.raises(ValueError, match="clashes"):
        report.add_slices({eval_set.user_ids[0]: "warm"})


class _SharedScores(B.ScoredRecommender):
    def __init__(self, row, tie_rank):
        super().__init__([f"i{j}" for j in range(len(row))], tie_rank)
        self._row = np.asarray(row, dtype=np.float64)

    def scores(self, user_ids):
        return np.broadcast_to(self._row, (len(user_ids), len(self._row)))


def test_one_shared_list_with_ties_and_minus_infinity_ranks_as_before():
    rng = np.random.default_rng(6)
    for trial in range(40):
        n = int(rng.integers(1, 30))
        row = rng.integers(0, 4, n).astype(np.float64)
        row[rng.random(n) < 0.2] = -np.inf
        recommender = _SharedScores(row, rng.permutation(n) if trial % 2 else rng.integers(0, 3, n))
        users = [f"u{u}" for u in range(int(rng.integers(2, 9)))]
        exclude = [{f"i{j}" for j in rng.choice(n + 3, int(rng.integers(0, n + 3)))} for _ in users]
        for k in (1, 3, n, n + 5):
            assert recommender(users, k, exclude) == reference_recommend(recommender, users, k, exclude)


def test_string_columns_hold_one_object_per_distinct_value(artifact_dirs):
    # at 20M rows one str per row cost the evaluators gigabytes; a pointer per row to a shared str does not
    pattern = os.path.join(artifact_dirs["examples"], "Split-*", "*.gz")
    ids = offline._read_records(pattern, {F.USER_ID: tf.io.FixedLenFeature([], tf.string)})[F.USER_ID]
    assert ids.dtype == object and all(isinstance(v, str) for v in ids)
    assert len(ids) > len(set(ids.tolist())) > 1
    assert len({id(v) for v in ids}) == len(set(ids.tolist()))
