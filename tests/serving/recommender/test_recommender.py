"""The recommend pipeline stage by stage, on a real Redis feature store with stand-in models."""

import time

import numpy as np
import pytest

from towerflow.models import features
from towerflow.serving.recommender.config import FALLBACK_TOP_N, ServiceConfig
from towerflow.serving.recommender.recommender import BadRequestError


def config(**sections) -> ServiceConfig:
    return ServiceConfig.from_dict(sections)


NO_RERANK = {
    "reranking": {"diversity_lambda": 1.0, "freshness_boost": 0.0, "novelty_weight": 0.0},
    "cold_start": {"popularity_candidates": 0},
}


def ids(response):
    return [i["item_id"] for i in response["items"]]


def test_warm_user_goes_through_every_stage(make_recommender, world):
    r, models = make_recommender(config(**NO_RERANK))
    out = r.recommend({"user_id": "warm", "k": 10, "context": {"timestamp": world.AS_OF}, "explore": False})
    assert out["fallback"] is None
    assert out["user_state"] == "warm"
    assert out["model_versions"] == {"two_tower": 1, "ranker": 1}
    assert len(out["items"]) == 10
    assert set(out["timings_ms"]) == {"features", "retrieval", "ranking", "reranking", "exploration", "total"}
    assert models.calls == {"query": 1, "rank": 1}  # ONE ranker call for all candidates
    seen = {f"i{n}" for n in range(20, 32)}
    assert not seen & set(ids(out))  # seen items never come back
    for item in out["items"]:
        s = item["stage_scores"]
        # final = retrieval logit + w x interaction score, w = the served version's weight (0.5)
        assert s["final"] == pytest.approx(s["retrieval"] + 0.5 * s["ranking"], abs=1e-5)
        assert item["score"] == pytest.approx(s["final"], abs=1e-5)
        assert item["title"] == f"Movie {item['item_id'][1:]}"
        assert item["explanation"]
    scores = [i["score"] for i in out["items"]]
    assert scores == sorted(scores, reverse=True)


def test_catalog_cache_entries_are_untracked_by_the_garbage_collector(make_recommender, world):
    import gc

    r, _ = make_recommender(config(**NO_RERANK))
    r.recommend({"user_id": "warm", "k": 10, "context": {"timestamp": world.AS_OF}, "explore": False})
    entries = [row for row in r._catalog.values() if row is not None]
    assert entries and any(row[features.ITEM_GENRES] for row in entries)
    gc.collect()
    # a cache of ~200,000 tracked item dicts (genre lists) made each full collection ~150 ms
    assert not any(gc.is_tracked(row) for row in entries)


def test_ranking_weight_comes_from_the_served_version(make_recommender, world):
    body = {"user_id": "warm", "k": 30, "context": {"timestamp": world.AS_OF}, "explore": False}
    r0, _ = make_recommender(config(**NO_RERANK), weight=0.0)
    r5, _ = make_recommender(config(**NO_RERANK), weight=100.0)
    plain, heavy = r0.recommend(body), r5.recommend(body)
    assert [i["stage_scores"]["final"] for i in plain["items"]] == [
        i["stage_scores"]["retrieval"] for i in plain["items"]
    ]
    # with a large weight the ranker (which prefers low item numbers) decides the order
    numbers = [int(i[1:]) for i in ids(heavy)]
    assert numbers[:5] == sorted(numbers)[:5]


def test_retrieval_excludes_requested_and_orders_by_dot_product(make_recommender, index, world):
    r, _ = make_recommender(config(**NO_RERANK, ranking={"enabled": False}))
    out = r.recommend(
        {"user_id": "fresh", "k": 5, "context": {"timestamp": world.AS_OF}, "exclude": ["i0", "i1"], "explore": False}
    )
    assert out["user_state"] == "cold"
    query = r.watcher.client.query_embedding({features.USER_ID: "fresh"}, 1, 1.0)
    exact = [str(index.ids[j]) for j in np.argsort(-(index.embeddings @ query)) if index.ids[j] not in ("i0", "i1")]
    assert ids(out) == exact[:5]


def test_unknown_and_light_users_are_cold_and_get_segment_popularity(make_recommender, world):
    r, _ = make_recommender(
        config(retrieval={"top_n": 3}, reranking={"diversity_lambda": 1.0}, cold_start={"popularity_candidates": 5})
    )
    unknown = r.recommend({"user_id": "nobody", "k": 3, "context": {"timestamp": world.AS_OF}})
    assert unknown["user_state"] == "cold" and unknown["fallback"] is None and len(unknown["items"]) == 3
    light = r.recommend({"user_id": "light", "k": 40, "context": {"timestamp": world.AS_OF}, "explore": False})
    assert light["user_state"] == "cold"
    assert {"i1", "i2"}.isdisjoint(ids(light))
    # the last week's events (i5..i9) are all by a woman aged 30: the favourites of the segment of
    # "fresh" (woman, 31), not of "light" (man, 22)
    assert not any(i["source"] == "popularity" for i in light["items"])
    fresh = r.recommend({"user_id": "fresh", "k": 40, "context": {"timestamp": world.AS_OF}, "explore": False})
    assert fresh["user_state"] == "cold"
    popular = {i["item_id"] for i in fresh["items"] if i["source"] == "popularity"}
    assert popular and popular <= {f"i{n}" for n in range(5, 10)}
    assert len(fresh["items"]) == 3 + len(popular)
    warm = r.recommend({"user_id": "warm", "k": 40, "context": {"timestamp": world.AS_OF}, "explore": False})
    assert warm["user_state"] == "warm" and len(warm["items"]) == 3  # warm users get no popularity candidates


def test_warm_threshold_is_configurable(make_recommender, world):
    r, _ = make_recommender(config(cold_start={"min_events": 2}))
    assert r.recommend({"user_id": "light", "k": 3, "context": {"timestamp": world.AS_OF}})["user_state"] == "warm"


def test_exploration_is_deterministic_per_request_id_and_shrinks_with_engagement(make_recommender, world):
    cfg = config(exploration={"epsilon0": 1.0, "protected_top": 2})
    r, _ = make_recommender(cfg)
    body = {"user_id": "fresh", "k": 8, "context": {"timestamp": world.AS_OF}, "request_id": "req-1"}
    first, again = r.recommend(body), r.recommend(body)
    assert ids(first) == ids(again)
    assert [i["explored"] for i in first["items"]] == [i["explored"] for i in again["items"]]
    explored = [i for i in first["items"] if i["explored"]]
    assert explored and all(i["explanation"] == "exploring" for i in explored)
    assert not any(i["explored"] for i in first["items"][:2])  # protected slots
    assert first["epsilon"] == pytest.approx(1.0)  # no events yet
    other = r.recommend({**body, "request_id": "req-2"})
    assert ids(other) != ids(first)  # another request explores differently
    engaged = r.recommend({**body, "user_id": "warm"})
    assert engaged["epsilon"] == pytest.approx(1.0 / np.sqrt(1 + 12))
    off = r.recommend({**body, "explore": False})
    assert not any(i["explored"] for i in off["items"]) and off["epsilon"] == 0


def test_model_server_down_falls_back_to_recent_store_popularity(make_recommender, world):
    r, models = make_recommender()
    models.down = True
    out = r.recommend({"user_id": "warm", "k": 5, "context": {"timestamp": world.AS_OF}})
    assert out["fallback"]["stage"] == "retrieval"
    assert "UNAVAILABLE" in out["fallback"]["reason"]
    assert ids(out)[:5] and set(ids(out)) <= {f"i{n}" for n in range(40)}
    assert {f"i{n}" for n in range(5, 10)} >= set(ids(out))  # the last week's events are i5..i9
    assert all(i["explanation"] == "popular this week" for i in out["items"])


def test_no_served_version_falls_back(make_recommender, world):
    r, _ = make_recommender(served=False)
    out = r.recommend({"user_id": "warm", "k": 3, "context": {"timestamp": world.AS_OF}})
    assert out["fallback"]["stage"] == "retrieval" and len(out["items"]) == 3


def test_store_down_falls_back_to_the_in_process_list(make_recommender, world):
    r, _ = make_recommender()
    assert r._popular  # filled by refresh_popular at start

    class Down:
        def __getattr__(self, name):
            from towerflow.serving.feature_store import FeatureStoreUnavailable

            def fail(*a, **k):
                raise FeatureStoreUnavailable("feature store unavailable: ConnectionError")

            return fail

    r.store = Down()
    out = r.recommend({"user_id": "warm", "k": 4, "context": {"timestamp": world.AS_OF}, "exclude": ["i5"]})
    assert out["fallback"]["stage"] == "features" and "FeatureStoreUnavailable" in out["fallback"]["reason"]
    assert len(out["items"]) == 4 and "i5" not in ids(out)
    assert all(i["title"] == f"Movie {i['item_id'][1:]}" for i in out["items"])


def test_ranking_failure_keeps_retrieval_order(make_recommender, world):
    r, models = make_recommender(config(**NO_RERANK))

    def broken(*a, **k):
        raise RuntimeError("ranker exploded")

    models.rank = broken
    out = r.recommend({"user_id": "warm", "k": 5, "context": {"timestamp": world.AS_OF}, "explore": False})
    assert out["fallback"]["stage"] == "ranking"
    retrieval = [i["stage_scores"]["retrieval"] for i in out["items"]]
    assert retrieval == sorted(retrieval, reverse=True)


def test_stage_over_budget_falls_back(make_recommender, world):
    import time

    r, models = make_recommender(config(budgets_ms={"retrieval": 20}))
    slow = models.query_embedding

    def sleepy(*a, **k):
        time.sleep(0.2)
        return slow(*a, **k)

    models.query_embedding = sleepy
    out = r.recommend({"user_id": "warm", "k": 5, "context": {"timestamp": world.AS_OF}})
    assert out["fallback"]["stage"] == "retrieval" and "budget" in out["fallback"]["reason"]
    assert len(out["items"]) == 5 and out["timings_ms"]["retrieval"] < 150


def test_cpu_stage_over_budget_falls_back_when_it_returns(make_recommender, world):
    # re-ranking runs in the request's thread: a slow one is noticed when it returns, and its result dropped
    r, _ = make_recommender(config(budgets_ms={"reranking": 5}))
    original = r._rerank

    def slow(state):
        time.sleep(0.05)
        return list(reversed(original(state)))

    r._rerank = slow
    out = r.recommend({"user_id": "warm", "k": 5, "context": {"timestamp": world.AS_OF}, "explore": False})
    assert out["fallback"]["stage"] == "reranking" and "budget" in out["fallback"]["reason"]
    assert out["timings_ms"]["reranking"] >= 50
    final = [i["stage_scores"]["final"] for i in out["items"]]
    assert len(final) == 5 and final == sorted(final, reverse=True)  # the ranking order, not the reversed list


def test_bad_requests_are_refused_with_a_message(make_recommender):
    r, _ = make_recommender()
    for body, words in (
        ({"k": 5}, "user_id"),
        ({"user_id": "warm", "k": 0}, "k must be"),
        ({"user_id": "warm", "k": 1000}, "k must be"),
        ({"user_id": "warm", "k": "ten"}, "k must be"),
        ({"user_id": "warm", "context": {"timestamp": "yesterday"}}, "timestamp"),
        ({"user_id": "warm", "exclude": "i1"}, "exclude"),
        ({"user_id": "warm", "surprise": 1}, "unknown field"),
    ):
        with pytest.raises(BadRequestError, match=words):
            r.recommend(body)


def test_query_embedding_cache_is_used_and_dropped_by_an_event(make_recommender, store):
    import time

    r, models = make_recommender()
    now = int(time.time())
    body = {"user_id": "warm", "k": 3, "context": {"timestamp": now}, "explore": False}
    r.recommend(body)
    r.recommend(body)
    assert models.calls["query"] == 1
    store.record_event("warm", "i3", "click", timestamp=now - 10)
    r.recommend(body)
    assert models.calls["query"] == 2
    # a replay of the past does not use the cache
    r.recommend({**body, "context": {"timestamp": now - 10 * 86400}})
    assert models.calls["query"] == 3


# The tiny world's popularity as of AS_OF: i5..i9 have one event each in the last 14 days; i1, i2 and
# warm's i20..i31 one event each, older. Recent count first (ties by id), then all-time count (ties by id).
RECENTLY_POPULAR = ["i5", "i6", "i7", "i8", "i9", "i1", "i2"] + [f"i{n}" for n in range(20, 32)]


def test_recently_popular_items_come_in_the_offline_evaluations_order(make_recommender, world):
    r, _ = make_recommender()
    assert r.recently_popular(world.AS_OF, 8, set()) == RECENTLY_POPULAR[:8]
    assert r.recently_popular(world.AS_OF, 4, {"i6", "i1"}) == ["i5", "i7", "i8", "i9"]
    assert r.recently_popular(world.AS_OF, 3, {"i5", "i6", "i7", "i8"}) == ["i9", "i1", "i2"]
    assert r.recently_popular(world.AS_OF, 100, set()) == RECENTLY_POPULAR  # no item without events


def test_popularity_term_and_recently_popular_candidates_from_the_pushed_evaluation(make_recommender, world):
    evaluation = {"popularity_weight": 2.0, "rerank_depth": 6}
    r, models = make_recommender(config(retrieval={"top_n": 3}, **NO_RERANK), evaluation=evaluation)
    assert r.popularity_blend(r.watcher.current) == (2.0, 6)
    out = r.recommend({"user_id": "warm", "k": 40, "context": {"timestamp": world.AS_OF}, "explore": False})
    assert out["fallback"] is None and models.calls["rank"] == 1  # still ONE ranker call
    got = ids(out)
    # retrieval's top 3 + the 6 most recently popular items warm has not seen (i20..i31 are seen)
    popular = [i for i in RECENTLY_POPULAR if i not in {f"i{n}" for n in range(20, 32)}][:6]
    assert set(popular) <= set(got) and len(got) == len(set(got))
    assert len(got) == 3 + len(set(popular) - {i["item_id"] for i in out["items"] if i["source"] == "retrieval"})
    for item in out["items"]:
        s = item["stage_scores"]
        recent = 1 if item["item_id"] in {f"i{n}" for n in range(5, 10)} else 0
        assert s["popularity"] == pytest.approx(2.0 * np.log1p(recent))
        assert s["final"] == pytest.approx(s["retrieval"] + s["popularity"] + 0.5 * s["ranking"], abs=1e-5)
    scores = [i["score"] for i in out["items"]]
    assert scores == sorted(scores, reverse=True)


def test_retrieval_depth_is_the_pushed_evaluations_unless_the_config_sets_it(make_recommender, world):
    # the service ranks what the offline evaluation (and the gate) scored: retrieval's top rerank_depth
    no_popular = {"popularity_weight": 0.0}

    def body(k):
        return {"user_id": "warm", "k": k, "context": {"timestamp": world.AS_OF}, "explore": False}

    r, models = make_recommender(config(**NO_RERANK), evaluation={**no_popular, "rerank_depth": 4})
    assert r.retrieval_depth(r.watcher.current, 2) == 4
    out = r.recommend(body(4))
    assert out["fallback"] is None and len(out["items"]) == 4 and models.calls["rank"] == 1
    assert {i["source"] for i in out["items"]} == {"retrieval"}
    assert len(r.ranked(body(20))[0]) == 20  # a k above the depth still gets k candidates
    assert len(r.ranked(body(2))[0]) == 4
    set_by_config, _ = make_recommender(
        config(retrieval={"top_n": 7}, **NO_RERANK), evaluation={**no_popular, "rerank_depth": 4}
    )
    assert set_by_config.retrieval_depth(set_by_config.watcher.current, 2) == 7
    assert len(set_by_config.ranked(body(2))[0]) == 7
    assert len(set_by_config.ranked(body(20))[0]) == 7  # a configured depth is used as it is
    no_evaluation, _ = make_recommender(config(**NO_RERANK))
    assert no_evaluation.retrieval_depth(no_evaluation.watcher.current, 10) == FALLBACK_TOP_N


def test_popularity_blend_settings_from_the_config_override_the_evaluation(make_recommender, world):
    evaluation = {"popularity_weight": 2.0, "rerank_depth": 6}
    body = {"user_id": "warm", "k": 40, "context": {"timestamp": world.AS_OF}, "explore": False}
    off, _ = make_recommender(
        config(retrieval={"top_n": 3}, ranking={"popularity_weight": 0.0}, **NO_RERANK), evaluation=evaluation
    )
    plain = off.recommend(body)
    assert len(plain["items"]) == 3 and all("popularity" not in i["stage_scores"] for i in plain["items"])
    term_only, _ = make_recommender(
        config(retrieval={"top_n": 3}, ranking={"popularity_candidates": 0}, **NO_RERANK), evaluation=evaluation
    )
    out = term_only.recommend(body)
    assert ids(out) and set(ids(out)) <= set(ids(plain))  # the term, no extra candidates
    assert all("popularity" in i["stage_scores"] for i in out["items"])
    no_evaluation, _ = make_recommender(config(retrieval={"top_n": 3}, **NO_RERANK))
    assert no_evaluation.popularity_blend(no_evaluation.watcher.current) == (0.0, 0)  # a version pushed without it
