"""Re-ranking, MMR, exploration and explanations on hand-made candidates; config and rules validation."""

import time

import numpy as np
import pytest

from towerflow.models import features
from towerflow.serving.recommender import reranking
from towerflow.serving.recommender.config import ExplorationConfig, RerankingConfig, ServiceConfig, load_config
from towerflow.serving.recommender.reranking import Candidate
from towerflow.serving.recommender.rules import Rules, RulesHolder, parse_rules


def cand(item, score, genres=(), prior=10, days=100.0):
    return Candidate(
        item,
        score,
        item={features.ITEM_ID: item, features.ITEM_GENRES: list(genres)},
        pit={features.ITEM_PRIOR_COUNT: prior, features.ITEM_DAYS_SINCE_FIRST: days},
    )


def test_mmr_hand_computed():
    # scale = best - 10th best = 10 - 0 (4 items); relevance (score - 10) / 10 = [0, -0.1, -0.2, -1]; lambda 0.5
    cands = [cand("a", 10, ["x"]), cand("b", 9, ["x"]), cand("c", 8, ["y"]), cand("d", 0, ["z"])]
    # pick a (0); then b: 0.5*-0.1 - 0.5*1 = -0.55, c: 0.5*-0.2 - 0 = -0.1, d: -0.5 -> c;
    # then b: -0.55, d: -0.5 -> d; then b
    assert [c.item_id for c in reranking.mmr(cands, 4, 0.5, 10)] == ["a", "c", "d", "b"]
    assert [c.item_id for c in reranking.mmr(cands, 4, 1.0, 10)] == ["a", "b", "c", "d"]
    # depth 2: scale = 10 - 9 = 1, relevance [0, -1, -2, -10]: after a, b 0.5*-1 - 0.5*1 = -1, c 0.5*-2 - 0 = -1
    # (a tie: argmax takes the higher-scored b), d -5; then c -1 vs d -5 -> c, then d
    assert [c.item_id for c in reranking.mmr(cands, 4, 0.5, 2)] == ["a", "b", "c", "d"]


def test_score_scale_is_the_spread_of_the_best_depth_scores():
    assert reranking.score_scale([3.0, 10.0, 9.0, 0.0], 2) == 1.0  # 10 - 9
    assert reranking.score_scale([3.0, 10.0, 9.0, 0.0], 3) == 7.0  # 10 - 3
    assert reranking.score_scale([3.0, 10.0, 9.0, 0.0], 50) == 10.0  # fewer than depth: best - worst
    assert reranking.score_scale([5.0, 5.0], 2) == 1.0 and reranking.score_scale([], 20) == 1.0


def test_mmr_and_boosts_do_not_depend_on_the_score_scale():
    rng = np.random.default_rng(0)
    names = ["Action", "Comedy", "Drama"]
    for _ in range(20):
        scores = np.sort(rng.normal(size=30))[::-1]
        genres = [[g for g in names if rng.random() < 0.4] for _ in scores]
        priors = rng.integers(0, 100, size=30)
        days = rng.uniform(0, 60, size=30)
        cfg = RerankingConfig(diversity_lambda=0.7, diversity_depth=10, freshness_boost=0.2, novelty_weight=0.1)
        orders = []
        for factor, shift in ((1.0, 0.0), (7.5, -3.0)):  # the same scores in other units
            cands = [
                cand(f"i{n}", factor * float(s) + shift, g, prior=int(p), days=float(d))
                for n, (s, g, p, d) in enumerate(zip(scores, genres, priors, days))
            ]
            out = reranking.rerank(cands, 10, seen=set(), exclude=set(), rules=Rules(), context={}, config=cfg)
            orders.append([c.item_id for c in out[:10]])
        assert orders[0] == orders[1]


def test_rerank_filters_boosts_and_freshness():
    rules = parse_rules(
        {
            "blocked_items": ["b"],
            "boosted_items": {"d": 5.0},
            "availability": {"context_field": "region", "items": {"c": ["de"]}},
        }
    )
    cfg = RerankingConfig(diversity_lambda=1.0, freshness_days=30, freshness_boost=0.15, novelty_weight=0.0)
    cands = [cand("a", 10), cand("b", 9), cand("c", 8), cand("d", 1), cand("e", 0, days=3.0), cand("s", 20)]
    out = reranking.rerank(cands, 5, seen={"s"}, exclude={"zz"}, rules=rules, context={}, config=cfg)
    assert [c.item_id for c in out] == ["a", "d", "e"]  # b blocked, c not available without a region, s seen
    # the rule boost in score units (1 + 5); freshness 0.15 x the kept scores' spread (10 - 0)
    assert out[1].score == 6.0 and out[2].score == pytest.approx(1.5) and out[2].fresh
    cands = [cand("a", 10), cand("c", 8)]
    out = reranking.rerank(cands, 5, seen=set(), exclude={"a"}, rules=rules, context={"region": "de"}, config=cfg)
    assert [c.item_id for c in out] == ["c"]


def test_novelty_term_favours_the_long_tail():
    cfg = RerankingConfig(diversity_lambda=1.0, freshness_boost=0.0, novelty_weight=1.0)
    cands = [cand("head", 5.0, prior=53), cand("tail", 2.0, prior=0)]
    out = reranking.rerank(cands, 2, seen=set(), exclude=set(), rules=Rules(), context={}, config=cfg)
    assert [c.item_id for c in out] == ["tail", "head"]
    # in units of the scores' spread, 5 - 2
    assert out[1].score == pytest.approx(5.0 - 3.0 * np.log(54.0)) and out[0].score == 2.0


def test_explore_pool_is_above_the_floor_and_least_exposed():
    cfg = ExplorationConfig(epsilon0=1.0, quality_floor=0.5, protected_top=1, pool_size=2)
    ranked = [cand(f"t{n}", 100 - n, prior=1000) for n in range(3)]
    ranked += [cand("pop", 50, prior=500), cand("rare", 49, prior=1), cand("rarer", 48, prior=0)]
    ranked += [cand(f"junk{n}", -100, prior=0) for n in range(6)]  # below the floor: never explored
    top, eps = reranking.explore(ranked, 3, 0, "r1", cfg)
    assert eps == 1.0
    assert [c.item_id for c in top[:1]] == ["t0"]
    assert {c.item_id for c in top[1:]} == {"rare", "rarer"} and all(c.explored for c in top[1:])
    assert reranking.epsilon(cfg, 99) == pytest.approx(0.1)


def test_request_rng_is_reproducible():
    a = reranking.request_rng("abc", 1).random(5)
    assert np.array_equal(a, reranking.request_rng("abc", 1).random(5))
    assert not np.array_equal(a, reranking.request_rng("abc", 2).random(5))


def test_explanations():
    class Index:
        embeddings = np.array([[1, 0], [0, 1], [0.9, 0.1]], dtype=np.float32)
        rows = {"h1": 0, "h2": 1, "c": 2}

        def row_of(self, item):
            return self.rows.get(item)

    c, p, e, f, old = cand("c", 1), cand("p", 1), cand("e", 1), cand("f", 1), cand("old", 1)
    p.source, e.explored, f.fresh, old.source = reranking.POPULARITY, True, True, reranking.POPULARITY
    p.pit, old.pit = {features.ITEM_RECENT_COUNT: 3}, {features.ITEM_RECENT_COUNT: 0}
    reranking.explain([c, p, e, f, old], ["h1", "h2"], Index(), {"h1": "Toy Story"})
    assert [x.explanation for x in (c, p, e, f, old)] == [
        "because you watched Toy Story",
        "popular this week",
        "exploring",
        "new",
        "popular",  # from the all-time list: no events in the recent window
    ]


@pytest.mark.parametrize(
    "values, words",
    [
        ({"retrieval": {"top_n": 0}}, "retrieval.top_n"),
        ({"retrieval": {"protocol": "soap"}}, "retrieval.protocol"),
        ({"reranking": {"diversity_lambda": 1.5}}, "diversity_lambda"),
        ({"budgets_ms": {"ranking": -1}}, "budgets_ms.ranking"),
        ({"limits": {"max_k": 0}}, "limits.max_k"),
        ({"ranking": {"weight": 1}}, "unknown key"),
        ({"ranking": {"popularity_weight": -1}}, "ranking.popularity_weight"),
        ({"ranking": {"popularity_weight": "4"}}, "ranking.popularity_weight"),
        ({"ranking": {"popularity_candidates": 1.5}}, "ranking.popularity_candidates"),
        ({"rankin": {}}, "unknown config section"),
    ],
)
def test_config_validation(values, words):
    with pytest.raises(ValueError, match=words):
        ServiceConfig.from_dict(values)


def test_load_config_resolves_rules_next_to_it(tmp_path):
    (tmp_path / "rules.yaml").write_text("blocked_items: ['1']\n")
    path = tmp_path / "service.yaml"
    path.write_text("retrieval: {top_n: 50}\nreranking: {rules_file: rules.yaml}\n")
    cfg = load_config(path)
    assert cfg.retrieval.top_n == 50 and cfg.reranking.rules_file == str(tmp_path / "rules.yaml")
    path.write_text("retrieval: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(path)


@pytest.mark.parametrize(
    "values, words",
    [
        ({"blocked": ["1"]}, "unknown rule key"),
        ({"blocked_items": "1"}, "blocked_items must be a list"),
        ({"boosted_items": {"1": "lots"}}, "finite number"),
        ({"blocked_items": ["1"], "boosted_items": {"1": 1}}, "both blocked and boosted"),
        ({"availability": {"items": {"1": ["de"]}}}, "context_field"),
        ({"availability": {"context_field": "region", "items": {"1": "de"}}}, "list of item ids"),
    ],
)
def test_rules_validation(values, words):
    with pytest.raises(ValueError, match=words):
        parse_rules(values)


def test_rules_hot_reload_keeps_old_rules_on_a_bad_file(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("blocked_items: ['1']\n")
    holder = RulesHolder(path)
    assert holder.rules.blocked == {"1"}
    assert not holder.maybe_reload()  # unchanged
    time.sleep(0.01)
    path.write_text("blocked_items: ['2', '3']\n")
    assert holder.maybe_reload() and holder.rules.blocked == {"2", "3"}
    path.write_text("blocked_items: oops: [\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        holder.reload()
    assert holder.rules.blocked == {"2", "3"} and "not valid YAML" in holder.last_error
    assert not holder.maybe_reload()  # the broken file is not retried on every poll
    with pytest.raises(ValueError, match="rules file"):
        RulesHolder(path)  # a bad file at start-up is fatal


def test_rules_availability():
    rules = Rules(available_in={"x": frozenset({"us"})}, context_field="region")
    assert rules.allowed("y", {}) and rules.allowed("x", {"region": "us"})
    assert not rules.allowed("x", {"region": "de"}) and not rules.allowed("x", {})


def _mmr_reference(candidates, k, diversity_lambda, depth):
    """MMR written out item by item (the definition the vectorised `mmr` must reproduce)."""

    def jaccard(a, b):
        return 1.0 if not a and not b else len(a & b) / len(a | b)

    pool, rest = list(candidates[: max(k, depth)]), list(candidates[max(k, depth) :])
    scores = [c.score for c in pool]
    best = sorted(scores, reverse=True)[:depth]
    scale = best[0] - best[-1] if best[0] > best[-1] else 1.0
    relevance = [(x - best[0]) / scale for x in scores]
    max_sim, chosen, left = [0.0] * len(pool), [], list(range(len(pool)))
    while left and len(chosen) < k:
        gains = [diversity_lambda * relevance[i] - (1 - diversity_lambda) * max_sim[i] for i in left]
        best = left.pop(gains.index(max(gains)))
        chosen.append(best)
        for i in left:
            max_sim[i] = max(max_sim[i], jaccard(pool[i].genres, pool[best].genres))
    return [pool[i] for i in chosen] + [pool[i] for i in left] + rest


def test_mmr_equals_the_item_by_item_definition():
    rng = np.random.default_rng(3)
    names = ["Action", "Comedy", "Drama", "Horror", "War"]
    for trial in range(200):
        n = int(rng.integers(2, 40))
        cands = []
        for i in range(n):
            genres = [g for g in names if rng.random() < 0.3]
            score = float(rng.integers(0, 5)) if trial % 2 else float(rng.normal())  # ties on odd trials
            cands.append(Candidate(f"i{i}", score, item={features.ITEM_GENRES: genres}))
        cands.sort(key=lambda c: -c.score)
        k, lam, depth = int(rng.integers(1, 12)), float(rng.choice([0.0, 0.3, 0.7, 0.9])), int(rng.integers(1, 30))
        got = [c.item_id for c in reranking.mmr(cands, k, lam, depth)]
        assert got == [c.item_id for c in _mmr_reference(cands, k, lam, depth)], (trial, k, lam, depth)
