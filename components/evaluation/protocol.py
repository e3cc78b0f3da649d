"""The offline evaluation protocol of docs/design.md ("Evaluation protocol"), independent of the data source.

Protocol
1. Split ``global_time``: cutoffs ``c0, c1 = np.quantile(timestamps, (0.8, 0.9))`` (numpy's default
   linear interpolation). train: ``t < c0``; eval: ``c0 <= t < c1``; test: ``t >= c1``. A timestamp
   exactly equal to a cutoff goes to the later split.
2. ``EvalSet.from_frame``: one recommendation list per test user (>= 1 test interaction), made with
   the user's state as of the test cutoff.
   - seen = the user's train+eval items. They are the exclusions: candidates are the whole catalog
     minus seen.
   - relevant = the user's test items minus seen. A re-interaction with an already seen item can never
     be recommended (it is not a candidate), so counting it would only cap recall below 1; it is
     removed, and users whose relevant set becomes empty are dropped (counted in
     ``n_dropped_users``). MovieLens-100K has one rating per (user, item), so there this rule
     changes nothing.
   - warm = the user has >= 1 train+eval interaction; cold otherwise (their seen set is empty).
3. ``evaluate``: calls ``recommend(user_ids, K_max, exclude=seen)`` and checks that no excluded item,
   no duplicate and no item outside the catalog comes back (``ExcludedItemError`` / ``ValueError``);
   then Recall / HitRate / NDCG (binary gains) / MAP at each K, averaged over the users of each
   slice (all, warm, cold, plus caller-given slices), and at the largest K catalog coverage, Gini of
   exposure, average popularity (train+eval counts) and, given item genres, intra-list diversity.
   Metric definitions: ``components.evaluation.metrics``.

Reference check (docs/design.md; tests/components/test_protocol_reference.py). On MovieLens-100K,
``PopularityRecommender`` (train+eval counts) gives over 166 test users (90 warm, 76 cold):
Recall@100 0.333, Recall@10 0.068, HitRate@10 0.711, NDCG@10 0.288; warm Recall@100 0.323,
NDCG@10 0.151; cold Recall@100 0.345, NDCG@10 0.450 (unrounded: 0.33307, 0.06825, 0.71084,
0.28777, 0.32320, 0.15119, 0.34476, 0.44950). The one detail that the split, exclusion and
relevant-set rules above leave open and that moves these numbers is how popularity ties are
broken: items "100" and "181" both have 469 train+eval interactions (ranks 2-3), and ranks 98-100
fall inside a tie at 197. The reference ranks equal counts by item id in *descending* order
(``tie_break="item_id_desc"``, the default); ascending ids give NDCG@10 0.287, warm Recall@100
0.322 and warm NDCG@10 0.150 instead. Cutoff inclusivity does not matter on ML-100K (no
timestamp equals c1), nor does the relevant-set rule (no re-ratings).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from towerflow.components.evaluation import metrics as M

SPLITS = ("train", "eval", "test")
BASE_SLICES = ("all", "warm", "cold")

# exclude: one frozenset per user (the eval set's own; read-only)
Recommend = Callable[[list[str], int, Sequence[frozenset[str]]], Sequence[Sequence[str]]]

__all__ = [
    "EvalReport",
    "EvalSet",
    "ExcludedItemError",
    "PopularityRecommender",
    "Recommend",
    "assign_global_time_split",
    "evaluate",
    "global_time_cutoffs",
]


class ExcludedItemError(ValueError):
    """A recommender returned an item it was told to exclude (an item the user already saw)."""


# --------------------------------------------------------------------------- split


def global_time_cutoffs(timestamps: Iterable[float], fractions: Sequence[float] = (0.8, 0.9)) -> tuple[float, ...]:
    """Quantiles of the timestamps at ``fractions`` (``np.quantile``, linear interpolation).

    Values are Python floats, or ints when the timestamps are integers and the quantile is integral.
    """
    ts = np.asarray(list(timestamps) if not isinstance(timestamps, (np.ndarray, pd.Series)) else timestamps)
    if ts.size == 0:
        raise ValueError("no timestamps")
    fr = [float(f) for f in fractions]
    if not fr or any(not 0.0 < f < 1.0 for f in fr) or any(a >= b for a, b in zip(fr, fr[1:])):
        raise ValueError(f"fractions must be strictly increasing in (0, 1), got {tuple(fractions)}")
    qs = np.quantile(ts.astype(np.float64), fr)
    integral = np.issubdtype(ts.dtype, np.integer)
    return tuple(int(q) if integral and float(q).is_integer() else float(q) for q in qs)


def assign_global_time_split(df: pd.DataFrame, cutoffs: Sequence[float], timestamp_col: str = "timestamp") -> pd.Series:
    """Split label per row: "train" (t < c0), "eval" (c0 <= t < c1), "test" (t >= c1).

    Returns a string Series named "split" aligned with ``df.index`` (use ``df.assign(split=...)``).
    """
    if len(cutoffs) != 2:
        raise ValueError(f"expected two cutoffs (train|eval, eval|test), got {tuple(cutoffs)}")
    c0, c1 = cutoffs
    if c0 > c1:
        raise ValueError(f"cutoffs must be non-decreasing, got {tuple(cutoffs)}")
    t = df[timestamp_col].to_numpy()
    labels = np.where(t < c0, "train", np.where(t < c1, "eval", "test"))
    return pd.Series(labels, index=df.index, name="split", dtype=object)


# --------------------------------------------------------------------------- eval set


def string_codes(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(code per row, the distinct ids as str): ids compared as strings (1 and "1" are one id), each
    distinct value converted once instead of a str column per row."""
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    merged, names = pd.factorize(pd.Series(uniques).astype(str))  # values whose strings are equal: one code
    return merged[codes], np.asarray(names, dtype=object)


def catalog_ids(catalog: Iterable) -> tuple[str, ...]:
    """An eval set's catalog: the ids as str, each once, in their first order."""
    return tuple(pd.unique(np.asarray([str(i) for i in catalog], dtype=object)))


def _group_sets(keys: np.ndarray, n_items: int, items: np.ndarray, users: np.ndarray) -> list[frozenset[str]]:
    """Per user code of `users`: the frozenset of the items whose (user x n_items + item) key is in
    `keys` (sorted, unique)."""
    bounds = np.searchsorted(keys, np.stack([users * n_items, (users + 1) * n_items]))
    names = items[keys % n_items].tolist() if len(keys) else []
    return [frozenset(names[a:b]) for a, b in zip(bounds[0].tolist(), bounds[1].tolist())]


@dataclass(eq=False)
class EvalSet:
    """Test users with their relevant items, exclusions and warm/cold flag (see the module docstring).

    All per-user fields are aligned with ``user_ids`` (sorted ids).
    """

    user_ids: tuple[str, ...]
    relevant: tuple[frozenset[str], ...]
    seen: tuple[frozenset[str], ...]
    is_warm: np.ndarray
    cutoff: float
    catalog: tuple[str, ...]
    item_popularity: dict[str, int] = field(default_factory=dict)
    n_dropped_users: int = 0
    # Every `evaluate` on this set encodes lists into the catalog and checks them against the seen
    # items: the catalog index and the seen (user, item) keys are built once (see `_seen_keys`).
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.user_ids)
        self.is_warm = np.asarray(self.is_warm, dtype=bool)
        if not (len(self.relevant) == len(self.seen) == len(self.is_warm) == n):
            raise ValueError("user_ids, relevant, seen and is_warm must have the same length")

    def catalog_index(self) -> pd.Index:
        """The catalog as the vocabulary lists are encoded into (`metrics.encode_lists`)."""
        if "catalog_index" not in self._cache:
            self._cache["catalog_index"] = M.encode_lists([], self.catalog).vocabulary
        return self._cache["catalog_index"]

    def _seen_keys(self) -> np.ndarray:
        """Sorted (user row, catalog code) keys of the seen items that are in the catalog."""
        if "seen_keys" not in self._cache:
            vocabulary = self.catalog_index()
            seen_flat, seen_rows, _ = M.flatten_lists(self.seen)
            seen_codes = vocabulary.get_indexer(seen_flat).astype(np.int64)
            in_catalog = seen_codes >= 0  # a seen item outside the catalog cannot be recommended anyway
            keys = seen_rows[in_catalog] * max(len(vocabulary), 1) + seen_codes[in_catalog]
            self._cache["seen_keys"] = np.sort(keys)
        return self._cache["seen_keys"]

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def n_warm(self) -> int:
        return int(self.is_warm.sum())

    @property
    def n_cold(self) -> int:
        return len(self) - self.n_warm

    @classmethod
    def from_frame(cls, df: pd.DataFrame, catalog: Iterable[str] | None = None, cutoff: float | None = None) -> EvalSet:
        """Build from interactions with columns user_id, item_id, timestamp, split (train/eval/test).

        ``catalog`` defaults to every item id in ``df``; ``cutoff`` to the earliest test timestamp.
        Ids are compared as strings.
        """
        missing = {"user_id", "item_id", "timestamp", "split"} - set(df.columns)
        if missing:
            raise ValueError(f"frame lacks columns {sorted(missing)}")
        bad = set(pd.unique(df["split"])) - set(SPLITS)
        if bad:
            raise ValueError(f"unknown split labels {sorted(map(str, bad))}; expected {SPLITS}")
        # The (user, item) pairs as integer keys (user code x items + item code): the history's and the
        # test window's distinct pairs are sorted int64 arrays, not frames of str, and only the test
        # users' sets are built (at 20M rows the pairs of every user as str frames and sets were GBs).
        user_codes, user_names = string_codes(df["user_id"])
        item_codes, item_names = string_codes(df["item_id"])
        is_test = (df["split"] == "test").to_numpy()
        test_ts = df.loc[is_test, "timestamp"]
        if test_ts.empty:
            raise ValueError("no test interactions")
        n_items = max(len(item_names), 1)
        keys = user_codes.astype(np.int64) * n_items + item_codes
        history = np.unique(keys[~is_test])
        test = np.unique(keys[is_test])
        del keys
        at = np.minimum(np.searchsorted(history, test), max(len(history) - 1, 0))
        relevant_keys = test[history[at] != test] if len(history) else test

        # users by id (str order), each with their relevant and seen items
        relevant_users = np.unique(relevant_keys // n_items).tolist()
        ordered = sorted(zip(user_names[relevant_users].tolist(), relevant_users))
        user_ids = tuple(name for name, _ in ordered)
        users = np.array([code for _, code in ordered], dtype=np.int64)
        n_dropped = len(np.unique(test // n_items)) - len(user_ids)
        seen = tuple(_group_sets(history, n_items, item_names, users))
        is_warm = np.fromiter((len(s) > 0 for s in seen), dtype=bool, count=len(user_ids))

        if catalog is None:
            catalog_items = tuple(sorted(item_names.tolist()))
        else:
            catalog_items = catalog_ids(catalog)
            outside = set(item_names[np.unique(relevant_keys % n_items)].tolist()) - set(catalog_items)
            if outside:
                raise ValueError(f"relevant items missing from the catalog: {sorted(outside)[:5]}")
        popularity = np.bincount(history % n_items, minlength=len(item_names))

        return cls(
            user_ids=user_ids,
            relevant=tuple(_group_sets(relevant_keys, n_items, item_names, users)),
            seen=seen,
            is_warm=is_warm,
            cutoff=float(test_ts.min()) if cutoff is None else cutoff,
            catalog=catalog_items,
            item_popularity={item: int(c) for item, c in zip(item_names.tolist(), popularity.tolist()) if c},
            n_dropped_users=int(n_dropped),
        )


# --------------------------------------------------------------------------- report


@dataclass
class EvalReport:
    """Averaged metrics per slice and beyond-accuracy metrics at the largest K.

    ``metrics[slice]["recall@10"]`` etc. for slices "all", "warm", "cold" and caller-given ones;
    ``n_users[slice]``; ``beyond_accuracy`` holds "coverage@K", "gini@K", "avg_popularity@K" and,
    when genres were given, "diversity@K". A slice without users has nan metrics.

    ``per_user["ndcg@10"]`` etc. keep each test user's value (aligned with ``user_ids``; ``masks``
    holds each slice's users as a boolean vector), so two recommenders scored on the same
    ``EvalSet`` can be compared user by user (``components.evaluation.statistics``).
    ``to_dict`` leaves them out; ``per_user_dict`` gives them in JSON form. ``top_scores`` holds, for
    recommenders that score, the scores of every user's first items (None otherwise).
    """

    ks: tuple[int, ...]
    n_users: dict[str, int]
    metrics: dict[str, dict[str, float]]
    beyond_accuracy: dict[str, float]
    n_dropped_users: int = 0
    user_ids: tuple[str, ...] = ()
    per_user: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    top_scores: np.ndarray | None = None

    def metric(self, name: str, k: int, slice_name: str = "all") -> float:
        return self.metrics[slice_name][f"{name}@{k}"]

    def add_slices(self, slices: Mapping[str, str]) -> None:
        """Adds a slice per label of ``slices`` (user id -> label; users absent from it are in none),
        averaged from the kept per-user values: what ``evaluate(..., slices=slices)`` would report for
        them on the same lists. Labels already in the report keep their values."""
        for name, mask in _slice_masks(self.user_ids, slices).items():
            if name not in self.metrics:
                self.masks[name] = mask
                self.n_users[name], self.metrics[name] = _slice_means(self.per_user, mask)

    def to_dict(self) -> dict:
        """JSON-ready copy (nan -> None)."""

        def clean(x: float) -> float | None:
            return None if isinstance(x, float) and math.isnan(x) else x

        return {
            "ks": list(self.ks),
            "n_users": dict(self.n_users),
            "n_dropped_users": self.n_dropped_users,
            "metrics": {s: {k: clean(v) for k, v in m.items()} for s, m in self.metrics.items()},
            "beyond_accuracy": {k: clean(v) for k, v in self.beyond_accuracy.items()},
        }

    def per_user_dict(self, metrics: Sequence[str] | None = None) -> dict[str, list[float | None]]:
        """Per-user values of ``metrics`` (default: all), JSON-ready (nan -> None), aligned with ``user_ids``."""
        names = list(self.per_user) if metrics is None else list(metrics)
        return {m: [None if math.isnan(v) else float(v) for v in self.per_user[m]] for m in names}

    def format_table(self, digits: int = 3) -> str:
        """Plain-text table: one row per slice, one column per metric@K; then beyond-accuracy."""
        columns = [f"{name}@{k}" for k in self.ks for name in M.METRIC_NAMES]
        header = ["slice", "users", *columns]
        rows = [[s, str(self.n_users[s]), *(f"{self.metrics[s][c]:.{digits}f}" for c in columns)] for s in self.metrics]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

        def line(cells: list[str]) -> str:
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        out = [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]
        if self.beyond_accuracy:
            out.append("")
            out.extend(f"{k:<22}{v:.{digits}f}" for k, v in self.beyond_accuracy.items())
        return "\n".join(out)


# --------------------------------------------------------------------------- evaluate


def _slice_masks(users: Sequence[str], slices: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Label -> boolean mask over ``users`` (sorted labels); a label may not be a built-in slice."""
    labels = pd.Series([slices.get(u) for u in users], dtype=object)
    masks: dict[str, np.ndarray] = {}
    for label in sorted({str(x) for x in labels.dropna()}):
        if label in BASE_SLICES:
            raise ValueError(f"slice label {label!r} clashes with a built-in slice")
        masks[label] = (labels.astype(str) == label).to_numpy() & labels.notna().to_numpy()
    return masks


def _slice_means(per_user: Mapping[str, np.ndarray], mask: np.ndarray) -> tuple[int, dict[str, float]]:
    """(users in the slice, each metric averaged over them; nan for an empty slice)."""
    return int(mask.sum()), {
        key: float(values[mask].mean()) if mask.any() else math.nan for key, values in per_user.items()
    }


def _encode_checked(recs: list[list[str]], eval_set: EvalSet, k: int) -> M.EncodedLists:
    """Encode the lists into catalog codes, rejecting over-long lists, unknown items, duplicates and
    excluded (seen) items."""
    too_long = np.flatnonzero(np.fromiter(map(len, recs), dtype=np.int64, count=len(recs)) > k)
    if len(too_long):
        i = int(too_long[0])
        raise ValueError(f"recommend returned {len(recs[i])} > k={k} items for user {eval_set.user_ids[i]!r}")
    enc = M.encode_lists(recs, eval_set.catalog_index())
    seen_keys = eval_set._seen_keys()
    keys = enc.keys()
    at = np.minimum(np.searchsorted(seen_keys, keys), max(len(seen_keys) - 1, 0))
    leaked = seen_keys[at] == keys if len(seen_keys) else np.zeros(len(keys), dtype=bool)
    if leaked.any():
        j = int(np.argmax(leaked))
        user = eval_set.user_ids[int(enc.rows[j])]
        raise ExcludedItemError(
            f"recommender returned excluded item {enc.vocabulary[enc.codes[j]]!r} for user {user!r} "
            f"({int(leaked.sum())} excluded items in total)"
        )
    return enc


def evaluate(
    recommend: Recommend,
    eval_set: EvalSet,
    ks: Sequence[int] = (10, 50, 100),
    item_genres: Mapping[str, Collection[str]] | None = None,
    slices: Mapping[str, str] | None = None,
    batch_size: int | None = None,
) -> EvalReport:
    """Run the protocol: one top-K_max list per test user, checked, then scored per slice.

    ``recommend(user_ids, k, exclude)`` must return, per user, at most ``k`` distinct catalog items
    none of which is in that user's ``exclude`` set; violations raise (``ExcludedItemError`` for a
    leaked excluded item). ``slices`` maps user id -> extra slice label (e.g. "gender=F"); users
    absent from it belong only to all/warm/cold. ``batch_size`` bounds users per ``recommend`` call.
    """
    ks_sorted = tuple(sorted({M.check_k(k) for k in ks}))
    if not ks_sorted:
        raise ValueError("ks must not be empty")
    kmax = ks_sorted[-1]
    users = list(eval_set.user_ids)
    # frozensets: a recommender cannot change them, so the eval set's own are passed, not copies
    exclude = [s if isinstance(s, frozenset) else frozenset(s) for s in eval_set.seen]
    step = batch_size or max(len(users), 1)
    recs: list[list[str]] = []
    for start in range(0, len(users), step):
        batch = recommend(users[start : start + step], kmax, exclude[start : start + step])
        batch = [list(r) for r in batch]
        if len(batch) != len(users[start : start + step]):
            raise ValueError(f"recommend returned {len(batch)} lists for {len(users[start : start + step])} users")
        recs.extend(batch)
    enc = _encode_checked(recs, eval_set, kmax)

    per_user = M.ranking_metrics_per_user(enc, eval_set.relevant, ks_sorted)
    masks: dict[str, np.ndarray] = {
        "all": np.ones(len(users), dtype=bool),
        "warm": eval_set.is_warm,
        "cold": ~eval_set.is_warm,
    }
    if slices:
        masks.update(_slice_masks(users, slices))

    metric_values: dict[str, dict[str, float]] = {}
    n_users: dict[str, int] = {}
    for name, mask in masks.items():
        n_users[name], metric_values[name] = _slice_means(per_user, mask)

    beyond = {
        f"coverage@{kmax}": M.catalog_coverage(enc, enc.vocabulary),
        f"gini@{kmax}": M.gini_of_exposure(enc, enc.vocabulary),
        f"avg_popularity@{kmax}": M.average_popularity(enc, eval_set.item_popularity),
    }
    if item_genres is not None:
        beyond[f"diversity@{kmax}"] = M.mean_intra_list_diversity(enc, item_genres)
    return EvalReport(
        ks=ks_sorted,
        n_users=n_users,
        metrics=metric_values,
        beyond_accuracy=beyond,
        n_dropped_users=eval_set.n_dropped_users,
        user_ids=tuple(users),
        per_user=per_user,
        masks=masks,
    )


# --------------------------------------------------------------------------- baseline


class PopularityRecommender:
    """Most-interacted items first, counted on the train+eval interactions it is given.

    Equal counts are ordered by item id (string order), descending by default: that is the order
    that reproduces the reference numbers of docs/design.md (see the module docstring); "item_id_asc" is
    available. Catalog items absent from the frame are appended with count 0 when ``catalog`` is
    given. Excluded items are skipped, so each user gets the next most popular unseen items.
    """

    TIE_BREAKS = ("item_id_desc", "item_id_asc")

    def __init__(
        self,
        train_eval_frame: pd.DataFrame,
        catalog: Iterable[str] | None = None,
        tie_break: str = "item_id_desc",
    ) -> None:
        if tie_break not in self.TIE_BREAKS:
            raise ValueError(f"tie_break must be one of {self.TIE_BREAKS}, got {tie_break!r}")
        if "split" in train_eval_frame.columns and (train_eval_frame["split"] == "test").any():
            raise ValueError("PopularityRecommender must not see test interactions")
        counts = train_eval_frame["item_id"].astype(str).value_counts()
        self.counts: dict[str, int] = {str(i): int(c) for i, c in counts.items()}
        if catalog is not None:
            for item in catalog:
                self.counts.setdefault(str(item), 0)
        ranking = sorted(self.counts, reverse=tie_break == "item_id_desc")
        ranking.sort(key=lambda item: -self.counts[item])  # stable: keeps the id order within ties
        self.ranking: list[str] = ranking

    def __call__(
        self, user_ids: Sequence[str], k: int, exclude: Sequence[Collection[str]] | None = None
    ) -> list[list[str]]:
        k = M.check_k(k)
        if exclude is None:
            exclude = [()] * len(user_ids)
        if len(exclude) != len(user_ids):
            raise ValueError("exclude must have one entry per user")
        out = []
        for ex in exclude:
            ex = ex if isinstance(ex, (set, frozenset)) else set(ex)
            candidates = self.ranking[: k + len(ex)]
            out.append([item for item in candidates if item not in ex][:k])
        return out
