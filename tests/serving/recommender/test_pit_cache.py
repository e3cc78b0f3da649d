"""PointInTimeCache: values reused per request time for `seconds`, never across times; invalidation."""

import pytest

from towerflow.serving.recommender.pit_cache import PointInTimeCache


class Store:
    """Stands in for FeatureStore.item_features_at: the value names the item, the time and the read."""

    def __init__(self):
        self.reads: list[list[str]] = []

    def fetch(self, ids, as_of):
        self.reads.append(list(ids))
        return [{"item": i, "as_of": as_of, "read": len(self.reads)} for i in ids]


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_values_of_one_time_are_reused_and_only_missing_items_are_read():
    store, clock, lookups = Store(), Clock(), []
    cache = PointInTimeCache(1.0, clock=clock, on_lookup=lambda hits, misses: lookups.append((hits, misses)))
    first = cache.get(["a", "b"], 50, store.fetch)
    second = cache.get(["b", "c", "c", "a"], 50, store.fetch)
    assert store.reads == [["a", "b"], ["c"]]  # "c" read once although asked twice
    assert [v["item"] for v in second] == ["b", "c", "c", "a"]
    assert second[0] is first[1] and second[3] is first[0]
    assert lookups == [(0, 2), (3, 1)]  # hits: answered without a read (b, a, the second c)


def test_another_time_is_never_answered_from_this_ones_values():
    store = Store()
    cache = PointInTimeCache(1.0, clock=Clock())
    cache.get(["a"], 50, store.fetch)
    assert cache.get(["a"], 51, store.fetch)[0]["as_of"] == 51
    assert store.reads == [["a"], ["a"]]


def test_values_expire_after_seconds_of_wall_clock():
    store, clock = Store(), Clock()
    cache = PointInTimeCache(1.0, clock=clock)
    cache.get(["a"], 50, store.fetch)
    clock.now += 0.9
    assert cache.get(["a"], 50, store.fetch)[0]["read"] == 1
    clock.now += 0.2  # 1.1 s after the read
    assert cache.get(["a"], 50, store.fetch)[0]["read"] == 2


def test_invalidate_forgets_everything_and_a_read_in_flight_is_not_kept():
    store = Store()
    cache = PointInTimeCache(1.0, clock=Clock())
    cache.get(["a"], 50, store.fetch)
    cache.invalidate()
    assert cache.get(["a"], 50, store.fetch)[0]["read"] == 2

    def fetch_then_invalidated(ids, as_of):
        values = store.fetch(ids, as_of)
        cache.invalidate()  # an event arrives while the store is read
        return values

    got = cache.get(["a", "b"], 60, fetch_then_invalidated)
    assert [v["item"] for v in got] == ["a", "b"]  # the request still gets what it read
    assert cache.get(["a", "b"], 60, store.fetch)[0]["read"] == 4  # but nobody else does


def test_seconds_zero_reads_every_time_and_times_are_bounded():
    store = Store()
    off = PointInTimeCache(0)
    off.get(["a"], 50, store.fetch)
    off.get(["a"], 50, store.fetch)
    assert len(store.reads) == 2
    bounded = PointInTimeCache(60.0, max_times=3, clock=Clock())
    for t in range(10):
        bounded.get(["a"], t, store.fetch)
    assert len(bounded._entries) <= 3
    with pytest.raises(ValueError, match="seconds"):
        PointInTimeCache(-1)


@pytest.mark.parametrize("seconds", [-1, 61, "1", True, None])
def test_the_service_config_refuses_a_bad_cache_time(seconds):
    from towerflow.serving.recommender.config import ServiceConfig

    with pytest.raises(ValueError, match="item_popularity_cache_seconds"):
        ServiceConfig.from_dict({"ranking": {"item_popularity_cache_seconds": seconds}})
    assert (
        ServiceConfig.from_dict({"ranking": {"item_popularity_cache_seconds": 0}}).ranking.item_popularity_cache_seconds
        == 0
    )
