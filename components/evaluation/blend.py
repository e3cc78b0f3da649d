"""A blend whose weights depend on the user's state, with a newcomer-popularity prior.

`offline.BlendedRecommender` ("two_tower+dcn+pop") scores every user with the same (w, beta). Cold
and warm users want different mixes: for a user with no history the retrieval logit and the DCN
see only demographics and the clock, so the popularity priors should carry more of the score; for
a warm user the models know more. And the newcomer-popularity baseline
(`baselines.NewcomerPopularity`: what users within their first N interactions picked recently) is
the strongest Recall@100 baseline, so its count is a third prior. `StateBlendedRecommender` scores

    score(u, i, t) = retrieval logit + w_s x DCN interaction score + beta_s x log(1 + recent count(i, t))
                     + gamma_s x log(1 + newcomer count(i, t))

where s is the user's state at t: cold = fewer than `min_events` events before t (the service's
`cold_start.min_events`, 5), warm otherwise; recent count = the item's interactions in the 14 days
before t (`features.ITEM_RECENT_COUNT`, as in two_tower+dcn+pop); newcomer count = the item's
interactions in the `window_days` before t made by users as one of their first `first_n`
interactions (ordinal by time among the user's events before t: `newcomer_counts`, the count
`NewcomerPopularity` ranks by). Candidates: retrieval's top `depth` UNION the `depth` most recently
popular unseen items (two_tower+dcn+pop's) UNION the `depth` unseen items with the most newcomer
interactions (count > 0; ties by item id).

`tune_state_blend` chooses (window_days, first_n) and each state's (w, beta, gamma) on the EVAL
window with train-only fits, by the mean of NDCG@10 + Recall@100 (both of the issue's goals)
over that state's users; nothing is chosen on the test window.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from towerflow.components.evaluation.offline import BlendedRecommender, OfflineData, TwoTowerRecommender, query_features
from towerflow.models import features as F

STATE_BLENDED = "two_tower+dcn+state"
COLD, WARM = "cold", "warm"
STATES = (COLD, WARM)
# serving/recommender/config.py ColdStartConfig.min_events: fewer events than this is the cold path
COLD_MIN_EVENTS = 5
# What the blend is chosen from on the eval window (`tune_state_blend`). first_n: the baseline's grid
# (BaselineGrids.newcomer_first); windows: the feature store's recent window and the longer one the
# recent-popularity baseline chose on one fold.
NEWCOMER_WINDOW_GRID = (14.0, 30.0)
NEWCOMER_FIRST_N_GRID = (5, 10, 20, 50)
RERANK_GRID = (0.0, 0.25, 0.5, 1.0, 2.0)
POPULARITY_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 10.0)
NEWCOMER_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 10.0)
# The choosing objective: the sum of these per-user metrics, averaged over a state's users.
OBJECTIVE = ("ndcg@10", "recall@100")


def newcomer_counts(
    frame: pd.DataFrame, item_ids: Sequence[str], as_of: float, window_days: float, first_n: int
) -> np.ndarray:
    """Per item of `item_ids`: its interactions in [as_of - window_days, as_of) that their user made as
    one of their first `first_n` (ordinal by time among the user's non-test interactions before
    `as_of`, ties by the frame's order) -- `baselines.NewcomerPopularity`'s count."""
    past = frame[frame[F.TIMESTAMP] < as_of]
    if "split" in past.columns:
        past = past[past["split"] != "test"]
    past = past.sort_values(F.TIMESTAMP, kind="stable")
    ordinal = past.groupby(past[F.USER_ID].astype(str), sort=False).cumcount().to_numpy()
    recent = past[F.TIMESTAMP].to_numpy() >= as_of - float(window_days) * F.SECONDS_PER_DAY
    counts = past.loc[(ordinal < int(first_n)) & recent, F.ITEM_ID].astype(str).value_counts()
    return counts.reindex([str(i) for i in item_ids], fill_value=0).to_numpy(np.int64)


def newcomer_order(item_ids: Sequence[str], counts: np.ndarray) -> list[str]:
    """The items with a newcomer count > 0, most first, ties by item id (what a store's sorted counter gives)."""
    items = np.array([str(i) for i in item_ids], dtype=object)
    counts = np.asarray(counts)
    keep = np.flatnonzero(counts > 0)
    order = sorted(keep.tolist(), key=lambda j: (-int(counts[j]), items[j]))
    return items[order].tolist()


def is_cold(prior_counts: np.ndarray, min_events: int = COLD_MIN_EVENTS) -> np.ndarray:
    """The service's cold path: fewer than `min_events` events before the request."""
    return np.asarray(prior_counts) < int(min_events)


@dataclass(frozen=True)
class BlendWeights:
    rerank: float  # w: the DCN interaction score
    popularity: float  # beta: log(1 + recent count)
    newcomer: float  # gamma: log(1 + newcomer count)


@dataclass(frozen=True)
class StateBlend:
    """The newcomer count's (window_days, first_n) and each state's weights."""

    window_days: float
    first_n: int
    cold: BlendWeights
    warm: BlendWeights
    min_events: int = COLD_MIN_EVENTS

    @property
    def option(self) -> tuple[float, int]:
        return (float(self.window_days), int(self.first_n))

    def describe(self) -> str:
        def w(x: BlendWeights) -> str:
            return f"(w={x.rerank:g}, beta={x.popularity:g}, gamma={x.newcomer:g})"

        return (
            f"newcomer window_days={self.window_days:g} first_n={self.first_n}; "
            f"cold (< {self.min_events} events) {w(self.cold)}; warm {w(self.warm)}"
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Table:
    """One request's candidates (users x columns, padded) and every score component."""

    items: list[list[str]]  # per user: the candidate ids (columns 0..len-1)
    logit: np.ndarray
    interaction: np.ndarray  # zeros without a ranker
    log_pop: np.ndarray
    base: np.ndarray  # bool: retrieval's top depth or the recently popular (two_tower+dcn+pop's candidates)
    log_newcomer: dict[tuple[float, int], np.ndarray]
    newcomer: dict[tuple[float, int], np.ndarray]  # bool: among that option's newcomer-popular candidates
    prior_count: np.ndarray  # per user: events before the request (USER_PRIOR_COUNT)

    def relevance(self, relevant: Sequence[frozenset[str]]) -> np.ndarray:
        """bool users x columns: the candidate is among the user's relevant items."""
        rows = [np.fromiter((i in rel for i in items), bool, len(items)) for items, rel in zip(self.items, relevant)]
        return _pad(rows, self.logit.shape[1], False, bool)


def _pad(rows: Sequence[np.ndarray], width: int, fill, dtype) -> np.ndarray:
    out = np.full((len(rows), width), fill, dtype=dtype)
    for u, row in enumerate(rows):
        out[u, : len(row)] = row
    return out


def rank_columns(
    table: _Table, blend: StateBlend, k: int, newcomer_candidates: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(columns, valid): per user the first `k` candidate columns by the blend's score (ties by
    candidate order), and which of them are real candidates of this blend (without
    `newcomer_candidates`, only two_tower+dcn+pop's: retrieval's and the recently popular)."""
    cold = is_cold(table.prior_count, blend.min_events)
    weight = {
        name: np.where(cold, getattr(blend.cold, name), getattr(blend.warm, name))[:, None]
        for name in ("rerank", "popularity", "newcomer")
    }
    option = blend.option
    score = (
        table.logit
        + weight["rerank"] * table.interaction
        + weight["popularity"] * table.log_pop
        + weight["newcomer"] * table.log_newcomer[option]
    )
    candidates = table.base | table.newcomer[option] if newcomer_candidates else table.base
    score = np.where(candidates, score, -np.inf)
    columns = np.argsort(-score, axis=1, kind="stable")[:, :k]
    valid = np.isfinite(np.take_along_axis(score, columns, axis=1))
    return columns, valid


class StateBlendedRecommender:
    """`recommend(user_ids, k, exclude)` with the state-dependent blend (module docstring).

    `options` lists the (window_days, first_n) newcomer lists whose items join the candidates when
    the components are computed (default: the blend's own); `with_blend` re-scores the same cached
    components with another blend whose option is among them (for `tune_state_blend`). Only the
    blend's own option's items are ever candidates of its lists.
    """

    def __init__(
        self,
        retrieval: TwoTowerRecommender,
        ranker_dir: str | None,
        data: OfflineData,
        as_of: int,
        blend: StateBlend,
        depth: int = 100,
        options: Sequence[tuple[float, int]] | None = None,
        _shared: dict | None = None,
    ):
        self.blend = blend
        options = [tuple(o) for o in (options or [blend.option])]
        if blend.option not in options:
            raise ValueError(f"the blend's newcomer option {blend.option} is not among {options}")
        if _shared is None:
            catalog = list(data.catalog.index)
            base = BlendedRecommender(retrieval, ranker_dir, data, as_of, depth=depth)
            orders, logs = {}, {}
            for window, first_n in options:
                counts = newcomer_counts(data.frame, catalog, as_of, window, first_n)
                orders[(window, first_n)] = newcomer_order(catalog, counts)
                logs[(window, first_n)] = dict(zip(catalog, np.log1p(counts.astype(np.float64))))
            _shared = dict(
                base=base, data=data, as_of=as_of, depth=depth, options=options, orders=orders, logs=logs, cache={}
            )
        elif blend.option not in _shared["options"]:
            raise ValueError(f"the blend's newcomer option {blend.option} was not computed")
        self._shared = _shared

    def with_blend(self, blend: StateBlend) -> StateBlendedRecommender:
        return StateBlendedRecommender(None, None, None, 0, blend, _shared=self._shared)

    def newcomer_popular(self, option: tuple[float, int], k: int, seen) -> list[str]:
        out = []
        for item in self._shared["orders"][option]:
            if item not in seen:
                out.append(item)
                if len(out) == k:
                    break
        return out

    def table(self, user_ids, k, exclude) -> _Table:
        key = (tuple(user_ids), int(k))
        cache = self._shared["cache"]
        if key in cache:
            return cache[key]
        shared = self._shared
        base: BlendedRecommender = shared["base"]
        depth = max(int(k), shared["depth"])
        base_candidates = base.base_candidates(user_ids, k, exclude)
        candidates, member = [], {o: [] for o in shared["options"]}
        for cands, seen in zip(base_candidates, exclude):
            cands = list(cands)
            have = set(cands)
            lists = {o: self.newcomer_popular(o, depth, seen) for o in shared["options"]}
            for items in lists.values():
                for item in items:
                    if item not in have:
                        have.add(item)
                        cands.append(item)
            for o, items in lists.items():
                member[o].append(np.isin(np.array(cands, dtype=object), np.array(items, dtype=object)))
            candidates.append(cands)
        entries = base.score_candidates(user_ids, candidates)
        width = max([len(c) for c in candidates] + [1])
        zeros = [np.zeros(len(c)) for c in candidates]
        prior = query_features(shared["data"], user_ids, shared["as_of"])[F.USER_PRIOR_COUNT]
        table = _Table(
            items=candidates,
            logit=_pad([e["logit"] for e in entries], width, 0.0, np.float64),
            interaction=_pad([e.get("interaction", z) for e, z in zip(entries, zeros)], width, 0.0, np.float64),
            log_pop=_pad([e["log_pop"] for e in entries], width, 0.0, np.float64),
            base=_pad([np.ones(len(c), bool) for c in base_candidates], width, False, bool),
            log_newcomer={
                o: _pad([np.array([shared["logs"][o][i] for i in c]) for c in candidates], width, 0.0, np.float64)
                for o in shared["options"]
            },
            newcomer={o: _pad(member[o], width, False, bool) for o in shared["options"]},
            prior_count=np.asarray(prior, dtype=np.int64),
        )
        cache.clear()  # one request kept: the tuning and the evaluation ask for the same users
        cache[key] = table
        return table

    def __call__(self, user_ids, k, exclude):
        table = self.table(user_ids, k, exclude)
        columns, valid = rank_columns(table, self.blend, k)
        return [[items[c] for c in cols[ok]] for items, cols, ok in zip(table.items, columns, valid)]

    def base_lists(self, user_ids, k, exclude, rerank_weight: float, popularity_weight: float) -> list[list[str]]:
        """two_tower+dcn+pop's lists (`offline.BlendedRecommender` with these weights) from the same cached
        components: its candidates only, one weight pair for every user, no newcomer term."""
        table = self.table(user_ids, k, exclude)
        same = BlendWeights(float(rerank_weight), float(popularity_weight), 0.0)
        blend = StateBlend(*self.blend.option, cold=same, warm=same, min_events=self.blend.min_events)
        columns, valid = rank_columns(table, blend, k, newcomer_candidates=False)
        return [[items[c] for c in cols[ok]] for items, cols, ok in zip(table.items, columns, valid)]


def per_user_metrics(
    table: _Table, blend: StateBlend, is_relevant: np.ndarray, n_relevant: np.ndarray, ks: tuple[int, int] = (10, 100)
) -> dict[str, np.ndarray]:
    """Per user ndcg@ks[0] and recall@ks[1] of the blend's lists (the protocol's definitions, binary
    gains; `is_relevant` = `table.relevance(relevant)`, `n_relevant` = each user's number of relevant
    items, none 0), computed on the candidate matrix without building the lists: what
    `protocol.evaluate` of the recommender gives, fast enough to score a grid."""
    k_ndcg, k_recall = ks
    columns, valid = rank_columns(table, blend, max(ks))
    hits = np.take_along_axis(is_relevant, columns, axis=1) & valid
    n_rel = np.asarray(n_relevant, dtype=np.float64)
    discount = 1.0 / np.log2(np.arange(2, k_ndcg + 2, dtype=np.float64))
    ideal = np.cumsum(discount)[np.minimum(n_rel, k_ndcg).astype(np.int64) - 1]
    n = min(k_ndcg, hits.shape[1])
    return {
        f"ndcg@{k_ndcg}": (hits[:, :n] * discount[:n]).sum(axis=1) / ideal,
        f"recall@{k_recall}": hits[:, :k_recall].sum(axis=1) / n_rel,
    }


def _grid(rerank: Sequence[float], popularity: Sequence[float], newcomer: Sequence[float]) -> list[BlendWeights]:
    return [BlendWeights(float(w), float(b), float(g)) for w, b, g in itertools.product(rerank, popularity, newcomer)]


def tune_state_blend(
    data: OfflineData,
    two_tower_dirs: Sequence[str],
    ranker_dirs: Sequence[str | None],
    depth: int = 100,
    windows: Sequence[float] = NEWCOMER_WINDOW_GRID,
    first_ns: Sequence[int] = NEWCOMER_FIRST_N_GRID,
    rerank_grid: Sequence[float] = RERANK_GRID,
    popularity_grid: Sequence[float] = POPULARITY_GRID,
    newcomer_grid: Sequence[float] = NEWCOMER_GRID,
    objective: Sequence[str] = OBJECTIVE,
    min_events: int = COLD_MIN_EVENTS,
) -> tuple[StateBlend, dict]:
    """The StateBlend with the best mean objective (the sum of `objective`'s per-user metrics) on the
    EVAL window.

    `data` must be the view whose "test" split is the eval window (`OfflineData.validation_view`)
    and the models fit on the train split only (one per seed; a user's value is the mean over them).
    Per (window_days, first_n), each state's weights are the grid's best over that state's users
    (ties to the smaller gamma, then beta, then w; a state without eval users takes the best over
    all users); the (window_days, first_n) is the one whose two states' best give the best mean
    over all users (ties to the earlier in the grid). Without rankers w is 0. Returns the blend and,
    per option, each state's best weights with its objective, NDCG@10 and Recall@100 on the eval window.
    """
    return tune_state_blend_windows(
        [(data, two_tower_dirs, ranker_dirs)],
        depth,
        windows,
        first_ns,
        rerank_grid,
        popularity_grid,
        newcomer_grid,
        objective,
        min_events,
    )


def tune_state_blend_windows(
    eval_windows: Sequence[tuple[OfflineData, Sequence[str], Sequence[str | None]]],
    depth: int = 100,
    windows: Sequence[float] = NEWCOMER_WINDOW_GRID,
    first_ns: Sequence[int] = NEWCOMER_FIRST_N_GRID,
    rerank_grid: Sequence[float] = RERANK_GRID,
    popularity_grid: Sequence[float] = POPULARITY_GRID,
    newcomer_grid: Sequence[float] = NEWCOMER_GRID,
    objective: Sequence[str] = OBJECTIVE,
    min_events: int = COLD_MIN_EVENTS,
) -> tuple[StateBlend, dict]:
    """`tune_state_blend` over several eval windows' users together (e.g. one fixed setting for every
    rolling-origin fold, as a pipeline default): each (data, two-tower dirs, ranker dirs) is scored as
    there, and the users of all windows are pooled before choosing."""
    metrics = tuple(objective)
    ks = (10, 100)
    if not metrics or not set(metrics) <= {"ndcg@10", "recall@100"}:
        raise ValueError(f"objective metrics must be among ndcg@10 and recall@100, got {metrics}")
    has_ranker = all(r is not None for _, _, rankers in eval_windows for r in rankers)
    grid = _grid(rerank_grid if has_ranker else (0.0,), popularity_grid, newcomer_grid)
    options = [(float(w), int(n)) for w in windows for n in first_ns]
    # per (option, grid index): per-user metric vectors (each window's mean over its models), windows concatenated
    parts: dict[tuple[tuple[float, int], int], dict[str, list[np.ndarray]]] = {}
    colds = []
    for data, two_tower_dirs, ranker_dirs in eval_windows:
        eval_set = data.eval_set()
        as_of = int(np.ceil(eval_set.cutoff))
        users, exclude = list(eval_set.user_ids), list(eval_set.seen)
        n_relevant = np.array([len(r) for r in eval_set.relevant])
        sums: dict = {}
        for two_tower_dir, ranker_dir in zip(two_tower_dirs, ranker_dirs):
            retrieval = TwoTowerRecommender(two_tower_dir, data, as_of)
            first = StateBlend(options[0][0], options[0][1], grid[0], grid[0], min_events)
            recommender = StateBlendedRecommender(
                retrieval, ranker_dir if has_ranker else None, data, as_of, first, depth=depth, options=options
            )
            table = recommender.table(users, max(ks), exclude)
            cold = is_cold(table.prior_count, min_events)
            is_relevant = table.relevance(eval_set.relevant)
            for option in options:
                for g, weights in enumerate(grid):
                    blend = StateBlend(option[0], option[1], weights, weights, min_events)
                    values = per_user_metrics(table, blend, is_relevant, n_relevant, ks)
                    acc = sums.setdefault((option, g), {m: np.zeros(len(users)) for m in values})
                    for m, v in values.items():
                        acc[m] += v / len(two_tower_dirs)
        colds.append(cold)
        for key, values in sums.items():
            for m, v in values.items():
                parts.setdefault(key, {}).setdefault(m, []).append(v)
    sums = {key: {m: np.concatenate(v) for m, v in values.items()} for key, values in parts.items()}
    cold = np.concatenate(colds)
    masks = {COLD: cold, WARM: ~cold, "all": np.ones(len(cold), bool)}

    def mean(values: Mapping[str, np.ndarray], mask: np.ndarray, metric: str | None = None) -> float:
        if not mask.any():
            return float("nan")
        if metric is not None:
            return float(values[metric][mask].mean())
        return float(sum(values[m][mask].mean() for m in metrics))

    def tie_key(g: int) -> tuple:
        w = grid[g]
        return (-w.newcomer, -w.popularity, -w.rerank)

    report: dict = {}
    best_option, best_value = None, -np.inf
    for option in options:
        chosen = {}
        for state in STATES:
            mask = masks[state] if masks[state].any() else masks["all"]
            g = max(range(len(grid)), key=lambda g: (round(mean(sums[(option, g)], mask), 12), *tie_key(g)))
            chosen[state] = g
        combined = {
            m: np.where(cold, sums[(option, chosen[COLD])][m], sums[(option, chosen[WARM])][m])
            for m in sums[(option, 0)]
        }
        value = mean(combined, masks["all"])
        report[f"window={option[0]:g},first_n={option[1]}"] = {
            "all": {"objective": value, **{m: mean(combined, masks["all"], m) for m in combined}},
            **{
                state: {
                    **asdict(grid[chosen[state]]),
                    "users": int(masks[state].sum()),
                    "objective": mean(sums[(option, chosen[state])], masks[state]),
                    **{m: mean(sums[(option, chosen[state])], masks[state], m) for m in combined},
                }
                for state in STATES
            },
        }
        if round(value, 12) > round(best_value, 12):
            best_option, best_value = (option, chosen), value
    option, chosen = best_option
    return StateBlend(option[0], option[1], grid[chosen[COLD]], grid[chosen[WARM]], min_events), report


# One setting for runs without train-only fits (the ModelEvaluator): chosen by `tune_state_blend_windows` on
# the three rolling-origin folds' eval windows together (train-only fits, seed 0; benchmark
# --state-blend-pooled; benchmarks/results/model_quality.md).
DEFAULT_STATE_BLEND = StateBlend(
    window_days=30.0,
    first_n=20,
    cold=BlendWeights(rerank=0.0, popularity=2.0, newcomer=1.0),
    warm=BlendWeights(rerank=0.5, popularity=4.0, newcomer=3.0),
)


def full_pipeline(data: OfflineData, retrieval: TwoTowerRecommender, ranker_dir: str | None, as_of: int):
    """`DEFAULT_STATE_BLEND` as the ModelEvaluator's full-pipeline factory (`full_pipeline_fn =
    "towerflow.components.evaluation.blend.full_pipeline"`): reported as "full_pipeline"."""
    return StateBlendedRecommender(retrieval, ranker_dir, data, as_of, DEFAULT_STATE_BLEND)
