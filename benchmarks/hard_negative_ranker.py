"""Issue 13: the DCN ranker trained on retrieval's own top-N (hard negatives) vs today's ranker, in the blend.

For one fold of `benchmarks/model_quality.py` (default fold 2, the reference split) and one seed:

1. the fold's training interactions (Ingestion's Split-train) are read raw and transformed by the
   fold's Transform graph; the train-only two-tower embeds each one's query as of its time;
2. each interaction's negative pool = that two-tower's top `--depth` UNION the `--depth` most
   recently popular items as of its day, minus the positive and the user's training items
   (`models.hard_negatives.candidate_pools`);
3. a `HardNegativeRanker` (DCNRankingModel's architecture and features, `--negatives` sampled
   from the pool per example and epoch, listwise softmax) is fit on the train split and exported
   like the pipeline's ranker;
4. both rankers -- today's train-only fit (`--ranker`) and the new one -- go into
   `offline.BlendedRecommender` with the SAME train-only two-tower, and every (w, beta) of
   `tune_blend`'s grid is scored on the EVAL window (never the test window); each ranker's
   chosen point is tune_blend's (best NDCG@10, ties to the smaller weights). Printed: the chosen
   points' NDCG@10 / Recall@100 (all / warm / cold), the paired difference (bootstrap CI,
   permutation p) and the whole grid.

    nice -n 15 .venv/bin/python benchmarks/hard_negative_ranker.py --fold-dir runs/q13_train/fold2 \
        --out runs/hn/fold2/seed0 --epochs 3 --negatives 16

The chosen points are each ranker's best on the same window they are scored on (optimistic, for
both alike). `--halves` also chooses on one half of the eval users and scores on the other.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from machine import cores, cpu_model, memory_gib  # noqa: E402 - benchmarks/ is on sys.path when run as a script

METRICS = (("ndcg", 10), ("recall", 100))
SLICES = ("all", "warm", "cold")


def build_training_data(artifacts: dict, two_tower_dir: str, data, as_of: int, depth: int):
    """Transformed train columns, their timestamps, negative pools, event index and catalog features."""
    import tensorflow as tf
    import tensorflow_transform as tft

    from towerflow.components.evaluation.offline import TwoTowerRecommender, candidate_features
    from towerflow.models import embeddings as E
    from towerflow.models import features as F
    from towerflow.models import hard_negatives as H

    started = time.time()
    tft_output = tft.TFTransformOutput(artifacts["Transform.transform_graph"])
    pattern = os.path.join(artifacts["Ingestion.examples"], "Split-train", "*.gz")
    raw, serialized = H.read_raw_examples(pattern, tft_output)
    columns = H.transform_raw(tft_output, raw)
    model = tf.saved_model.load(two_tower_dir)
    queries = np.concatenate(
        [model.signatures["query_tower_examples"](examples=tf.constant(s))["embedding"].numpy() for s in serialized]
    )
    retrieval = TwoTowerRecommender(two_tower_dir, data, as_of)
    item_ids = list(retrieval.item_ids)
    row_of = {item: j for j, item in enumerate(item_ids)}
    decode = np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else v, otypes=[object])
    users = decode(raw[F.USER_ID])
    items = np.array([row_of[i] for i in decode(raw[F.ITEM_ID])], dtype=np.int64)
    timestamps = raw[F.TIMESTAMP].astype(np.int64)
    print(f"  {len(items):,} training interactions read, transformed and embedded ({time.time() - started:.0f}s)")

    events = H.EventIndex(items, timestamps, len(item_ids))
    # the negatives' popularity inputs are counted here; the positives' came from ingestion: they must agree
    own = events.popularity(items, timestamps)
    for key in (F.ITEM_PRIOR_COUNT, F.ITEM_RECENT_COUNT, F.ITEM_DAYS_SINCE_FIRST):
        if not np.allclose(own[key], raw[key].astype(np.float64), atol=1e-3):
            raise RuntimeError(f"point-in-time {key} of the positives differs from ingestion's")
    user_codes, user_index = np.unique(users, return_inverse=True)
    seen = np.zeros((len(user_codes), len(item_ids)), dtype=bool)
    seen[user_index, items] = True
    days, day_index = np.unique(timestamps // F.SECONDS_PER_DAY, return_inverse=True)
    orders = []
    all_rows = np.arange(len(item_ids))
    for day in days:
        pop = events.popularity(all_rows, np.full(len(item_ids), int(day) * F.SECONDS_PER_DAY))
        orders.append(H.popular_order(pop[F.ITEM_RECENT_COUNT], pop[F.ITEM_PRIOR_COUNT], item_ids))
    orders = np.stack(orders)
    pools = []
    for start in range(0, len(items), 2048):
        stop = min(start + 2048, len(items))
        scores = queries[start:stop] @ retrieval.item_embeddings.T
        excluded = seen[user_index[start:stop]].copy()
        excluded[np.arange(stop - start), items[start:stop]] = True
        pools.append(H.candidate_pools(scores, excluded, orders[day_index[start:stop]], depth))
    pools = np.concatenate(pools)
    sizes = (pools >= 0).sum(axis=1)
    positive_in_pool_would_be = _positive_rank_share(queries, retrieval.item_embeddings, items, seen[user_index], depth)
    catalog = H.transform_raw(tft_output, candidate_features(data, item_ids))
    catalog = {key: catalog[key] for key in E.CANDIDATE_ID_FEATURES}
    # the catalog's transformed item features must be the ones the examples carry
    for key in E.CANDIDATE_ID_FEATURES:
        if not np.array_equal(catalog[key][items], columns[key]):
            raise RuntimeError(f"catalog's transformed {key} differs from the training examples'")
    print(
        f"  pools: {sizes.mean():.1f} items on average (min {sizes.min()}, max {sizes.max()}); "
        f"positive within retrieval's top {depth} (excl. seen): {positive_in_pool_would_be:.1%} "
        f"({time.time() - started:.0f}s)",
        flush=True,
    )
    stats = {
        "examples": int(len(items)),
        "pool_mean": float(sizes.mean()),
        "positive_in_top": positive_in_pool_would_be,
    }
    extra = {"queries": queries, "item_embeddings": retrieval.item_embeddings, "positives": items}
    return tft_output, columns, timestamps, pools, events, catalog, extra, stats


def _positive_rank_share(queries, item_embeddings, items, seen_rows, depth) -> float:
    """Share of training interactions whose positive is in retrieval's top `depth` among items the user
    has not interacted with (the positive itself counted as unseen)."""
    hits = 0
    for start in range(0, len(items), 4096):
        stop = min(start + 4096, len(items))
        scores = queries[start:stop] @ item_embeddings.T
        rows = np.arange(stop - start)
        own = scores[rows, items[start:stop]]
        higher = (scores > own[:, None]) & ~seen_rows[start:stop]
        hits += int((higher.sum(axis=1) < depth).sum())
    return hits / len(items)


def train_ranker(tft_output, columns, timestamps, pools, events, catalog, extra, out: Path, args) -> dict:
    import tensorflow as tf

    from towerflow.models import hard_negatives as H
    from towerflow.models import run_fns
    from towerflow.models.preprocessing import table_sizes_from_transform_output
    from towerflow.models.ranking import RankingConfig
    from towerflow.models.two_tower import TwoTowerConfig

    tf.keras.utils.set_random_seed(args.train_seed)
    config = RankingConfig(num_negatives=args.negatives, epochs=args.epochs, **json.loads(args.ranking))
    model = H.HardNegativeRanker(
        config, table_sizes_from_transform_output(tft_output), catalog, in_batch_weight=args.in_batch_weight
    )
    model.compile()
    started = time.time()
    base = None
    if args.residual is not None:
        base = H.BaseScore(extra["queries"], extra["item_embeddings"], TwoTowerConfig().temperature, args.residual)
    history = H.fit(model, columns, pools, events, timestamps, config.epochs, args.train_seed, base, extra["positives"])
    seconds = time.time() - started
    run_fns.export_ranking(model, tft_output, str(out / "serving"))
    summary = {"config": dataclasses.asdict(config), "history": history}
    summary["train_seconds"] = seconds
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"  trained and exported the hard-negative ranker in {seconds:.0f}s -> {out / 'serving'}", flush=True)
    return summary


def train_current(artifacts: dict, out: Path, seed: int) -> str:
    """Today's ranker (run_fns.run_ranking, default RankingConfig) fit on the train split with `seed`,
    as model_quality's --train-splits train fits are; returns its serving dir."""
    from model_quality import _fn_args

    from towerflow.models import run_fns

    fn_args = _fn_args(artifacts, out, "ranking", {}, seed, ("train",))
    if not Path(fn_args.serving_model_dir, "saved_model.pb").is_file():
        started = time.time()
        run_fns.run_ranking(fn_args)
        print(f"  trained today's ranker, seed {seed}, in {time.time() - started:.0f}s", flush=True)
    return fn_args.serving_model_dir


def grid_scores(data, two_tower_dir: str, ranker_dir: str, depth: int) -> dict:
    """(w, beta) -> EvalReport of the blend on `data`'s scored window, over tune_blend's grid."""
    from towerflow.components.evaluation import offline as O
    from towerflow.components.evaluation.protocol import evaluate

    eval_set = data.eval_set()
    as_of = int(np.ceil(eval_set.cutoff))
    retrieval = O.TwoTowerRecommender(two_tower_dir, data, as_of)
    base = O.BlendedRecommender(retrieval, ranker_dir, data, as_of, depth=depth)
    reports = {
        (w, beta): evaluate(base.with_weights(w, beta), eval_set, (10, 100))
        for w in O.BLEND_RERANK_WEIGHT_GRID
        for beta in O.POPULARITY_WEIGHT_GRID
    }

    def ranker_alone(user_ids, k, exclude):
        """The blend's candidates ordered by the DCN's interaction score alone (a diagnostic)."""
        lists = []
        for entry in base.components(user_ids, k, exclude):
            order = np.argsort(-entry["interaction"], kind="stable")[:k]
            lists.append([entry["items"][j] for j in order])
        return lists

    reports["ranker_alone"] = evaluate(ranker_alone, eval_set, (10, 100))
    return reports


def choose(reports: dict, users: np.ndarray | None = None) -> tuple[float, float]:
    """tune_blend's rule: best mean NDCG@10 (on `users`, a boolean mask, or all), ties to smaller beta then w."""

    def score(key):
        values = reports[key].per_user["ndcg@10"]
        return float(np.nanmean(values if users is None else values[users]))

    keys = [key for key in reports if isinstance(key, tuple)]
    return max(keys, key=lambda key: (round(score(key), 12), -key[1], -key[0]))


def pool(paths, resamples: int, seeds: int = 1) -> dict:
    """Several folds' result.json (their eval windows' users concatenated): the chosen points paired.

    With `seeds` > 1 the paths come fold by fold, `seeds` runs of one fold each in a row, and a
    ranker's value for a user is its mean over those runs (as model_quality averages seeds)."""
    from towerflow.components.evaluation.statistics import paired_comparison

    runs = [json.loads(Path(p).read_text()) for p in paths]
    if len(runs) % seeds:
        raise ValueError(f"{len(runs)} result files do not split into groups of {seeds} seeds")
    folds = [runs[i : i + seeds] for i in range(0, len(runs), seeds)]

    def fold_values(group, name, metric, slice_name):
        mask = np.asarray(group[0]["per_user"][name][slice_name], bool)
        values = np.mean([np.asarray(r["per_user"][name][metric], float) for r in group], axis=0)
        return values[mask]

    out = {}
    for m, k in METRICS:
        for s in SLICES:
            values = {
                name: np.concatenate([fold_values(group, name, f"{m}@{k}", s) for group in folds])
                for name in ("hard_negative", "current")
            }
            c = paired_comparison(values["hard_negative"], values["current"], resamples)
            out[f"{s}:{m}@{k}"] = c
            print(
                f"pooled ({len(folds)} eval windows x {seeds} seed(s), {len(values['current'])} {s} users) "
                f"hard_negative vs current "
                f"{m}@{k}: {c['mean']:.4f} vs {c['reference_mean']:.4f} ({c['lift']:+.1%} "
                f"[{c['lift_ci_low']:+.1%}, {c['lift_ci_high']:+.1%}], p={c['p_value']:.2g})"
            )
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--fold-dir", default="runs/q13_train/fold2", help="a model_quality fold dir of train-only fits"
    )
    parser.add_argument("--seed", type=int, default=0, help="the fold dir's seed (its two-tower and ranker)")
    parser.add_argument("--train-seed", type=int, default=None, help="the new ranker's seed (default: --seed)")
    parser.add_argument("--two-tower", default=None, help="default: <fold-dir>/seed<seed>/two_tower/serving")
    parser.add_argument("--ranker", default=None, help="today's ranker; default: <fold-dir>/seed<seed>/ranking/serving")
    parser.add_argument("--out", default="runs/hn/fold2/seed0", help="where the new ranker and results go")
    parser.add_argument("--depth", type=int, default=100, help="retrieval / popular candidates (the blend's)")
    parser.add_argument("--negatives", type=int, default=16, help="hard negatives sampled per example and epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--residual",
        type=float,
        default=None,
        metavar="BETA",
        help="train against the blend's fixed terms (retrieval logit + BETA x log recent count): a residual",
    )
    parser.add_argument(
        "--in-batch-weight",
        type=float,
        default=0.0,
        help="also today's in-batch sampled softmax with this weight (its negatives: the batch's other items)",
    )
    parser.add_argument("--ranking", default="{}", help="JSON RankingConfig overrides")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--halves", action="store_true", help="also choose on half the eval users, score the other")
    parser.add_argument(
        "--current-seed",
        type=int,
        default=None,
        help="re-fit today's ranker on the train split with this seed (else --ranker / the fold dir's)",
    )
    parser.add_argument("--pool", nargs="+", default=None, help="only pool these result.json files")
    parser.add_argument(
        "--pool-seeds", type=int, default=1, help="--pool's files are fold by fold, this many seeds each"
    )
    args = parser.parse_args(argv)
    if args.train_seed is None:
        args.train_seed = args.seed
    if args.pool:
        print(f"machine: {cpu_model()}, {cores()} cores, {memory_gib()}, Python {sys.version.split()[0]}")
        pool(args.pool, args.bootstrap, args.pool_seeds)
        return 0

    from towerflow.components.evaluation.offline import OfflineData
    from towerflow.components.evaluation.statistics import paired_comparison
    from towerflow.pipeline.mlmd import latest_artifacts

    print(f"machine: {cpu_model()}, {cores()} cores, {memory_gib()}, Python {sys.version.split()[0]}", flush=True)
    fold, seed_dir = Path(args.fold_dir), Path(args.fold_dir) / f"seed{args.seed}"
    two_tower = args.two_tower or str(seed_dir / "two_tower" / "serving")
    current = args.ranker or str(seed_dir / "ranking" / "serving")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    artifacts = latest_artifacts(str(fold / "run" / "metadata.sqlite"))
    if args.current_seed is not None:  # today's ranker re-fit on the train split with another seed
        current = train_current(artifacts, out / "current_ranking", args.current_seed)
    full = OfflineData.from_artifacts(artifacts["Ingestion.examples"], artifacts["Ingestion.item_catalog"])
    data = full.validation_view()  # the EVAL window is scored; nothing here reads the test split's labels
    as_of = int(np.ceil(data.eval_set().cutoff))
    started = time.time()
    new = out / "serving"
    stats = {}
    if not (new / "saved_model.pb").is_file():
        *built, stats = build_training_data(artifacts, two_tower, data, as_of, args.depth)
        stats["training"] = train_ranker(*built, out, args)
    reports = {"current": grid_scores(data, two_tower, current, args.depth)}
    reports["hard_negative"] = grid_scores(data, two_tower, str(new), args.depth)
    eval_set = data.eval_set()
    print(f"\nEVAL window: {len(eval_set)} users ({eval_set.n_warm} warm, {eval_set.n_cold} cold)")
    chosen = {name: choose(r) for name, r in reports.items()}
    result = {"args": vars(args), "users": len(eval_set), "chosen": {}, "grid": {}, "stats": stats}
    for name, r in reports.items():
        w, beta = chosen[name]
        cells = {f"{s}:{m}@{k}": r[(w, beta)].metric(m, k, s) for m, k in METRICS for s in SLICES}
        result["chosen"][name] = {"w": w, "beta": beta, **cells}
        result["grid"][name] = {
            (f"w={k[0]:g},beta={k[1]:g}" if isinstance(k, tuple) else k): [
                rep.metric("ndcg", 10),
                rep.metric("recall", 100),
            ]
            for k, rep in r.items()
        }
        alone = r["ranker_alone"]
        print(
            f"{name:>14} ranker: chosen (w, beta) = ({w:g}, {beta:g}); "
            + "; ".join(f"{key} {value:.4f}" for key, value in cells.items())
        )
        print(
            f"{'':>14} the blend's candidates by the DCN score alone: NDCG@10 {alone.metric('ndcg', 10):.4f}, "
            f"Recall@100 {alone.metric('recall', 100):.4f}"
        )
    a, b = reports["hard_negative"][chosen["hard_negative"]], reports["current"][chosen["current"]]
    comparison = {}
    for m, k in METRICS:
        for s in SLICES:
            c = paired_comparison(
                a.per_user[f"{m}@{k}"][a.masks[s]], b.per_user[f"{m}@{k}"][b.masks[s]], args.bootstrap
            )
            comparison[f"{s}:{m}@{k}"] = c
            print(
                f"  hard_negative vs current, {s} {m}@{k}: {c['mean']:.4f} vs {c['reference_mean']:.4f} "
                f"({c['lift']:+.1%} [{c['lift_ci_low']:+.1%}, {c['lift_ci_high']:+.1%}], p={c['p_value']:.2g})"
            )
    result["comparison"] = comparison
    result["per_user"] = {
        name: {
            **{f"{m}@{k}": r[chosen[name]].per_user[f"{m}@{k}"].tolist() for m, k in METRICS},
            **{s: r[chosen[name]].masks[s].tolist() for s in SLICES},
        }
        for name, r in reports.items()
    }
    for name in reports:
        print(f"\n{name} ranker, eval NDCG@10 / Recall@100 over the grid (rows w, columns beta):")
        grid = {k: v for k, v in reports[name].items() if isinstance(k, tuple)}
        betas = sorted({k[1] for k in grid})
        print("w \\ beta " + "".join(f"{b_:>14g}" for b_ in betas))
        for w in sorted({k[0] for k in grid}):
            print(
                f"{w:<9g}"
                + "".join(
                    f"  {grid[(w, b_)].metric('ndcg', 10):.3f}/{grid[(w, b_)].metric('recall', 100):.3f}"
                    for b_ in betas
                )
            )
    if args.halves:
        rng = np.random.default_rng(0)
        half = rng.random(len(eval_set)) < 0.5
        result["halves"] = {}
        for name, r in reports.items():
            scores = []
            for choose_on in (half, ~half):
                key = choose(r, choose_on)
                score_on = ~choose_on
                scores.append((key, float(np.nanmean(r[key].per_user["ndcg@10"][score_on])), int(score_on.sum())))
            total = sum(s * n for _, s, n in scores) / sum(n for _, _, n in scores)
            result["halves"][name] = {"chosen": [list(k) for k, _, _ in scores], "ndcg@10_held_out": total}
            points = [k for k, _, _ in scores]
            print(f"{name}: chosen on one half, scored on the other: NDCG@10 {total:.4f} (points {points})")
    result["seconds"] = time.time() - started
    result["machine"] = f"{cpu_model()}, {cores()} cores, {memory_gib()}"
    (out / "result.json").write_text(json.dumps(result, indent=2, default=float))
    print(f"\nwrote {out / 'result.json'} ({result['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
