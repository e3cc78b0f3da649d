"""Non-neural baselines the models must beat, with their settings chosen the way the models' are.

    popularity          all-time counts (train+eval), ties by item id descending: the protocol's
                        reference (protocol.PopularityRecommender)
    recent_popularity   counts over the last `window_days` before the cut-off; ties by all-time count
    segment_popularity  counts among users of the same age bucket x gender; ties by all-time count
    newcomer_popularity counts over the last `window_days` of only the interactions users made while
                        among their first `first_n` (what people new to the catalog pick: in MovieLens
                        the sign-up flow shows popular titles); window = recent_popularity's chosen one;
                        ties by all-time count
    item_knn            cosine similarity of items over the user co-occurrence matrix, each item keeping
                        its `neighbors` most similar items (0 = all); a user's score for an item is the
                        sum of its similarities to the user's items
    ease                EASE (Steck 2019, "Embarrassingly Shallow Autoencoders"): B = I - P diagMat(1 /
                        diag(P)), P = (X^T X + lambda I)^-1; a user's scores are x_u B

item_knn and ease rank items the user's history says nothing about (and every item, for a cold
user) by recent popularity with its chosen window, so cold users get the strongest popularity.

Settings rule (the models follow the same one): every setting is chosen on the EVAL window with a
fit on train only (`select`), scoring each grid value by the protocol's own `evaluate` on the eval
window; the chosen setting is then refit on train+eval, everything before the test cut-off, and
that is what gets scored on the test window. Nothing here looks at the test window.

A baseline is a callable `recommend(user_ids, k, exclude) -> lists`, like every recommender the
protocol scores. No TensorFlow.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from towerflow.components.evaluation.metrics import flatten_lists
from towerflow.components.evaluation.protocol import EvalSet, PopularityRecommender, evaluate, string_codes
from towerflow.components.evaluation.slices import demographic_segments
from towerflow.models import features as F

POPULARITY = "popularity"
RECENT_POPULARITY = "recent_popularity"
SEGMENT_POPULARITY = "segment_popularity"
NEWCOMER_POPULARITY = "newcomer_popularity"
ITEM_KNN = "item_knn"
EASE = "ease"
BASELINES = (POPULARITY, RECENT_POPULARITY, SEGMENT_POPULARITY, NEWCOMER_POPULARITY, ITEM_KNN, EASE)
SECONDS_PER_DAY = 86_400
_CHUNK_USERS = 512


@dataclass(frozen=True)
class BaselineGrids:
    """The values each setting is chosen from on the eval window, and the metric that chooses."""

    recent_days: tuple[float, ...] = (1, 3, 7, 14, 30, 60, 90)
    newcomer_first: tuple[int, ...] = (5, 10, 20, 50)
    knn_neighbors: tuple[int, ...] = (10, 25, 50, 100, 200, 0)
    ease_lambdas: tuple[float, ...] = (10, 50, 100, 250, 500, 1000, 2500)
    metric: str = "ndcg@10"
    # item_knn and ease hold dense items x items matrices (EASE inverts one): above this many catalog
    # items they are left out (with a warning) rather than exhaust memory
    max_item_matrix: int = 20_000

    def __post_init__(self):
        name, sep, k = self.metric.partition("@")
        if not sep or not k.isdigit() or name not in ("recall", "hit_rate", "ndcg", "map"):
            raise ValueError(f"metric must look like 'ndcg@10', got {self.metric!r}")
        if not self.recent_days or any(not d > 0 for d in self.recent_days):
            raise ValueError(f"recent_days must be positive, got {self.recent_days}")
        if not self.newcomer_first or any(n < 1 for n in self.newcomer_first):
            raise ValueError(f"newcomer_first must be >= 1, got {self.newcomer_first}")
        if not self.knn_neighbors or any(n < 0 for n in self.knn_neighbors):
            raise ValueError(f"knn_neighbors must be >= 0 (0 = all), got {self.knn_neighbors}")
        if not self.ease_lambdas or any(not lam > 0 for lam in self.ease_lambdas):
            raise ValueError(f"ease_lambdas must be positive, got {self.ease_lambdas}")

    @property
    def metric_name_k(self) -> tuple[str, int]:
        name, _, k = self.metric.partition("@")
        return name, int(k)


@dataclass(frozen=True)
class FitInput:
    """What a baseline may learn from: interactions strictly before `as_of`, user attributes, catalog."""

    frame: pd.DataFrame  # user_id, item_id, timestamp (no rows at or after as_of)
    users: pd.DataFrame  # index user_id; USER_AGE, USER_GENDER
    catalog: tuple[str, ...]
    as_of: float

    def __post_init__(self):
        if len(self.frame) and float(self.frame[F.TIMESTAMP].max()) >= self.as_of:
            raise ValueError(f"a baseline fit must only see interactions before its cut-off {self.as_of}")

    # What every grid value of a baseline shares is computed once per fit (`select` scores up to 7
    # settings on one train-only fit): the reference order, the interaction matrix, the Gram matrix.
    @cached_property
    def popularity_rank(self) -> np.ndarray:
        """Each catalog item's position in the all-time popularity order (the reference's tie-break)."""
        ranking = PopularityRecommender(self.frame, catalog=self.catalog).ranking
        position = {item: r for r, item in enumerate(ranking)}
        return np.array([position[item] for item in self.catalog], dtype=np.int64)

    @cached_property
    def interactions(self) -> tuple[dict[str, int], np.ndarray]:
        """user -> row, and the binary users x catalog matrix of the fit's interactions."""
        return _interaction_matrix(self)

    @cached_property
    def ordinal(self) -> np.ndarray:
        """Per row of `frame`, its position among its user's rows by time (ties by the frame's order),
        0 first: one stable sort of integer user codes, shared by every first-n setting."""
        users = string_codes(self.frame[F.USER_ID])[0]
        order = np.lexsort((self.frame[F.TIMESTAMP].to_numpy(), users))  # stable: ties keep the frame's order
        counts = np.bincount(users, minlength=int(users.max(initial=-1)) + 1)
        position = np.arange(len(order), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        ordinal = np.empty(len(order), dtype=np.int64)
        ordinal[order] = position
        return ordinal

    @cached_property
    def cooccurrence(self) -> np.ndarray:
        """X^T X of the binary interaction matrix (float64; integer counts, exact)."""
        matrix = self.interactions[1]
        return (matrix.T @ matrix).astype(np.float64)


# --------------------------------------------------------------------------- ranking


class ScoredRecommender:
    """Ranks the catalog by per-user scores (higher first), equal scores by `tie_rank` (lower first)."""

    def __init__(self, catalog: Sequence[str], tie_rank: np.ndarray):
        self.catalog = tuple(catalog)
        self._index = {item: j for j, item in enumerate(self.catalog)}
        self._index_keys = pd.Index(list(self._index), dtype=object)  # unique, in the dict's order
        self._index_values = np.fromiter(self._index.values(), dtype=np.int64, count=len(self._index))
        self._tie_rank = np.asarray(tie_rank, dtype=np.int64)

    def scores(self, user_ids: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def _order(self, scores: np.ndarray) -> np.ndarray:
        """The catalog columns ranked by one row of scores (higher first, then tie rank), -inf left out."""
        scores = np.asarray(scores, dtype=np.float64)
        order = np.lexsort((self._tie_rank, -scores))
        return order[scores[order] != -np.inf]

    def __call__(self, user_ids, k, exclude=None):
        exclude = exclude if exclude is not None else [()] * len(user_ids)
        out: list[list[str]] = []
        items = np.array(self.catalog, dtype=object)
        shared_order = None
        for start in range(0, len(user_ids), _CHUNK_USERS):
            users = list(user_ids[start : start + _CHUNK_USERS])
            raw = np.asarray(self.scores(users))
            # every seen item of the chunk's users at once (the catalog position of each, if any)
            flat, rows, _ = flatten_lists(exclude[start : start + _CHUNK_USERS])
            found = self._index_keys.get_indexer(flat) if len(flat) else np.zeros(0, dtype=np.int64)
            rows, cols = rows[found >= 0], self._index_values[found[found >= 0]]
            if raw.ndim == 2 and len(raw) > 1 and raw.strides[0] == 0 and not np.isnan(raw[0]).any():
                # one list for everyone (recent popularity): one sort, then each user's first k unseen
                if shared_order is None or not np.array_equal(shared_order[0], raw[0]):
                    shared_order = (raw[0].copy(), self._order(raw[0]))
                tops = _first_k_unseen(shared_order[1], raw.shape, rows, cols, k)
                out.extend(items[top].tolist() for top in tops)
                continue
            scores = np.array(raw, dtype=np.float64, copy=True)
            scores[rows, cols] = -np.inf
            for row, top in enumerate(top_k(scores, self._tie_rank, k)):
                out.append(items[top[scores[row, top] != -np.inf]].tolist())
        return out


def _ranked_by_groups(recommender: ScoredRecommender, rows: Mapping, group_of: list, k, exclude) -> list[list[str]]:
    """`recommender(user_ids, k, exclude)` when user i's scores are `rows[group_of[i]]` (no nan): the
    users of each group share one sorted order, and each gets its first k unseen items of it."""
    items = np.array(recommender.catalog, dtype=object)
    members: dict = {}
    for i, group in enumerate(group_of):
        members.setdefault(group, []).append(i)
    out: list = [None] * len(group_of)
    for group, users in members.items():
        order = recommender._order(rows[group])
        for start in range(0, len(users), _CHUNK_USERS):
            chunk = users[start : start + _CHUNK_USERS]
            flat, seen_rows, _ = flatten_lists([exclude[i] for i in chunk])
            found = recommender._index_keys.get_indexer(flat) if len(flat) else np.zeros(0, dtype=np.int64)
            seen_rows, seen_cols = seen_rows[found >= 0], recommender._index_values[found[found >= 0]]
            tops = _first_k_unseen(order, (len(chunk), len(recommender.catalog)), seen_rows, seen_cols, k)
            for i, top in zip(chunk, tops):
                out[i] = items[top].tolist()
    return out


def _first_k_unseen(order: np.ndarray, shape: tuple, rows: np.ndarray, cols: np.ndarray, k: int) -> list[np.ndarray]:
    """Per row, the first `k` entries of `order` (catalog columns, best first) that are not among the
    row's seen columns (`rows`, `cols` pairs) -- what ranking each row with its seen items at -inf
    keeps when every row shares the same scores. Only the first k + (most seen by one row) entries of
    `order` can be among them, so the work is rows x that, not rows x catalog."""
    n_rows, n_cols = shape
    k = min(int(k), len(order))
    position = np.full(n_cols, len(order), dtype=np.int64)  # -inf columns (left out of `order`): never reached
    position[order] = np.arange(len(order))
    seen_at = position[cols] if len(cols) else np.zeros(0, dtype=np.int64)
    most_seen = int(np.bincount(rows, minlength=n_rows).max(initial=0)) if len(rows) else 0
    width = min(len(order), k + most_seen)
    blocked = np.zeros((n_rows, width), dtype=bool)
    inside = seen_at < width
    blocked[rows[inside], seen_at[inside]] = True
    free = ~blocked
    r, c = np.nonzero(free & (np.cumsum(free, axis=1) <= k))
    bounds = np.searchsorted(r, np.arange(n_rows + 1))
    return [order[c[a:b]] for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())]


def top_k(scores: np.ndarray, tie_rank: np.ndarray, k: int) -> list[np.ndarray]:
    """Per row, the columns of the `k` highest scores, best first, equal scores by `tie_rank` (lower
    first, then column): the first k of `np.lexsort((tie_rank, -scores), axis=1)`, without sorting the
    whole row. Only the candidates scoring at least the row's k-th largest score can be among its
    first k, so those alone are sorted (one lexsort over every row's candidates)."""
    n_rows, n_cols = scores.shape
    k = min(int(k), n_cols)
    ties = np.broadcast_to(np.asarray(tie_rank, dtype=np.int64), scores.shape)
    if k == 0 or n_rows == 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(n_rows)]
    if k == n_cols or np.isnan(scores).any():  # nothing to cut, or no total order to cut by
        return list(np.lexsort((ties, -scores), axis=1)[:, :k])
    kth = np.partition(scores, n_cols - k, axis=1)[:, n_cols - k]
    rows, cols = np.nonzero(scores >= kth[:, None])
    order = np.lexsort((ties[rows, cols], -scores[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    starts = np.searchsorted(rows, np.arange(n_rows))
    return [cols[a : a + k] for a in starts.tolist()]


def _counts(frame: pd.DataFrame, catalog: Sequence[str]) -> np.ndarray:
    return frame[F.ITEM_ID].astype(str).value_counts().reindex(list(catalog), fill_value=0).to_numpy(np.float64)


def _popularity_rank(fit: FitInput) -> np.ndarray:
    """Each catalog item's position in the all-time popularity order (the reference's tie-break)."""
    return fit.popularity_rank


def _rank_of(scores: np.ndarray, tie_rank: np.ndarray) -> np.ndarray:
    """The position of each item when ordered by `scores` (desc) then `tie_rank` (asc)."""
    order = np.lexsort((tie_rank, -scores))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


class RecentPopularity(ScoredRecommender):
    """Interactions in [as_of - window_days, as_of), the same list for everyone."""

    def __init__(self, fit: FitInput, window_days: float):
        super().__init__(fit.catalog, _popularity_rank(fit))
        self.window_days = float(window_days)
        recent = (fit.frame[F.TIMESTAMP] >= fit.as_of - self.window_days * SECONDS_PER_DAY).to_numpy()
        self._scores = _counts(fit.frame.loc[recent, [F.ITEM_ID]], fit.catalog)
        self.rank = _rank_of(self._scores, self._tie_rank)  # the fallback order of item_knn and ease

    def scores(self, user_ids):
        return np.broadcast_to(self._scores, (len(user_ids), len(self._scores)))


class NewcomerPopularity(RecentPopularity):
    """Interactions in [as_of - window_days, as_of) that their user made as one of their first `first_n`
    (ordinal by time among the user's interactions before as_of, ties by the frame's order); the same list
    for everyone."""

    def __init__(self, fit: FitInput, window_days: float, first_n: int):
        super().__init__(fit, window_days)
        self.first_n = int(first_n)
        recent = (fit.ordinal < self.first_n) & (
            fit.frame[F.TIMESTAMP].to_numpy() >= fit.as_of - self.window_days * SECONDS_PER_DAY
        )
        self._scores = _counts(fit.frame.loc[recent, [F.ITEM_ID]], fit.catalog)
        self.rank = _rank_of(self._scores, self._tie_rank)


class SegmentPopularity(ScoredRecommender):
    """Counts among users of the same age bucket x gender; unknown users get all-time popularity."""

    def __init__(self, fit: FitInput):
        super().__init__(fit.catalog, _popularity_rank(fit))
        self._segment = demographic_segments(fit.users) if len(fit.users) else {}
        users = fit.frame[F.USER_ID].astype(str).map(self._segment)
        self._by_segment = {seg: _counts(rows, fit.catalog) for seg, rows in fit.frame.groupby(users.to_numpy())}
        self._zeros = np.zeros(len(fit.catalog))

    def scores(self, user_ids):
        return np.stack([self._by_segment.get(self._segment.get(str(u)), self._zeros) for u in user_ids])

    def __call__(self, user_ids, k, exclude=None):
        """One sorted order per segment, each user's first k unseen items of theirs (the same lists as
        ranking each user's row, without sorting the catalog per user)."""
        exclude = exclude if exclude is not None else [()] * len(user_ids)
        groups = [self._segment.get(str(u)) for u in user_ids]
        rows = {group: self._by_segment.get(group, self._zeros) for group in set(groups)}
        if len(exclude) != len(user_ids) or any(np.isnan(row).any() for row in rows.values()):
            return super().__call__(user_ids, k, exclude)
        return _ranked_by_groups(self, rows, groups, k, exclude)


def _interaction_matrix(fit: FitInput) -> tuple[dict[str, int], np.ndarray]:
    """user -> row, and the binary users x catalog matrix of the fit's interactions."""
    pairs = fit.frame[[F.USER_ID, F.ITEM_ID]].astype(str).drop_duplicates()
    index = {item: j for j, item in enumerate(fit.catalog)}
    pairs = pairs[pairs[F.ITEM_ID].isin(index)]
    users = {u: r for r, u in enumerate(pd.unique(pairs[F.USER_ID]))}
    matrix = np.zeros((len(users), len(fit.catalog)), dtype=np.float32)  # counts < 2^24 stay exact
    matrix[pairs[F.USER_ID].map(users).to_numpy(), pairs[F.ITEM_ID].map(index).to_numpy()] = 1.0
    return users, matrix


class _HistoryRecommender(ScoredRecommender):
    """Scores x_u W for an item x item matrix W; ties (and cold users) go by the fallback's order."""

    def __init__(self, fit: FitInput, fallback: RecentPopularity):
        super().__init__(fit.catalog, fallback.rank)
        self._users, self._matrix = fit.interactions
        self.weights = np.zeros((len(fit.catalog), len(fit.catalog)))

    def scores(self, user_ids):
        rows = np.zeros((len(user_ids), len(self.catalog)), dtype=np.float32)
        known = [(i, self._users[str(u)]) for i, u in enumerate(user_ids) if str(u) in self._users]
        if known:
            rows[[i for i, _ in known]] = self._matrix[[r for _, r in known]]
        return rows @ self.weights


class ItemKNN(_HistoryRecommender):
    """Cosine similarity over co-occurrence, each item keeping its `neighbors` nearest (0 = all)."""

    def __init__(self, fit: FitInput, neighbors: int, fallback: RecentPopularity):
        super().__init__(fit, fallback)
        self.neighbors = int(neighbors)
        cooc = fit.cooccurrence
        norms = np.sqrt(np.diag(cooc))
        with np.errstate(invalid="ignore", divide="ignore"):
            sim = np.where(np.outer(norms, norms) > 0, cooc / np.outer(norms, norms), 0.0)
        np.fill_diagonal(sim, 0.0)
        if 0 < self.neighbors < sim.shape[0]:
            # keep, for each target item (column), its `neighbors` most similar source items
            cutoff = -np.partition(-sim, self.neighbors - 1, axis=0)[self.neighbors - 1]
            sim = np.where(sim >= cutoff[None, :], sim, 0.0)
        self.weights = sim.astype(np.float32)


class Ease(_HistoryRecommender):
    """EASE: the closed-form item x item regression with a zero diagonal, L2 weight `lam`."""

    def __init__(self, fit: FitInput, lam: float, fallback: RecentPopularity):
        super().__init__(fit, fallback)
        self.lam = float(lam)
        gram = fit.cooccurrence.copy()
        gram[np.diag_indices_from(gram)] += self.lam
        precision = np.linalg.inv(gram)
        weights = -precision / np.diag(precision)[None, :]
        np.fill_diagonal(weights, 0.0)
        self.weights = weights


# --------------------------------------------------------------------------- choosing and fitting


def build(name: str, fit: FitInput, settings: Mapping[str, float]):
    """The baseline `name` with `settings` (as `select` records them), fit on `fit`."""
    if name == POPULARITY:
        return PopularityRecommender(fit.frame, catalog=fit.catalog)
    if name == SEGMENT_POPULARITY:
        return SegmentPopularity(fit)
    if name == RECENT_POPULARITY:
        return RecentPopularity(fit, settings["window_days"])
    if name == NEWCOMER_POPULARITY:
        return NewcomerPopularity(fit, settings["window_days"], int(settings["first_n"]))
    fallback = RecentPopularity(fit, settings["fallback_window_days"])
    if name == ITEM_KNN:
        return ItemKNN(fit, int(settings["neighbors"]), fallback)
    if name == EASE:
        return Ease(fit, settings["lambda"], fallback)
    raise ValueError(f"unknown baseline {name!r}; choose from {BASELINES}")


@dataclass
class FittedBaseline:
    """A baseline refit on train+eval with the settings the eval window chose."""

    name: str
    settings: dict[str, float]
    selection: dict[str, float]  # grid value -> eval-window metric (empty: nothing to choose)
    recommend: object = field(repr=False)

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v:g}" for k, v in self.settings.items())
        return f"{self.name}({shown})" if shown else self.name


def validation_frame(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The protocol one window earlier: test rows dropped, the eval window labelled "test"; only
    `columns` and the split when given (one copy of the rows kept, of the columns kept)."""
    names = list(frame.columns) if columns is None else [*columns, "split"]
    out = frame.loc[(frame["split"] != "test").to_numpy(), names]
    out.loc[out["split"] == "eval", "split"] = "test"
    return out


def _fit_input(frame: pd.DataFrame, users: pd.DataFrame, catalog: tuple[str, ...], splits) -> FitInput:
    inside = frame["split"].isin(splits)
    cutoff = frame.loc[~inside, F.TIMESTAMP].min()
    as_of = float(cutoff) if pd.notna(cutoff) else float(frame[F.TIMESTAMP].max()) + 1.0
    # the columns first: one copy of three columns, not of every column and then three
    return FitInput(frame.loc[inside, [F.USER_ID, F.ITEM_ID, F.TIMESTAMP]], users, catalog, as_of)


def _choose(grid, make, eval_set: EvalSet | None, grids: BaselineGrids) -> tuple[object, dict[str, float]]:
    """The grid value with the best eval-window metric (the first on a tie); the first without an eval set."""
    if eval_set is None or len(grid) == 1:
        return grid[0], {}
    name, k = grids.metric_name_k
    scored = {value: evaluate(make(value), eval_set, (k,)).metric(name, k) for value in grid}
    best = max(grid, key=lambda v: (np.nan_to_num(scored[v], nan=-1.0), -grid.index(v)))
    return best, {f"{v:g}": float(s) for v, s in scored.items()}


def select(
    frame: pd.DataFrame,
    users: pd.DataFrame,
    catalog: Sequence[str],
    names: Sequence[str] = BASELINES,
    grids: BaselineGrids | None = None,
    refit_splits: Sequence[str] = ("train", "eval"),
) -> dict[str, FittedBaseline]:
    """Chooses every baseline's settings on the eval window (train-only fits) and refits on train+eval.

    `frame` holds user_id, item_id, timestamp and split (train / eval / test) columns; test rows are
    never read except for the test cut-off (the earliest test timestamp), the refit's `as_of`.
    `refit_splits=("train",)` keeps the train-only fits (as of the eval cut-off), for scoring the
    chosen settings on the eval window itself.
    """
    grids = grids or BaselineGrids()
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {BASELINES}")
    catalog = tuple(str(i) for i in catalog)
    if len(catalog) > grids.max_item_matrix and {ITEM_KNN, EASE} & set(names):
        warnings.warn(
            f"{len(catalog)} catalog items > max_item_matrix {grids.max_item_matrix}: item_knn and ease left out",
            stacklevel=2,
        )
        names = [n for n in names if n not in (ITEM_KNN, EASE)]
    chosen = _choose_settings(frame, users, catalog, names, grids)
    # the refits only after the eval window's frame, eval set and fit are gone
    final_fit = _fit_input(frame, users, catalog, tuple(refit_splits))
    return {
        name: FittedBaseline(name, chosen[name][0], chosen[name][1], build(name, final_fit, chosen[name][0]))
        for name in names
    }


def _choose_settings(frame, users, catalog, names, grids) -> dict[str, tuple[dict, dict]]:
    """name -> (settings, eval-window metric per grid value): `select`'s choices on train-only fits."""
    val = validation_frame(frame, (F.USER_ID, F.ITEM_ID, F.TIMESTAMP))  # what the fit and the eval set read
    try:
        eval_set = EvalSet.from_frame(val, catalog=catalog)
    except ValueError:  # no eval window (or no user in it): settings fall back to the first grid value
        eval_set = None
    val_fit = _fit_input(val, users, catalog, ("train",))
    del val

    window, window_scores = _choose(list(grids.recent_days), lambda d: RecentPopularity(val_fit, d), eval_set, grids)
    fallback = RecentPopularity(val_fit, window)
    chosen: dict[str, tuple[dict, dict]] = {
        POPULARITY: ({}, {}),
        SEGMENT_POPULARITY: ({}, {}),
        RECENT_POPULARITY: ({"window_days": float(window)}, window_scores),
    }
    if NEWCOMER_POPULARITY in names:
        first, scores = _choose(
            list(grids.newcomer_first), lambda n: NewcomerPopularity(val_fit, window, n), eval_set, grids
        )
        chosen[NEWCOMER_POPULARITY] = ({"window_days": float(window), "first_n": float(first)}, scores)
    if ITEM_KNN in names:
        n, scores = _choose(list(grids.knn_neighbors), lambda n: ItemKNN(val_fit, n, fallback), eval_set, grids)
        chosen[ITEM_KNN] = ({"neighbors": float(n), "fallback_window_days": float(window)}, scores)
    if EASE in names:
        lam, scores = _choose(list(grids.ease_lambdas), lambda v: Ease(val_fit, v, fallback), eval_set, grids)
        chosen[EASE] = ({"lambda": float(lam), "fallback_window_days": float(window)}, scores)
    return chosen


def _items_by_user(frame: pd.DataFrame) -> dict[str, list[str]]:
    """user id -> the distinct items they interacted with (ids as str, in no particular order), from
    one sort of integer (user, item) keys: a Python set per user held ~60 bytes per interaction."""
    users, user_names = string_codes(frame[F.USER_ID])
    items, item_names = string_codes(frame[F.ITEM_ID])
    n_items = max(len(item_names), 1)
    keys = np.unique(users.astype(np.int64) * n_items + items)
    bounds = np.searchsorted(keys // n_items, np.arange(len(user_names) + 1)).tolist()
    names = item_names[keys % n_items].tolist()
    return {user: names[a:b] for user, a, b in zip(user_names.tolist(), bounds[:-1], bounds[1:])}


def serving_lists(
    name: str,
    settings: Mapping[str, float],
    frame: pd.DataFrame,
    users: pd.DataFrame,
    catalog: Sequence[str],
    n: int = 100,
) -> dict:
    """The baseline refit on EVERY interaction in `frame` (as of just after the newest), as ranked lists
    a service can serve without the models: {"default": [...], "users": {user_id: [...]}}.

    "default" is the list for a user the baseline knows nothing about (no history, no attributes);
    each known user's list leaves out the items they interacted with.
    """
    catalog = tuple(str(i) for i in catalog)
    as_of = float(frame[F.TIMESTAMP].max()) + 1.0 if len(frame) else 0.0
    recommend = build(name, FitInput(frame[[F.USER_ID, F.ITEM_ID, F.TIMESTAMP]], users, catalog, as_of), settings)
    n = max(1, min(int(n), len(catalog)))
    seen = _items_by_user(frame)
    user_ids = sorted(set(seen) | {str(u) for u in users.index})
    lists = recommend(user_ids, n, [seen.get(u, ()) for u in user_ids])
    default = recommend(["\x00unknown-user"], n, [set()])[0]
    return {"as_of": as_of, "default": default, "users": dict(zip(user_ids, lists))}
