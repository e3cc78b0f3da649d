"""`PointInTimeCache`: the items' point-in-time popularity, shared by the requests that ask for the same time.

Ranking reads, per candidate, the item's popularity as of the request's time
(`FeatureStore.item_features_at`: three counts per item from Redis, ~400 items
per request). Live requests carry the current second as their time, so the
requests of one second ask for the same values again and again; this cache
keeps them, keyed by that time, for `seconds` of wall-clock time after they
were read. A value is exactly what the store answered for that time: the
cache never reuses one time's values for another.

What it can miss: an event written with a timestamp before a cached time, by
another process, after the read (a late event), shows in that time's values
only once the entry expires -- at most `seconds` later. Events and deletes
that go through this service drop the whole cache (`invalidate`). `seconds`
0 turns the cache off.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence


class PointInTimeCache:
    def __init__(
        self,
        seconds: float,
        max_times: int = 64,
        clock: Callable[[], float] = time.monotonic,
        on_lookup: Callable[[int, int], None] | None = None,
    ):
        """`on_lookup(hits, misses)` after every lookup (the service's metrics counter): items answered
        without a store read, items read."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        self.seconds, self.max_times, self._clock, self._on_lookup = seconds, max_times, clock, on_lookup
        self._lock = threading.Lock()
        self._entries: dict[int, tuple[float, dict[str, dict]]] = {}  # as_of -> (expiry, item id -> values)
        self._generation = 0

    def get(self, item_ids: Sequence[str], as_of: int, fetch: Callable[[list[str], int], list[dict]]) -> list[dict]:
        """Values per item at `as_of`; `fetch(ids, as_of)` (the store's read) for those not cached."""
        if self.seconds <= 0:
            return fetch(list(item_ids), as_of)
        now = self._clock()
        with self._lock:
            entry = self._entries.get(as_of)
            if entry is None or entry[0] <= now:
                self._prune(now)
                entry = self._entries[as_of] = (now + self.seconds, {})
            values, generation = entry[1], self._generation
        missing = list(dict.fromkeys(item for item in item_ids if item not in values))
        if self._on_lookup is not None:
            self._on_lookup(len(item_ids) - len(missing), len(missing))
        if not missing:
            return [values[item] for item in item_ids]
        got = dict(zip(missing, fetch(missing, as_of)))
        with self._lock:
            if generation == self._generation:  # not invalidated while the store was read
                values.update(got)
        return [got[item] if item in got else values[item] for item in item_ids]

    def invalidate(self) -> None:
        """Forgets every value (an event or a delete changed the counts)."""
        with self._lock:
            self._generation += 1
            self._entries = {}

    def _prune(self, now: float) -> None:
        self._entries = {t: e for t, e in self._entries.items() if e[0] > now}
        while len(self._entries) >= self.max_times:
            del self._entries[min(self._entries, key=lambda t: self._entries[t][0])]
