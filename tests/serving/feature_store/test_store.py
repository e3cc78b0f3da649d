"""The store's reads and writes on both backends, against features computed by hand from the tiny set."""

import json
import time

import numpy as np
import pytest

from towerflow.models import features
from towerflow.serving.feature_store import InvalidEvent, NotMaterialized
from towerflow.serving.feature_store import keys as store_keys


def test_an_empty_store_says_it_is_not_materialized(store):
    with pytest.raises(NotMaterialized, match="towerflow features materialize"):
        store.query_features("u1", 0)


def test_materialize_summary_counts_what_was_written(backend, tiny):
    summary = tiny.load(backend[1])
    assert (summary.users, summary.items, summary.events) == (3, 3, 5)
    assert summary.events_after_as_of == 1 and summary.events_of_unknown_items == 1
    assert summary.version == "test-1" and summary.bytes > 0


def test_query_features_rebuild_point_in_time_history(store, tiny):
    tiny.load(store.client)
    day = tiny.DAY
    at = tiny.T0 + 21 * day
    got = store.query_features("u1", at)
    assert got[features.HIST_ITEM_IDS] == ["i1", "i2", "i3"]  # the tie at T0+10 broken by item id
    assert got[features.USER_PRIOR_COUNT] == 3
    assert got[features.USER_PRIOR_MEAN_RATING] == pytest.approx(3.0)
    assert got[features.USER_DAYS_SINCE_FIRST] == pytest.approx((21 * day - 10) / day)
    assert (got[features.USER_AGE], got[features.USER_GENDER], got[features.USER_ZIP]) == (30, "F", "12345")
    # day 121 (1970-05-02) is a Saturday: day 0 was a Thursday (3) and 121 = 17 weeks + 2 days
    assert (got[features.CTX_HOUR], got[features.CTX_DAY_OF_WEEK]) == (0, 5)
    # strictly before: at T0+10 nothing, one second later the two tied events
    assert store.query_features("u1", tiny.T0 + 10)[features.USER_PRIOR_COUNT] == 0
    later = store.query_features("u1", tiny.T0 + 11)
    assert later[features.HIST_ITEM_IDS] == ["i1", "i2"] and later[features.USER_PRIOR_MEAN_RATING] == 4.0
    assert set(got) == set(features.QUERY_FEATURES)


def test_unknown_and_profileless_users_get_the_schema_defaults(store, tiny):
    tiny.load(store.client)
    nobody = store.query_features("nobody", tiny.AS_OF)
    assert nobody[features.USER_AGE] == -1 and nobody[features.USER_GENDER] == ""
    assert nobody[features.HIST_ITEM_IDS] == [] and nobody[features.USER_PRIOR_MEAN_RATING] == 0.0
    assert store.user_profile("nobody") is None
    assert store.user_profile("u3")[features.USER_AGE] == -1
    assert [e.item_id for e in store.user_events("u3")] == ["i1"]
    assert store.user_events("u2") == [features.Event(tiny.T0 + tiny.DAY + 5, "i1", 4.0)]  # d5 is after as_of


def test_items_and_point_in_time_item_features(store, tiny):
    tiny.load(store.client)
    assert store.items(["i2", "zz"]) == [
        {"item_id": "i2", "item_title": "Two", "item_genres": ["Comedy", "Drama"], "item_release_year": 1995},
        None,
    ]
    assert store.all_item_ids() == ["i1", "i2", "i3"]
    day, at = tiny.DAY, tiny.T0 + 20 * tiny.DAY + 101
    i1, i2, i3, unknown = store.item_features_at(["i1", "i2", "i3", "zz"], at)
    assert i1 == {"item_prior_count": 3, "item_recent_count": 1, "item_days_since_first": (20 * day + 91) / day}
    assert i2 == {"item_prior_count": 1, "item_recent_count": 0, "item_days_since_first": (20 * day + 91) / day}
    assert i3 == {"item_prior_count": 1, "item_recent_count": 1, "item_days_since_first": 101 / day}
    assert unknown == {"item_prior_count": 0, "item_recent_count": 0, "item_days_since_first": 0.0}
    rows = store.item_rows(["i3", "zz"], at)
    assert rows == [{**store.items(["i3"])[0], **i3}, None]
    # the same values the one function gives on the full timestamp list
    full = [tiny.T0 + 10, tiny.T0 + day + 5, tiny.T0 + 20 * day + 100]
    for t in (tiny.T0, tiny.T0 + 10, tiny.T0 + 11, tiny.T0 + 15 * day + 5, tiny.T0 + 15 * day + 6, at):
        assert store.item_features_at(["i1"], t)[0] == features.item_features_at(full, t)


def test_popular_items_all_time_windowed_and_per_segment(store, tiny):
    tiny.load(store.client)
    day = tiny.DAY
    assert store.popular_items(tiny.AS_OF, 3) == [("i1", 3.0), ("i2", 1.0), ("i3", 1.0)]
    assert store.popular_items(tiny.AS_OF, 1) == [("i1", 3.0)]
    assert store.popular_items(tiny.AS_OF, 5, window_days=10) == [("i1", 1.0), ("i3", 1.0)]
    # exact to the second at both edges: u3's i1 at T0+20d+100 is not strictly before as_of
    assert store.popular_items(tiny.T0 + 20 * day + 100, 5, window_days=1) == [("i3", 1.0)]
    assert store.popular_items(tiny.T0 + 20 * day + 101, 5, window_days=0.5) == [("i1", 1.0), ("i3", 1.0)]
    assert store.popular_items(tiny.AS_OF, 5, segment={"gender": "F"}) == [("i1", 1.0), ("i2", 1.0), ("i3", 1.0)]
    assert store.popular_items(tiny.AS_OF, 5, segment={"age_bucket": 1}) == [("i1", 1.0)]  # u2 is 17
    assert store.popular_items(tiny.AS_OF, 5, segment={"age_bucket": 1, "gender": "F"}) == []
    assert store.popular_items(tiny.AS_OF, 5, window_days=30, segment={"gender": ""}) == [("i1", 1.0)]  # u3
    with pytest.raises(ValueError, match="segment keys"):
        store.popular_items(tiny.AS_OF, 5, segment={"country": "NL"})


def test_age_buckets_match_the_models():
    preprocessing = pytest.importorskip("towerflow.models.preprocessing")
    assert store_keys.AGE_BOUNDARIES == preprocessing.AGE_BOUNDARIES


def test_record_event_updates_history_item_and_popularity_and_logs_it(store, tiny, store_config):
    tiny.load(store.client)
    at = tiny.T0 + 22 * tiny.DAY
    result = store.record_event("u2", "i3", "rating", rating=5, timestamp=at, event_id="e-1")
    assert result == {"event_id": "e-1", "feature_set_id": "test-1", "timestamp": at, "duplicate": False}
    got = store.query_features("u2", at + 1)
    assert got[features.HIST_ITEM_IDS] == ["i1", "i3"] and got[features.USER_PRIOR_MEAN_RATING] == 4.5
    assert store.item_features_at(["i3"], at + 1)[0]["item_prior_count"] == 2
    assert ("i3", 1.0) in store.popular_items(at + 1, 5, segment={"age_bucket": 1})
    [line] = open(f"{store_config.events_dir}/" + __import__("os").listdir(store_config.events_dir)[0]).readlines()
    logged = json.loads(line)
    assert (logged["user_id"], logged["item_id"], logged["rating"], logged["timestamp"]) == ("u2", "i3", 5.0, at)


def test_a_retried_event_id_is_counted_once(store, tiny):
    tiny.load(store.client)
    at = tiny.T0 + 22 * tiny.DAY
    for _ in range(3):
        store.record_event("u2", "i3", "rating", rating=5, timestamp=at, event_id="same")
    assert store.record_event("u2", "i3", "rating", rating=5, timestamp=at, event_id="same")["duplicate"]
    assert store.query_features("u2", at + 1)[features.USER_PRIOR_COUNT] == 2
    assert store.item_features_at(["i3"], at + 1)[0]["item_prior_count"] == 2
    # in [T0+19d+1, T0+22d+1): u1's i3, u3's i1 and the new i3 once
    assert store.popular_items(at + 1, 5, window_days=3) == [("i3", 2.0), ("i1", 1.0)]
    assert sum(1 for _ in store.event_log.directory.glob("*.jsonl")) == 1
    assert len(next(store.event_log.directory.glob("*.jsonl")).read_text().splitlines()) == 1


def test_implicit_events_enter_history_with_the_implicit_rating(store, tiny):
    tiny.load(store.client)
    now = int(time.time())
    store.record_event("u2", "i3", "click")
    [*_, last] = store.user_events("u2")
    assert last.item_id == "i3" and last.rating == store.config.implicit_rating and abs(last.timestamp - now) <= 2


BAD_EVENTS = [
    (dict(user_id="nobody", item_id="i1", event_type="rating", rating=4), "unknown user"),
    (dict(user_id="u1", item_id="i9", event_type="rating", rating=4), "unknown item"),
    (dict(user_id="u1", item_id="i1", event_type="like"), "event type"),
    (dict(user_id="u1", item_id="i1", event_type="rating"), "needs a numeric rating"),
    (dict(user_id="u1", item_id="i1", event_type="rating", rating=7), "outside"),
    (dict(user_id="u1", item_id="i1", event_type="rating", rating=float("nan")), "numeric rating"),
    (dict(user_id="u1", item_id="i1", event_type="click", rating=4), "only rating events"),
    (dict(user_id="u1", item_id="i1", event_type="click", timestamp=-5), "negative"),
    (dict(user_id="u1", item_id="i1", event_type="click", timestamp="yesterday"), "integer seconds"),
    (dict(user_id="u1", item_id="i1", event_type="click", timestamp=1.5), "integer seconds"),
    (dict(user_id="u1", item_id="i1", event_type="click", timestamp=True), "integer seconds"),
    (dict(user_id="u1", item_id="i1", event_type="click", timestamp=int(time.time()) + 86400), "ahead"),
    (dict(user_id="u" * 1000, item_id="i1", event_type="click"), "limit is 128"),
    (dict(user_id="u1", item_id="i1", event_type="click", event_id="x" * 100_000), "limit is 128"),
    (dict(user_id="u 1", item_id="i1", event_type="click"), "may only hold"),
    (dict(user_id="u1", item_id="i1\x1f", event_type="click"), "may only hold"),
    (dict(user_id=42, item_id="i1", event_type="click"), "non-empty string"),
]


@pytest.mark.parametrize("event,message", BAD_EVENTS, ids=[m for _, m in BAD_EVENTS])
def test_bad_events_get_a_clear_error_and_store_nothing(store, tiny, event, message):
    tiny.load(store.client)
    before = (store.user_events("u1"), store.item_features_at(["i1"], tiny.AS_OF), store.popular_items(2**40, 5))
    with pytest.raises(InvalidEvent, match=message):
        store.record_event(**event)
    after = (store.user_events("u1"), store.item_features_at(["i1"], tiny.AS_OF), store.popular_items(2**40, 5))
    assert after == before
    assert store.event_log is None or not any(store.event_log.directory.glob("*.jsonl"))
    assert store.ping()  # and the store keeps serving


def test_cached_embeddings_expire_and_events_invalidate_them(store, tiny):
    tiny.load(store.client)
    store.set_cached_embedding("query", "u1", 3, [1.0, 2.0, 3.0], ttl_seconds=60)
    store.set_cached_embedding("item", "i1", 3, [4.0, 5.0], ttl_seconds=0.2)
    np.testing.assert_array_equal(store.get_cached_embedding("query", "u1", 3), [1.0, 2.0, 3.0])
    assert store.get_cached_embedding("query", "u1", 4) is None  # another model version
    np.testing.assert_array_equal(store.get_cached_embedding("item", "i1", 3), [4.0, 5.0])
    time.sleep(0.3)
    assert store.get_cached_embedding("item", "i1", 3) is None
    store.record_event("u1", "i2", "view")
    assert store.get_cached_embedding("query", "u1", 3) is None
    with pytest.raises(ValueError, match="embedding kind"):
        store.get_cached_embedding("Movie Vectors", "i1", 3)


def test_keys_of_one_user_or_item_share_a_cluster_slot(backend, tiny):
    kind, client = backend
    tiny.load(client)
    k = store_keys.Keys("test-1")
    if kind == "cluster":
        assert len({client.keyslot(key) for key in k.user_keys("u1")}) == 1
        assert len({client.keyslot(key) for key in (k.item("i1"), k.item_times("i1"), k.item_embeddings("i1"))}) == 1
        day = store_keys.day_of(tiny.T0)
        assert (
            len({client.keyslot(key) for key in (k.day_events(day), k.day_counts(day), k.day_counts(day, "g:F"))}) == 1
        )
    assert client.exists(k.profile("u1"), k.history("u1"), k.item("i1"), k.item_times("i1")) == 4


@pytest.mark.parametrize("size", [0, 1, 5, 300, 25_000])
def test_popularity_stand_ins_give_what_the_real_timestamps_give(size):
    """The counts the store reads (before the window, in it, first timestamp) through the one function equal
    the function on the real sorted timestamps; 25,000 takes the lazy-sequence path."""
    from towerflow.serving.feature_store.store import FeatureStore

    rng = np.random.default_rng(size)
    timestamps = sorted(int(t) for t in rng.integers(0, 200 * 86400, size))
    window = int(features.RECENT_WINDOW_DAYS * features.SECONDS_PER_DAY)
    for as_of in [0, 1, 100 * 86400, 150 * 86400 + 7, 300 * 86400, *timestamps[:3], *timestamps[-3:]]:
        before = [t for t in timestamps if t < as_of]
        n_old = sum(t < as_of - window for t in before)
        first = timestamps[0] if timestamps else None
        got = FeatureStore._popularity(n_old, len(before) - n_old, first, as_of)
        assert got == features.item_features_at(timestamps, as_of), (size, as_of)
