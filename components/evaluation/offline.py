"""Offline evaluation of exported models with the protocol of docs/design.md.

Reads what the pipeline produced -- the ingested splits, the item catalog, the
exported two-tower and DCN SavedModels -- and scores three recommenders on the
test split: popularity (train+eval counts), two-tower retrieval (exact top-K
over the whole catalog minus seen items) and retrieval followed by DCN
re-ranking of the top `rerank_depth`. Users are served as of the test cut-off:
their history features come from `models.features.history_features` over
their train+eval interactions, exactly what the online feature store computes.

Models are called only through their serving signatures on raw features, so
this measures what serving would return. `evaluate_models` is the one
evaluation path: the ModelEvaluator, the model-quality benchmark and the
notebooks all score baselines and models through it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import tensorflow as tf

from towerflow.components.evaluation.baselines import validation_frame
from towerflow.components.evaluation.metrics import flatten_lists
from towerflow.components.evaluation.protocol import EvalReport, EvalSet, PopularityRecommender, Recommend, evaluate
from towerflow.components.evaluation.slices import AGE_BUCKETS, UNKNOWN, age_bucket, user_slicings  # noqa: F401
from towerflow.components.evaluation.statistics import SCORED_ITEMS
from towerflow.models import features as F
from towerflow.models.two_tower import TwoTowerConfig

FRAME_KEYS = (F.USER_ID, F.ITEM_ID, F.RATING, F.TIMESTAMP)
USER_STATIC = (F.USER_AGE, F.USER_GENDER, F.USER_OCCUPATION, F.USER_ZIP)
DEFAULT_KS = (10, 50, 100)
# Re-ranking scores: the retrieval logit + weight x a DCN output (see RerankedRecommender).
RETRIEVAL_PLUS_INTERACTION = "retrieval+interaction"
RETRIEVAL_PLUS_LIKED = "retrieval+liked"
COMBINED_SCORES = (RETRIEVAL_PLUS_INTERACTION, RETRIEVAL_PLUS_LIKED)
DEFAULT_RERANK_SCORE = RETRIEVAL_PLUS_INTERACTION
# Best mean eval-window NDCG@10 over 3 seeds on ml-100k (benchmarks/results/model_quality.md);
# `tune_rerank_weight` chooses it per model.
DEFAULT_RERANK_WEIGHT = 0.25
RERANK_WEIGHT_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


def release_freed_memory() -> None:
    """Hands the C heap's free pages back to the system (glibc's `malloc_trim`; nothing elsewhere).

    Freed buffers below malloc's mmap threshold (a record batch's columns, small arrays, Python
    objects) stay in the process's heap: an evaluator that read 20M records and dropped the batches
    kept their RSS for the rest of its life. Called after each phase that builds and drops a lot."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is not None:
        trim(0)


def _read_records(pattern: str, keys: Mapping[str, tf.io.FixedLenFeature | tf.io.VarLenFeature]) -> dict:
    """Each key's values over every record: a list per VarLen key, else one numpy column (strings decoded
    to str, numbers widened to int64 / float64, the dtypes pandas gives Python ints / floats).

    Strings are decoded a batch at a time and each distinct value once: a column of ids holds one str
    object per distinct id and a pointer per row instead of a bytes and a str object per row (measured
    on 2M rows: the loaded frame added 0.58 instead of 1.24 GB to the process).
    """
    files = sorted(glob.glob(pattern))
    if not files:
        return {k: np.array([]) for k in keys}
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(8192)
    columns: dict[str, list] = {k: [] for k in keys}
    strings: dict[str, dict[bytes, str]] = {k: {} for k in keys}
    for batch in dataset.map(lambda s: tf.io.parse_example(s, keys), num_parallel_calls=tf.data.AUTOTUNE):
        for key, value in batch.items():
            if isinstance(value, tf.SparseTensor):
                columns[key].extend(tf.RaggedTensor.from_sparse(value).to_list())
                continue
            values = value.numpy().reshape(-1)
            if values.dtype == object:
                known = strings[key]
                decoded = np.empty(len(values), dtype=object)
                decoded[:] = [known.get(v) or known.setdefault(v, v.decode("utf-8")) for v in values]
                values = decoded
            columns[key].append(values)
    out: dict = {}
    for key in keys:
        parts = columns.pop(key)  # each key's batches freed once joined
        if isinstance(keys[key], tf.io.VarLenFeature):
            out[key] = parts
            continue
        values = np.concatenate(parts) if parts else np.array([])
        del parts
        if values.dtype.kind == "f":
            values = values.astype(np.float64)
        elif values.dtype.kind in "iu":
            values = values.astype(np.int64)
        out[key] = values
    return out


def _decode(values):
    return [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]


def _column(values):
    """A column for the frame: strings decoded, numbers as they are (an empty one as a list, as read)."""
    if isinstance(values, np.ndarray) and len(values) and (values.dtype != object or isinstance(values[0], str)):
        return values
    return _decode(values.tolist() if isinstance(values, np.ndarray) else values)


@dataclass
class OfflineData:
    """Interactions with their split, static user features and the catalog's raw features."""

    frame: pd.DataFrame  # user_id, item_id, rating, timestamp, split
    users: pd.DataFrame  # index user_id; USER_STATIC columns
    catalog: pd.DataFrame  # index item_id; ITEM_FEATURES columns (genres as lists)
    # What several recommenders of one evaluation derive from the same data (the eval set, the
    # histories as of a cut-off, the padded catalog features): computed once. The frames are never
    # modified after construction; a changed dataset is a new OfflineData.
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_artifacts(cls, examples_uri: str, catalog_uri: str) -> OfflineData:
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
        # Only the frame's columns are kept per row; the static user columns are cut to each user's
        # first row as each split is read (what drop_duplicates on the joined splits keeps).
        frames, firsts = [], []
        for split in ("train", "eval", "test"):
            cols = _read_records(os.path.join(examples_uri, f"Split-{split}", "*.gz"), spec)
            first = ~pd.Series(cols[F.USER_ID]).duplicated().to_numpy()
            firsts.append(pd.DataFrame({k: _column(cols[k][first]) for k in (F.USER_ID, *USER_STATIC)}))
            frame = pd.DataFrame({k: _column(cols.pop(k)) for k in FRAME_KEYS})
            del cols
            frame["split"] = split
            frames.append(frame)
        full = pd.concat(frames, ignore_index=True)
        del frames
        users = pd.concat(firsts, ignore_index=True).drop_duplicates(F.USER_ID).set_index(F.USER_ID)
        users = users[list(USER_STATIC)]
        catalog_spec = {
            F.ITEM_ID: tf.io.FixedLenFeature([], tf.string),
            F.ITEM_TITLE: tf.io.FixedLenFeature([], tf.string),
            F.ITEM_GENRES: tf.io.VarLenFeature(tf.string),
            F.ITEM_RELEASE_YEAR: tf.io.FixedLenFeature([], tf.int64),
        }
        cols = _read_records(os.path.join(catalog_uri, "*.gz"), catalog_spec)
        catalog = pd.DataFrame(
            {
                F.ITEM_ID: _column(cols[F.ITEM_ID]),
                F.ITEM_TITLE: _column(cols[F.ITEM_TITLE]),
                F.ITEM_GENRES: [_decode(g) for g in cols[F.ITEM_GENRES]],
                F.ITEM_RELEASE_YEAR: _column(cols[F.ITEM_RELEASE_YEAR]),
            }
        ).set_index(F.ITEM_ID)
        release_freed_memory()  # the record batches
        return cls(full, users, catalog)

    def eval_set(self) -> EvalSet:
        if "eval_set" not in self._cache:
            self._cache["eval_set"] = EvalSet.from_frame(self.frame, catalog=list(self.catalog.index))
            release_freed_memory()
        return self._cache["eval_set"]

    def validation_view(self) -> OfflineData:
        """The same protocol one window earlier: test rows dropped, the eval window scored instead.

        For choosing settings (e.g. the re-ranking weight) without looking at the test window.
        """
        return OfflineData(validation_frame(self.frame), self.users, self.catalog)


def _pad(lists: Sequence[Sequence[str]]) -> np.ndarray:
    width = max([len(x) for x in lists] + [1])
    return np.array([list(x) + [""] * (width - len(x)) for x in lists], dtype=object)


def _past_rows(frame: pd.DataFrame, as_of: int) -> np.ndarray:
    """The train+eval rows before `as_of`, as a mask: the columns each reader needs are taken alone
    (a frame of the rows copied every column, ~0.7 GB at 20M rows)."""
    return ((frame["split"] != "test") & (frame[F.TIMESTAMP] < as_of)).to_numpy()


@dataclass(frozen=True)
class _Histories:
    """Every user's train+eval events before one cut-off, in `F.Event` order (timestamp, item id,
    rating) and grouped by user: what `F.history_features` reads, for all users at once."""

    users: pd.Index  # the users with events
    starts: np.ndarray  # first event of users[j] in the arrays below
    counts: np.ndarray
    items: np.ndarray  # object
    ratings: np.ndarray  # float64
    timestamps: np.ndarray  # int64

    @classmethod
    def build(cls, frame: pd.DataFrame, as_of: int) -> _Histories:
        past = _past_rows(frame, as_of)
        user_codes, users = pd.factorize(frame[F.USER_ID].to_numpy(dtype=object)[past])
        items = frame[F.ITEM_ID].to_numpy(dtype=object)[past]
        item_order = pd.factorize(items, sort=True)[0]  # item ids compared as Event compares them
        timestamps = frame[F.TIMESTAMP].to_numpy()[past].astype(np.int64)
        ratings = frame[F.RATING].to_numpy()[past].astype(np.float64)
        order = np.lexsort((ratings, item_order, timestamps, user_codes))
        counts = np.bincount(user_codes, minlength=len(users)).astype(np.int64)
        return cls(
            users=pd.Index(users, dtype=object),
            starts=np.cumsum(counts) - counts,
            counts=counts,
            items=items[order],
            ratings=ratings[order],
            timestamps=timestamps[order],
        )

    def features(self, user_ids: Sequence[str], as_of: int, max_len: int) -> dict[str, np.ndarray]:
        """`F.history_features` of each of `user_ids` (HIST_ITEM_IDS padded with "" like `_pad`)."""
        if max_len < 0:
            raise ValueError(f"max_len must be >= 0, got {max_len}")
        at = self.users.get_indexer(list(user_ids)) if len(self.users) else np.full(len(user_ids), -1)
        known = at >= 0
        n = np.where(known, self.counts[np.where(known, at, 0)] if len(self.counts) else 0, 0)
        start = np.where(known, self.starts[np.where(known, at, 0)] if len(self.starts) else 0, 0)
        kept = np.minimum(n, max_len)
        hist = np.full((len(user_ids), max(int(kept.max(initial=0)), 1)), "", dtype=object)
        mean_rating = np.zeros(len(user_ids), dtype=np.float64)
        days = np.zeros(len(user_ids), dtype=np.float64)
        for row in np.flatnonzero(n > 0).tolist():
            a, count, keep = int(start[row]), int(n[row]), int(kept[row])
            hist[row, :keep] = self.items[a + count - keep : a + count]
            # summed one after another, as UserHistory's prefix sums are (np.cumsum is sequential)
            mean_rating[row] = np.cumsum(self.ratings[a : a + count])[-1] / count
            days[row] = (as_of - int(self.timestamps[a])) / F.SECONDS_PER_DAY
        return {
            F.HIST_ITEM_IDS: hist,
            F.USER_PRIOR_COUNT: n.astype(np.int64),
            F.USER_PRIOR_MEAN_RATING: mean_rating.astype(np.float32),
            F.USER_DAYS_SINCE_FIRST: days.astype(np.float32),
        }


def query_features(
    data: OfflineData, user_ids: Sequence[str], as_of: int, history_length: int = F.DEFAULT_HISTORY_LENGTH
) -> dict[str, np.ndarray]:
    """Raw query-tower inputs of `user_ids` as of `as_of`, from their train+eval interactions.

    The histories are `F.history_features` of each user's events before `as_of`, computed for all
    users at once; the last request's arrays are kept (every recommender of an evaluation asks for
    the same users), so treat them as read-only."""
    key = ("query_features", tuple(user_ids), as_of, history_length)
    cached = data._cache.get("query_features")
    if cached is not None and cached[0] == key:
        return dict(cached[1])
    histories = data._cache.get("histories")
    if histories is None or histories[0] != as_of:
        histories = (as_of, _Histories.build(data.frame, as_of))
        data._cache["histories"] = histories
    history = histories[1].features(user_ids, as_of, history_length)
    context = F.context_features(as_of)
    statics = data.users.reindex(list(user_ids))
    out = {
        F.USER_ID: np.array(user_ids, dtype=object),
        F.USER_AGE: statics[F.USER_AGE].fillna(-1).astype(np.int64).to_numpy(),
        F.USER_GENDER: statics[F.USER_GENDER].fillna("").to_numpy(dtype=object),
        F.USER_OCCUPATION: statics[F.USER_OCCUPATION].fillna("").to_numpy(dtype=object),
        F.USER_ZIP: statics[F.USER_ZIP].fillna("").to_numpy(dtype=object),
        **history,
        F.CTX_HOUR: np.full(len(user_ids), context[F.CTX_HOUR], dtype=np.int64),
        F.CTX_DAY_OF_WEEK: np.full(len(user_ids), context[F.CTX_DAY_OF_WEEK], dtype=np.int64),
    }
    data._cache["query_features"] = (key, out)
    return dict(out)


def _catalog_columns(data: OfflineData) -> dict:
    """The catalog's candidate features once, row j = catalog item j and a last row for an unknown
    item ("" / [] / 0, what reindexing gives it): genres padded to the longest list."""
    if "catalog_columns" not in data._cache:
        catalog = data.catalog
        genres = [g if isinstance(g, list) else [] for g in catalog[F.ITEM_GENRES]] + [[]]
        lengths = np.fromiter(map(len, genres), dtype=np.int64, count=len(genres))
        padded = np.full((len(genres), max(int(lengths.max()), 1)), "", dtype=object)
        for row, g in enumerate(genres):
            padded[row, : len(g)] = g
        data._cache["catalog_columns"] = {
            "index": pd.Index(catalog.index, dtype=object),
            F.ITEM_TITLE: np.append(catalog[F.ITEM_TITLE].fillna("").to_numpy(dtype=object), ""),
            F.ITEM_RELEASE_YEAR: np.append(catalog[F.ITEM_RELEASE_YEAR].fillna(0).astype(np.int64).to_numpy(), 0),
            "genres": padded,
            "genre_lengths": lengths,
        }
    return data._cache["catalog_columns"]


def _catalog_rows(data: OfflineData, item_ids: Sequence[str]) -> np.ndarray:
    """Each item's row in `_catalog_columns` (unknown items: the last row, "" / [] / 0)."""
    index = _catalog_columns(data)["index"]
    if not index.is_unique:  # reindexing would fail the same way
        raise ValueError("cannot reindex on an axis with duplicate labels")
    if not len(item_ids):
        return np.zeros(0, dtype=np.int64)
    at = index.get_indexer(item_ids if isinstance(item_ids, np.ndarray) else list(item_ids))
    return np.where(at >= 0, at, len(index))


def _genre_width(data: OfflineData, at: np.ndarray) -> int:
    """The genre column's width for the items at catalog rows `at`: their longest genre list (at least 1)."""
    return max(int(_catalog_columns(data)["genre_lengths"][at].max(initial=0)), 1)


def _candidate_columns(data: OfflineData, item_ids, at: np.ndarray, width: int) -> dict[str, np.ndarray]:
    columns = _catalog_columns(data)
    return {
        F.ITEM_ID: np.array(item_ids, dtype=object),
        F.ITEM_TITLE: columns[F.ITEM_TITLE][at],
        F.ITEM_GENRES: columns["genres"][at, :width],
        F.ITEM_RELEASE_YEAR: columns[F.ITEM_RELEASE_YEAR][at],
    }


def candidate_features(data: OfflineData, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
    at = _catalog_rows(data, item_ids)
    return _candidate_columns(data, item_ids, at, _genre_width(data, at))


def _call(signature, inputs: Mapping[str, np.ndarray], batch_size: int = 4096) -> dict[str, np.ndarray]:
    n = len(next(iter(inputs.values())))
    outs: dict[str, list] = {}
    for start in range(0, n, batch_size):
        chunk = {k: tf.constant(v[start : start + batch_size]) for k, v in inputs.items()}
        for key, value in signature(**chunk).items():
            outs.setdefault(key, []).append(value.numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}


def _call_pairs(
    signature,
    data: OfflineData,
    query: Mapping[str, np.ndarray],
    candidates: Sequence[Sequence[str]],
    item_columns: Mapping[str, np.ndarray],
    batch_size: int = 4096,
) -> dict[str, np.ndarray]:
    """The ranker's outputs for every (user, candidate) pair, user by user in `candidates` order: what
    `_call` gives on the inputs of all pairs at once -- query row u once per candidate of user u, the
    candidate's catalog features, `item_columns[name][its catalog row]` -- with each batch's inputs
    built only when it is called: the same batches, genre lists padded to the same width. All pairs'
    inputs at once were, at 20M rows, ~12M pairs x (a 20-item history + catalog features) in object
    arrays: several GB."""
    lengths = np.fromiter(map(len, candidates), dtype=np.int64, count=len(candidates))
    rows = np.repeat(np.arange(len(candidates), dtype=np.int64), lengths)
    items = np.empty(int(lengths.sum()), dtype=object)
    items[:] = [item for cands in candidates for item in cands]
    at = _catalog_rows(data, items)
    width = _genre_width(data, at)
    outs: dict[str, list] = {}
    for start in range(0, len(items), batch_size):
        part = slice(start, start + batch_size)
        inputs = {name: value[rows[part]] for name, value in query.items()}
        inputs.update(_candidate_columns(data, items[part], at[part], width))
        inputs.update({name: values[at[part]] for name, values in item_columns.items()})
        for key, value in signature(**{k: tf.constant(v) for k, v in inputs.items()}).items():
            outs.setdefault(key, []).append(value.numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}


class TwoTowerRecommender:
    """Exact top-K by dot product over the catalog, through the exported tower signatures."""

    # Users scored at once: bounds the users x catalog score matrix (4 bytes a score).
    CHUNK_USERS = 2048

    def __init__(self, model_dir: str, data: OfflineData, as_of: int):
        self._model = tf.saved_model.load(model_dir)
        self._data, self._as_of = data, as_of
        self.item_ids = np.array(data.catalog.index, dtype=object)
        self._index = {item: i for i, item in enumerate(self.item_ids)}
        self._index_keys = pd.Index(list(self._index), dtype=object)
        self._index_values = np.fromiter(self._index.values(), dtype=np.int64, count=len(self._index))
        cand = self._model.signatures["candidate_tower"]
        self.item_embeddings = _call(cand, candidate_features(data, list(self.item_ids)))["embedding"]
        # The re-ranked and blended recommenders retrieve for the same users with the same k and
        # exclusions as retrieval alone: the last request's answers are kept and replayed.
        self._last_queries: tuple | None = None
        self._last_scored: tuple | None = None

    def query_embeddings(self, user_ids: Sequence[str]) -> np.ndarray:
        key = tuple(user_ids)
        if self._last_queries is None or self._last_queries[0] != key:
            inputs = query_features(self._data, user_ids, self._as_of)
            self._last_queries = (key, _call(self._model.signatures["query_tower"], inputs)["embedding"])
        return self._last_queries[1].copy()

    def scored(self, user_ids, k, exclude) -> tuple[list[list[str]], list[np.ndarray]]:
        """Top-k item ids per user with their dot-product scores, best first."""
        key = (tuple(user_ids), int(k))
        last = self._last_scored
        if last is None or last[0] != key or not _same_sets(last[1], exclude):
            exclude = [seen if isinstance(seen, frozenset) else frozenset(seen) for seen in exclude]
            self._last_scored = (key, exclude, *self._scored(user_ids, k, exclude))
        items, values = self._last_scored[2:]
        return [list(x) for x in items], list(values)

    def _scored(self, user_ids, k, exclude) -> tuple[list[list[str]], list[np.ndarray]]:
        queries = self.query_embeddings(user_ids)
        items, values = [], []
        # BLAS gives each row the same sums whatever the number of rows, except for one row (a
        # matrix-vector product): a last chunk of one user joins the one before
        starts = list(range(0, len(queries), self.CHUNK_USERS))
        if len(starts) > 1 and len(queries) - starts[-1] == 1:
            starts.pop()
        for start, stop in zip(starts, starts[1:] + [len(queries)]):
            scores = queries[start:stop] @ self.item_embeddings.T
            flat, rows, _ = flatten_lists(exclude[start:stop])
            found = self._index_keys.get_indexer(flat) if len(flat) else np.zeros(0, dtype=np.int64)
            scores[rows[found >= 0], self._index_values[found[found >= 0]]] = -np.inf
            kk = min(k, scores.shape[1])
            top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
            order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
            ranked = np.take_along_axis(top, order, axis=1)
            finite = np.isfinite(np.take_along_axis(scores, ranked, axis=1))
            for r, row in enumerate(ranked):
                keep = row[finite[r]]
                items.append(self.item_ids[keep].tolist())
                value = scores[r, keep]
                value.flags.writeable = False
                values.append(value)
        return items, values

    def __call__(self, user_ids, k, exclude):
        return self.scored(user_ids, k, exclude)[0]


def _same_sets(kept: Sequence[frozenset], exclude: Sequence) -> bool:
    """The kept exclusions equal these, user by user."""
    if len(kept) != len(exclude):
        return False
    return all(a is b or a == (b if isinstance(b, set | frozenset) else set(b)) for a, b in zip(kept, exclude))


def item_popularity_features(data: OfflineData, item_ids: Sequence[str], as_of: int) -> dict[str, np.ndarray]:
    """Point-in-time popularity of `item_ids` as of `as_of`, from train+eval interactions:
    `F.item_features_at` of each item's timestamps, counted for all items at once."""
    past = _past_rows(data.frame, as_of)
    codes, items = pd.factorize(data.frame[F.ITEM_ID].to_numpy(dtype=object)[past])
    timestamps = data.frame[F.TIMESTAMP].to_numpy()[past].astype(np.int64)
    window_start = as_of - int(F.RECENT_WINDOW_DAYS * F.SECONDS_PER_DAY)
    prior = np.bincount(codes, minlength=len(items))
    recent = np.bincount(codes[timestamps >= window_start], minlength=len(items))
    first = np.full(len(items), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, codes, timestamps)
    at = pd.Index(items, dtype=object).get_indexer(list(item_ids)) if len(items) else np.full(len(item_ids), -1)
    known = at >= 0
    safe = np.where(known, at, 0)
    n = np.where(known, prior[safe] if len(items) else 0, 0).astype(np.int64)
    days = [(as_of - int(t)) / F.SECONDS_PER_DAY for t in (first[safe] if len(items) else np.zeros(len(at), int))]
    return {
        F.ITEM_PRIOR_COUNT: n,
        F.ITEM_RECENT_COUNT: np.where(known, recent[safe] if len(items) else 0, 0).astype(np.int64),
        F.ITEM_DAYS_SINCE_FIRST: np.where(n > 0, np.array(days, dtype=np.float64), 0.0).astype(np.float32),
    }


class RerankedRecommender:
    """Retrieves `depth` candidates, then orders them by a ranker score.

    `score` is one of the ranker's outputs, or a combination of the retrieval
    logit (dot product / the two-tower's softmax temperature, `temperature`,
    default TwoTowerConfig's) with `weight` x a DCN output:

    * "retrieval+interaction" (the default): + weight x the DCN's interaction
      score (its own estimate of log P(pick | user, time), which also sees the
      item's recent popularity);
    * "retrieval+liked": + weight x log P(liked); with weight 1 that is the log
      of P(the user picks the item) x P(they like it).

    `tune_rerank_weight` picks the weight on the eval window.

    `top_scores` keeps, per user of the calls so far, the scores of that user's first
    `SCORED_ITEMS` items: the distribution the served pair's scores are checked against online.
    """

    def __init__(
        self,
        retrieval: TwoTowerRecommender,
        ranker_dir: str,
        data: OfflineData,
        as_of: int,
        depth: int = 100,
        score: str = DEFAULT_RERANK_SCORE,
        temperature: float | None = None,
        weight: float = DEFAULT_RERANK_WEIGHT,
    ):
        self._retrieval, self._data, self._as_of = retrieval, data, as_of
        self._weight = weight
        self.top_scores: dict[str, np.ndarray] = {}
        self._ranker = tf.saved_model.load(ranker_dir).signatures["ranker"]
        self._depth, self._score = depth, score
        self._temperature = temperature or TwoTowerConfig().temperature
        # per catalog item, in the catalog's order
        self._popularity = item_popularity_features(data, list(data.catalog.index), as_of)

    def __call__(self, user_ids, k, exclude):
        candidates, retrieval_scores = self._retrieval.scored(user_ids, max(k, self._depth), exclude)
        query = query_features(self._data, user_ids, self._as_of)
        outputs = _call_pairs(self._ranker, self._data, query, candidates, self._popularity)
        if self._score in COMBINED_SCORES:
            # The retrieval softmax's log-probability of picking the item (dot product / temperature,
            # up to a per-user constant) plus the DCN's view.
            if self._score == RETRIEVAL_PLUS_LIKED:
                ranker = np.log(np.clip(outputs["liked_probability"], 1e-7, 1.0))
            else:
                ranker = outputs["interaction_score"]
            scores = np.concatenate(retrieval_scores) / self._temperature + self._weight * ranker
        else:
            scores = outputs[self._score]
        out, start = [], 0
        for user, cands in zip(user_ids, candidates):
            s = scores[start : start + len(cands)]
            start += len(cands)
            order = np.argsort(-s, kind="stable")[:k]
            out.append([cands[j] for j in order])
            self.top_scores[user] = s[order[:SCORED_ITEMS]]
        return out


def tune_rerank_weight(
    data: OfflineData,
    two_tower_dir: str,
    ranker_dir: str,
    score: str = DEFAULT_RERANK_SCORE,
    grid: Sequence[float] = RERANK_WEIGHT_GRID,
    rerank_depth: int = 100,
    metric: str = "ndcg",
    k: int = 10,
) -> tuple[float, dict[float, float]]:
    """The re-ranking weight with the best `metric@k` on the EVAL window (never the test window)."""
    validation = data.validation_view()
    eval_set = validation.eval_set()
    as_of = int(np.ceil(eval_set.cutoff))
    retrieval = TwoTowerRecommender(two_tower_dir, validation, as_of)
    scores = {}
    for weight in grid:
        reranked = RerankedRecommender(
            retrieval, ranker_dir, validation, as_of, depth=rerank_depth, score=score, weight=weight
        )
        scores[weight] = evaluate(reranked, eval_set, (k,)).metric(metric, k)
    return max(scores, key=lambda w: (scores[w], -w)), scores


# --------------------------------------------------------------------------- recency-aware blend

# The blend's report names, and its popularity weight when none is chosen per run (the pipeline's
# ModelEvaluator, with DEFAULT_RERANK_WEIGHT): the best mean eval-window NDCG@10 over the three
# rolling-origin folds at re-ranking weight 0.25 (train-only fits; benchmarks/results/model_quality.md).
BLENDED = "two_tower+dcn+pop"
BLENDED_RETRIEVAL = "two_tower+pop"
DEFAULT_POPULARITY_WEIGHT = 4.0
# Grids the blend's weights are chosen from on the eval window (`tune_blend`).
POPULARITY_WEIGHT_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 10.0)
BLEND_RERANK_WEIGHT_GRID = (0.0, 0.25, 0.5, 1.0, 2.0)


def recent_log_popularity(data: OfflineData, item_ids: Sequence[str], as_of: int) -> np.ndarray:
    """log(1 + the item's interactions in the RECENT_WINDOW_DAYS before `as_of`), per item: the
    point-in-time ITEM_RECENT_COUNT the ranker and the feature store already compute."""
    counts = item_popularity_features(data, item_ids, as_of)[F.ITEM_RECENT_COUNT]
    return np.log1p(counts.astype(np.float64))


class BlendedRecommender:
    """Retrieval, DCN re-ranking and the item's recent popularity in one score:

        score(u, i, t) = dot(q_u, e_i) / temperature + rerank_weight x interaction_score(u, i, t)
                         + popularity_weight x log(1 + recent_count(i, t))

    over the candidates = the retrieval's top `depth` UNION the `depth` most recently popular
    items (by recent count, ties by item id, then the items without recent events by all-time count:
    the feature store's `popular_items` order), both without the user's seen items. The two-tower
    learns with log-Q correction, i.e. a score with the item's popularity taken out; the third
    term puts back a time-aware popularity prior (weight 1 with all-time counts would undo log-Q
    exactly). Without a ranker the second term is absent. A service reproduces this with its ANN
    top-`depth`, a top-`depth` list by recent count and the ITEM_RECENT_COUNT it already reads for
    the ranker.

    The candidates' component scores are computed once per (users, k) request and cached, so
    `with_weights` re-scores the same candidates with other weights cheaply (for `tune_blend`).
    """

    def __init__(
        self,
        retrieval: TwoTowerRecommender,
        ranker_dir: str | None,
        data: OfflineData,
        as_of: int,
        depth: int = 100,
        rerank_weight: float = DEFAULT_RERANK_WEIGHT,
        popularity_weight: float = 0.0,
        temperature: float | None = None,
        _shared: dict | None = None,
    ):
        self._retrieval, self._data, self._as_of, self._depth = retrieval, data, as_of, depth
        self.rerank_weight, self.popularity_weight = float(rerank_weight), float(popularity_weight)
        self._temperature = temperature or TwoTowerConfig().temperature
        self._ranker_dir = ranker_dir
        self._shared = _shared if _shared is not None else {"cache": {}}
        # each user's first SCORED_ITEMS items' scores without the popularity term (see __call__)
        self.top_scores: dict[str, np.ndarray] = {}
        if "log_pop" not in self._shared:
            catalog = list(data.catalog.index)
            popularity = item_popularity_features(data, catalog, as_of)
            self._shared["item_popularity"] = popularity
            self._shared["log_pop"] = dict(zip(catalog, np.log1p(popularity[F.ITEM_RECENT_COUNT].astype(np.float64))))
            recent = np.asarray(popularity[F.ITEM_RECENT_COUNT])
            prior = np.asarray(popularity[F.ITEM_PRIOR_COUNT])
            # Recent count first, ties by item id; items without recent events by all-time count, ties by
            # id: the order the feature store's popular_items gives (recent window, then all time), so a
            # service takes the same candidates.
            by_id = np.argsort(np.argsort(np.array(catalog, dtype=str), kind="stable"), kind="stable")
            order = np.lexsort((by_id, -np.where(recent == 0, prior, 0), -recent))
            self._shared["by_popularity"] = [catalog[j] for j in order]
            self._shared["ranker"] = tf.saved_model.load(ranker_dir).signatures["ranker"] if ranker_dir else None

    def with_weights(self, rerank_weight: float, popularity_weight: float) -> BlendedRecommender:
        return BlendedRecommender(
            self._retrieval,
            self._ranker_dir,
            self._data,
            self._as_of,
            self._depth,
            rerank_weight,
            popularity_weight,
            self._temperature,
            _shared=self._shared,
        )

    def popular(self, k: int, seen) -> list[str]:
        """The `k` most recently popular items not in `seen` (the blend's popular candidates)."""
        out = []
        for item in self._shared["by_popularity"]:
            if item not in seen:
                out.append(item)
                if len(out) == k:
                    break
        return out

    def base_candidates(self, user_ids, k, exclude) -> list[list[str]]:
        """Per user: retrieval's top max(k, depth), then the most recently popular unseen items not among them."""
        depth = max(k, self._depth)
        retrieved, _ = self._retrieval.scored(user_ids, depth, exclude)
        candidates = []
        for cands, seen in zip(retrieved, exclude):
            have = set(cands)
            extra = [i for i in self.popular(depth, seen) if i not in have]
            candidates.append(list(cands) + extra)
        return candidates

    def components(self, user_ids, k, exclude) -> list[dict]:
        """Per user: candidate ids and their retrieval logit, interaction score and log popularity."""
        key = (tuple(user_ids), int(k))
        cache = self._shared["cache"]
        if key in cache:
            return cache[key]
        out = self.score_candidates(user_ids, self.base_candidates(user_ids, k, exclude))
        cache[key] = out
        return out

    def score_candidates(self, user_ids, candidates: Sequence[Sequence[str]]) -> list[dict]:
        """Per user: the given candidate ids ("items") with their retrieval logit ("logit"), log(1 +
        recent count) ("log_pop") and, with a ranker, DCN interaction score ("interaction")."""
        queries = self._retrieval.query_embeddings(user_ids)
        index = self._retrieval._index
        out = []
        for u, cands in enumerate(candidates):
            rows = [index[i] for i in cands]
            out.append(
                {
                    "items": cands,
                    "logit": self._retrieval.item_embeddings[rows] @ queries[u] / self._temperature,
                    "log_pop": np.array([self._shared["log_pop"][i] for i in cands]),
                }
            )
        ranker = self._shared["ranker"]
        if ranker is not None:
            query = query_features(self._data, user_ids, self._as_of)
            popularity = {name: np.asarray(values) for name, values in self._shared["item_popularity"].items()}
            interaction = _call_pairs(ranker, self._data, query, candidates, popularity)["interaction_score"].reshape(
                -1
            )
            start = 0
            for entry in out:
                entry["interaction"] = interaction[start : start + len(entry["items"])]
                start += len(entry["items"])
        return out

    def __call__(self, user_ids, k, exclude):
        lists = []
        for user, entry in zip(user_ids, self.components(user_ids, k, exclude)):
            score = entry["logit"] + self.popularity_weight * entry["log_pop"]
            if "interaction" in entry:
                score = score + self.rerank_weight * entry["interaction"]
            order = np.argsort(-score, kind="stable")[:k]
            lists.append([entry["items"][j] for j in order])
            # the models' part of the first items' scores (the popularity term is data, the same for any
            # model version): what the canary's drift check compares, online as offline
            models_part = score - self.popularity_weight * entry["log_pop"]
            self.top_scores[user] = models_part[order[:SCORED_ITEMS]]
        return lists


def tune_blend(
    data: OfflineData,
    two_tower_dirs: Sequence[str],
    ranker_dirs: Sequence[str | None],
    popularity_grid: Sequence[float] = POPULARITY_WEIGHT_GRID,
    rerank_grid: Sequence[float] = BLEND_RERANK_WEIGHT_GRID,
    depth: int = 100,
    metric: str = "ndcg",
    k: int = 10,
    kmax: int = 100,
) -> tuple[tuple[float, float], dict[str, float]]:
    """(rerank_weight, popularity_weight) with the best mean `metric@k` on the EVAL window.

    `data` must be the view whose "test" split is the eval window (`OfflineData.validation_view`)
    and the models fit on the train split only (one per seed; the score is their mean). Ties go
    to the smaller popularity weight, then the smaller re-ranking weight. Without rankers the
    re-ranking weight is 0.
    """
    eval_set = data.eval_set()
    as_of = int(np.ceil(eval_set.cutoff))
    has_ranker = all(r is not None for r in ranker_dirs)
    rerank_grid = tuple(rerank_grid) if has_ranker else (0.0,)
    totals: dict[tuple[float, float], list[float]] = {}
    for two_tower_dir, ranker_dir in zip(two_tower_dirs, ranker_dirs):
        retrieval = TwoTowerRecommender(two_tower_dir, data, as_of)
        base = BlendedRecommender(retrieval, ranker_dir if has_ranker else None, data, as_of, depth=depth)
        for w in rerank_grid:
            for beta in popularity_grid:
                report = evaluate(base.with_weights(w, beta), eval_set, (k, kmax))
                totals.setdefault((w, beta), []).append(report.metric(metric, k))
    means = {key: float(np.mean(v)) for key, v in totals.items()}
    best = max(means, key=lambda key: (round(means[key], 12), -key[1], -key[0]))
    return best, {f"w={w:g},pop={b:g}": s for (w, b), s in means.items()}


# factory(data, retrieval, ranker_dir, as_of) -> recommend(user_ids, k, exclude): the full-pipeline hook
FullPipelineFactory = Callable[["OfflineData", TwoTowerRecommender, str, int], Recommend]


def evaluate_models(
    data: OfflineData,
    two_tower_dir: str | None,
    ranker_dir: str | None,
    ks: Sequence[int] = DEFAULT_KS,
    rerank_depth: int = 100,
    rerank_scores: Sequence[str] = (DEFAULT_RERANK_SCORE,),
    weight: float = DEFAULT_RERANK_WEIGHT,
    baselines: Mapping[str, Recommend] | None = None,
    full_pipeline: FullPipelineFactory | None = None,
    slicings: Mapping[str, Mapping[str, str]] | None = None,
    blend: tuple[float, float] | None = None,
) -> dict[str, EvalReport]:
    """The one evaluation path (ModelEvaluator, benchmarks, notebooks): every recommender scored on
    the test split by `protocol.evaluate`, keeping per-user metric vectors.

    Reports, in order: each of `baselines` (name -> recommender; default: all-time popularity,
    `{}` for none), "two_tower" (exact retrieval), "two_tower+dcn" (the top `rerank_depth` re-ranked
    by the first of `rerank_scores`; "+dcn:<score>" for the others), "full_pipeline" (with a
    factory) -- those whose models are given. `slicings` adds user slices (`user_slicings`).
    `blend` = (rerank_weight, popularity_weight) adds "two_tower+dcn+pop" ("two_tower+pop" without a
    ranker): `BlendedRecommender` with those weights. The re-ranked reports carry `top_scores`: each
    test user's first `SCORED_ITEMS` scores (the served pair's score distribution).
    """
    eval_set = data.eval_set()
    as_of = int(np.ceil(eval_set.cutoff))
    genres = {item: g for item, g in data.catalog[F.ITEM_GENRES].items()}

    def run(recommend) -> EvalReport:
        report = evaluate_sliced(recommend, eval_set, ks, item_genres=genres, slicings=slicings)
        release_freed_memory()  # the lists, their encoding, the ranker's inputs
        return report

    if baselines is None:
        baselines = {"popularity": PopularityRecommender(data.frame[data.frame["split"] != "test"], eval_set.catalog)}
    reports = {name: run(recommend) for name, recommend in baselines.items()}
    if two_tower_dir:
        retrieval = TwoTowerRecommender(two_tower_dir, data, as_of)
        reports["two_tower"] = run(retrieval)
        if ranker_dir:
            for i, score in enumerate(rerank_scores):
                reranked = RerankedRecommender(
                    retrieval, ranker_dir, data, as_of, depth=rerank_depth, score=score, weight=weight
                )
                report = run(reranked)
                report.top_scores = np.concatenate([reranked.top_scores[u] for u in eval_set.user_ids])
                reports["two_tower+dcn" if i == 0 else f"+dcn:{score}"] = report
        if blend is not None:
            blended = BlendedRecommender(
                retrieval,
                ranker_dir,
                data,
                as_of,
                depth=rerank_depth,
                rerank_weight=blend[0],
                popularity_weight=blend[1],
            )
            report = run(blended)
            report.top_scores = np.concatenate([blended.top_scores[u] for u in eval_set.user_ids])
            reports[BLENDED if ranker_dir else BLENDED_RETRIEVAL] = report
        if full_pipeline is not None:
            reports["full_pipeline"] = run(full_pipeline(data, retrieval, ranker_dir, as_of))
    return reports


HEADLINE_METRICS = ("recall@100", "ndcg@10", "recall@10", "hit_rate@10")


def comparison_table(reports: Mapping[str, EvalReport], metrics: Sequence[str] = HEADLINE_METRICS) -> str:
    """One line per (model, slice) with the headline metrics."""
    header = f"{'model':<16}{'slice':<7}{'users':>6}" + "".join(f"{m:>13}" for m in metrics)
    lines = [header]
    for name, report in reports.items():
        as_dict = report.to_dict()
        for slice_name in ("all", "warm", "cold"):
            cells = []
            for metric in metrics:
                base, k = metric.split("@")
                value = report.metric(base, int(k), slice_name)
                cells.append(f"{value:>13.3f}")
            n = as_dict.get("n_users", {}).get(slice_name, "")
            lines.append(f"{name:<16}{slice_name:<7}{n!s:>6}" + "".join(cells))
    return "\n".join(lines)


# --------------------------------------------------------------------------- user slices (ModelEvaluator)


class RecordedRecommender:
    """Wraps a recommender and replays its lists for a repeated (users, k) request.

    `evaluate` takes one slice label per user, so scoring several slicings (gender, age) means
    several `evaluate` calls; this makes the model run only once.
    """

    def __init__(self, recommend):
        self._recommend = recommend
        self._cache: dict = {}

    def __call__(self, user_ids, k, exclude):
        key = (tuple(user_ids), int(k))
        if key not in self._cache:
            self._cache[key] = [list(r) for r in self._recommend(user_ids, k, exclude)]
        return self._cache[key]


def evaluate_sliced(
    recommend,
    eval_set: EvalSet,
    ks: Sequence[int] = DEFAULT_KS,
    item_genres: Mapping | None = None,
    slicings: Mapping[str, Mapping[str, str]] | None = None,
) -> EvalReport:
    """`evaluate` with several user slicings at once: one report holding all, warm, cold and every
    slice label of every slicing (labels must be unique across slicings, e.g. "gender=F")."""
    groups = list((slicings or {}).values()) or [None]
    report = evaluate(recommend, eval_set, ks, item_genres=item_genres, slices=groups[0])
    for slices in groups[1:]:  # the same lists: averaged from the report's per-user values
        report.add_slices(slices)
    return report
