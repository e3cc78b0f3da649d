"""The online feature store: what the recommend service reads and writes, on Redis or Redis Cluster.

Reads are one round trip after the active version is known (a pipeline of
HGETALL / ZRANGEBYSCORE / ZCOUNT calls), and every feature is computed by THE
functions of `models.features` from the raw state the store keeps: a user's
events go through `history_features`, an item's interaction timestamps through
`item_features_at`, the request time through `context_features`.

Writes (`record_event`, `delete_user`) live in `writes.py`; this module holds
the interface, the reads and the embedding cache.
"""

from __future__ import annotations

import functools
import json
import re
import struct
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import redis
from redis.cluster import RedisCluster

from towerflow.models import features
from towerflow.serving.feature_store import keys
from towerflow.serving.feature_store.errors import NotMaterialized, unavailable_on_redis_errors
from towerflow.serving.feature_store.event_log import EventLog
from towerflow.serving.feature_store.privacy import DeletionLedger
from towerflow.serving.feature_store.writes import WritesMixin

# What ingestion writes for a user without a users-table row (components/ingestion/beam_ingest.py).
USER_DEFAULTS = {features.USER_AGE: -1, features.USER_GENDER: "", features.USER_OCCUPATION: "", features.USER_ZIP: ""}
# Cached embeddings live beside their owner: kinds starting with "item" are keyed by item id, every other
# kind ("query", "user", ...) by user id, so an event of the user invalidates them in the same script.
ITEM_EMBEDDING_PREFIX = "item"
_KIND = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass
class StoreConfig:
    """Behaviour of one store client; paths come in from the command that opens the store."""

    events_dir: str | None = None  # event log (JSONL) directory; None: events are not logged to disk
    ledger_path: str | None = None  # deletion ledger; None: delete_user keeps no ledger
    # Readers cache the active version this long; the materializer keeps a replaced version
    # `retire_after_seconds` (longer) before deleting it, so a cached version is always whole.
    active_cache_seconds: float = 0.5
    max_future_seconds: int = 300  # an event timestamp further ahead of the clock is a client bug
    max_id_length: int = 128
    # Implicit events (click, view, ...) enter the history with this rating: the models train on
    # explicit ratings, and an item the user chose to open reads as a like (models.features.LIKED_THRESHOLD).
    implicit_rating: float = features.LIKED_THRESHOLD
    rating_range: tuple[float, float] = (0.5, 5.0)
    fsync_event_log: bool = False

    def __post_init__(self):
        if self.active_cache_seconds < 0:
            raise ValueError(f"active_cache_seconds must be >= 0, got {self.active_cache_seconds}")
        lo, hi = self.rating_range
        if not lo <= self.implicit_rating <= hi:
            raise ValueError(f"implicit_rating {self.implicit_rating} is outside rating_range {self.rating_range}")


@dataclass
class _Active:
    version: str
    meta: dict
    fetched: float = field(default_factory=time.monotonic)


_ITEM_FIELDS = (features.ITEM_TITLE, features.ITEM_GENRES, features.ITEM_RELEASE_YEAR)
# ARGV: key prefix and the two key suffixes of an item, window start, as_of ("" "" = features only),
# JSON list of item ids. Returns per item: title, genres, year [, interactions before the window, in the
# window, first timestamp], as one JSON array: one string decodes far faster in the client than hundreds of
# RESP replies, and one argument packs faster than two key names per item. The script builds the key names
# itself, which only a standalone server allows (every key is local there); a cluster takes the pipeline.
_ITEMS_AT = """
local out = {}
for _, id in ipairs(cjson.decode(ARGV[6])) do
  if ARGV[7] == '1' then
    local f = redis.call('HMGET', ARGV[1] .. id .. ARGV[2], 'item_title', 'item_genres', 'item_release_year')
    out[#out + 1] = f[1]
    out[#out + 1] = f[2]
    out[#out + 1] = f[3]
  end
  if ARGV[5] ~= '' then
    local times = ARGV[1] .. id .. ARGV[3]
    out[#out + 1] = redis.call('ZCOUNT', times, '-inf', '(' .. ARGV[4])
    out[#out + 1] = redis.call('ZCOUNT', times, ARGV[4], '(' .. ARGV[5])
    local first = redis.call('ZRANGE', times, 0, 0, 'WITHSCORES')
    out[#out + 1] = first[2] or false
  end
end
return cjson.encode(out)
"""


# Below this many interactions a real list is cheaper than the lazy sequence; above, building it is not.
_LIST_UP_TO = 10_000


class _CompressedTimestamps(Sequence):
    """An item's sorted timestamps before `as_of` without fetching them: `n_old` copies of the first
    timestamp (the interactions before the recent window) followed by stand-ins for the window's ones.

    `features.item_features_at` only bisects for `as_of` and the window start and reads element 0; on
    this sequence all three give what they give on the real list (every element is < as_of, exactly
    n_old are < the window start, element 0 is the first timestamp), so the one function stays the only
    implementation.
    """

    def __init__(self, first: int, n_old: int, n_recent: int, stand_in: int):
        self._first, self._n_old, self._stand_in = first, n_old, stand_in
        self._len = n_old + n_recent

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> int:
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(index)
        return self._first if index < self._n_old else self._stand_in


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# 8,192 entries: a second of live requests on ml-100k asks for at most its 1,682 items' values (as_of is the
# request's second); each entry is a list the garbage collector walks, and at 1M items 65,536 of them
# (hardly ever hit) lengthened every full collection
@functools.lru_cache(maxsize=1 << 13)
def _popularity_of(n_old: int, n_recent: int, first_ts: int, as_of: int) -> dict:
    """FeatureStore._popularity's value, remembered: a pure function of its arguments, and the requests of
    one second (live) or of one replayed timestamp ask it for the same popular items again and again (the
    stand-in list alone is up to 10,000 elements). Callers get a copy."""
    # Window stand-ins: any value in [window start, as_of) bisects the same; first_ts is one when no
    # interaction is older than the window, else as_of - 1.
    stand_in = as_of - 1 if n_old else first_ts
    if n_old + n_recent <= _LIST_UP_TO:
        timestamps = [first_ts] * n_old + [stand_in] * n_recent  # bisect in C on a short list
    else:
        timestamps = _CompressedTimestamps(first_ts, n_old, n_recent, stand_in)
    return features.item_features_at(timestamps, as_of)


class FeatureStore(WritesMixin):
    """One interface over a standalone Redis or a Redis Cluster client (same keys, same behaviour)."""

    def __init__(self, client, config: StoreConfig | None = None):
        self.client = client
        self.config = config or StoreConfig()
        self._active: _Active | None = None
        self.event_log = (
            EventLog(self.config.events_dir, fsync=self.config.fsync_event_log) if self.config.events_dir else None
        )
        self.ledger = DeletionLedger(self.config.ledger_path) if self.config.ledger_path else None

    # --- versions --------------------------------------------------------------

    def _load_active(self, fresh: bool = False) -> _Active:
        cached = self._active
        if not fresh and cached and time.monotonic() - cached.fetched < self.config.active_cache_seconds:
            return cached
        with unavailable_on_redis_errors():
            version = self.client.get(keys.ACTIVE)
            if version is None:
                raise NotMaterialized(
                    "the feature store holds no materialization; run `towerflow features materialize`"
                )
            version = _text(version)
            if cached and cached.version == version:
                cached.fetched = time.monotonic()
                return cached
            raw_meta = self.client.hgetall(keys.Keys(version).meta)
        meta = {_text(k): json.loads(v) for k, v in raw_meta.items()}
        self._active = _Active(version, meta)
        return self._active

    @property
    def feature_set_id(self) -> str:
        """The active materialization's version, "<ingestion run>-<n>"."""
        return self._load_active(fresh=True).version

    @property
    def metadata(self) -> dict:
        """What the active materialization was made from: source, as_of, history_length, counts."""
        return dict(self._load_active().meta)

    def _keys(self) -> tuple[keys.Keys, dict]:
        active = self._load_active()
        return keys.Keys(active.version), active.meta

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def _pipeline(self):
        return self.client.pipeline(transaction=False)

    # --- users -------------------------------------------------------------------

    @staticmethod
    def _profile(raw: dict) -> dict:
        profile = {_text(k): _text(v) for k, v in raw.items()}
        profile[features.USER_AGE] = int(profile[features.USER_AGE])
        return profile

    @staticmethod
    def _events(rows) -> list[features.Event]:
        out = []
        for member, score in rows:
            item_id, rating, _ = keys.parse_event_member(member)
            out.append(features.Event(int(score), item_id, rating))
        return out

    def user_profile(self, user_id: str) -> dict | None:
        """The user's raw USER_FEATURES, or None for a user the store does not know."""
        k, _ = self._keys()
        with unavailable_on_redis_errors():
            raw = self.client.hgetall(k.profile(user_id))
        return {features.USER_ID: user_id, **self._profile(raw)} if raw else None

    def user_events(self, user_id: str, before: int | None = None) -> list[features.Event]:
        """The user's events strictly before `before` (all when None), oldest first."""
        k, _ = self._keys()
        upper = "+inf" if before is None else f"({int(before)}"
        with unavailable_on_redis_errors():
            rows = self.client.zrangebyscore(k.history(user_id), "-inf", upper, withscores=True)
        return sorted(self._events(rows))

    def query_features(self, user_id: str, as_of: int) -> dict:
        """Raw QUERY_FEATURES as retrieval uses them, at `as_of` (only events strictly before it)."""
        return self.query_state(user_id, as_of)[0]

    def query_state(self, user_id: str, as_of: int) -> tuple[dict, bool, list[features.Event]]:
        """(query_features, whether the store knows the user, the user's events before `as_of`, oldest
        first) in one round trip: what a recommend request reads about its user."""
        as_of = int(as_of)
        k, meta = self._keys()
        with unavailable_on_redis_errors():
            pipe = self._pipeline()
            pipe.hgetall(k.profile(user_id))
            pipe.zrangebyscore(k.history(user_id), "-inf", f"({as_of}", withscores=True)
            raw_profile, rows = pipe.execute()
        profile = self._profile(raw_profile) if raw_profile else dict(USER_DEFAULTS)
        history_length = int(meta.get("history_length", features.DEFAULT_HISTORY_LENGTH))
        events = sorted(self._events(rows))
        query = {
            features.USER_ID: user_id,
            **profile,
            **features.history_features(events, as_of, history_length),
            **features.context_features(as_of),
        }
        return query, bool(raw_profile), events

    # --- items -------------------------------------------------------------------

    def _item_state(self, item_ids: list[str], as_of: int | None, static: bool = True) -> list[tuple]:
        """Per item: (title, genres JSON, year) or None (left out when not `static`), then (before window,
        in window, first timestamp) when `as_of` is given.

        A standalone Redis answers with one script call for all items; a cluster cannot run a script
        across slots, so there it is one pipeline (one round trip per node) of the same reads.
        """
        k, _ = self._keys()
        window_start = None if as_of is None else as_of - int(features.RECENT_WINDOW_DAYS * features.SECONDS_PER_DAY)
        with unavailable_on_redis_errors():
            if not isinstance(self.client, RedisCluster):
                prefix, item_suffix = k.item("\x00").split("\x00")
                times_suffix = k.item_times("\x00").split("\x00")[1]
                window = ["", ""] if as_of is None else [window_start, as_of]
                args = [prefix, item_suffix, times_suffix, *window, json.dumps(item_ids), "1" if static else "0"]
                flat = [None if v is False else v for v in json.loads(self._read_script(keys=[], args=args))]
            else:
                pipe = self._pipeline()
                for item_id in item_ids:
                    if static:
                        pipe.hmget(k.item(item_id), _ITEM_FIELDS)
                    if as_of is not None:
                        times = k.item_times(item_id)
                        pipe.zcount(times, "-inf", f"({window_start}")
                        pipe.zcount(times, window_start, f"({as_of}")
                        pipe.zrange(times, 0, 0, withscores=True)
                replies = iter(pipe.execute())
                flat = []
                for _ in item_ids:
                    if static:
                        flat.extend(next(replies))  # HMGET: title, genres, year
                    if as_of is not None:
                        n_old, n_recent, first = next(replies), next(replies), next(replies)
                        flat.extend((n_old, n_recent, first[0][1] if first else None))
        width = (len(_ITEM_FIELDS) if static else 0) + (0 if as_of is None else 3)
        return [tuple(flat[i * width : (i + 1) * width]) for i in range(len(item_ids))]

    @property
    def _read_script(self):
        if "_items_script" not in self.__dict__:
            self._items_script = self.client.register_script(_ITEMS_AT)
        return self._items_script

    @staticmethod
    def _item(item_id: str, title, genres, year) -> dict | None:
        if title is None:
            return None
        return {
            features.ITEM_ID: item_id,
            features.ITEM_TITLE: _text(title),
            features.ITEM_GENRES: json.loads(genres),
            features.ITEM_RELEASE_YEAR: int(year),
        }

    @staticmethod
    def _popularity(n_old, n_recent, first, as_of: int) -> dict:
        """`features.item_features_at` on a stand-in for the item's timestamps before `as_of` with the same
        counts and first element (see _CompressedTimestamps)."""
        first_ts = int(float(first)) if first else 0
        return dict(_popularity_of(int(n_old), int(n_recent), first_ts, as_of))

    def items(self, item_ids: Iterable[str]) -> list[dict | None]:
        """Item features (id, title, genres, release year) per id; None for an id not in the catalog."""
        item_ids = list(item_ids)
        return [self._item(i, *state) for i, state in zip(item_ids, self._item_state(item_ids, None))]

    def item_features_at(self, item_ids: Iterable[str], as_of: int) -> list[dict]:
        """`features.item_features_at` per item at `as_of` (only interactions strictly before it); reads only
        the items' timestamps (the service caches the catalog's static features)."""
        item_ids, as_of = list(item_ids), int(as_of)
        return [self._popularity(*state, as_of) for state in self._item_state(item_ids, as_of, static=False)]

    def item_rows(self, item_ids: Iterable[str], as_of: int) -> list[dict | None]:
        """What the ranker needs per candidate in one read: ITEM_FEATURES + the point-in-time popularity;
        None for an id not in the catalog."""
        item_ids, as_of = list(item_ids), int(as_of)
        rows = []
        for item_id, state in zip(item_ids, self._item_state(item_ids, as_of)):
            item = self._item(item_id, *state[:3])
            rows.append(None if item is None else {**item, **self._popularity(*state[3:], as_of)})
        return rows

    def all_item_ids(self) -> list[str]:
        k, _ = self._keys()
        with unavailable_on_redis_errors():
            return sorted(_text(i) for i in self.client.smembers(k.items))

    # --- popularity --------------------------------------------------------------

    def popular_items(
        self, as_of: int, k: int, window_days: float | None = None, segment: dict | None = None
    ) -> list[tuple[str, float]]:
        """The k items with most events strictly before `as_of` in the window (None = all time), optionally
        only events of users in a demographic segment; best first, ties by item id.

        Whole days inside the window are read from per-day counters, the partial days at its edges from
        that day's event set, so the counts are exact to the second.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if window_days is not None and window_days <= 0:
            raise ValueError(f"window_days must be > 0, got {window_days}")
        seg = keys.segment_name(segment)
        as_of = int(as_of)
        start = None if window_days is None else as_of - int(window_days * keys.SECONDS_PER_DAY)
        names, _ = self._keys()
        with unavailable_on_redis_errors():
            lo = "-inf" if start is None else keys.day_of(start)
            days = [int(float(d)) for d in self.client.zrangebyscore(names.days, lo, keys.day_of(as_of))]
            pipe = self._pipeline()
            plan = []
            for day in days:
                day_start, day_end = day * keys.SECONDS_PER_DAY, (day + 1) * keys.SECONDS_PER_DAY
                if (start is None or day_start >= start) and day_end <= as_of:
                    pipe.hgetall(names.day_counts(day, seg))
                    plan.append("counts")
                else:
                    low = day_start if start is None else max(start, day_start)
                    pipe.zrangebyscore(names.day_events(day), low, f"({min(as_of, day_end)}")
                    plan.append("events")
            replies = pipe.execute()
        wanted = set(seg.split("|")) if seg else set()
        totals: Counter = Counter()
        for kind, reply in zip(plan, replies):
            if kind == "counts":
                for item, n in reply.items():
                    totals[_text(item)] += int(n)
                continue
            for member in reply:
                item, bucket, gender, _ = _text(member).split(keys.SEP)
                if wanted <= {f"a:{bucket}", f"g:{gender}"}:
                    totals[item] += 1
        ranked = sorted(((n, item) for item, n in totals.items() if n > 0), key=lambda p: (-p[0], p[1]))
        return [(item, float(n)) for n, item in ranked[:k]]

    # --- embedding cache ---------------------------------------------------------

    def _embedding_key(self, kind: str, key: str) -> str:
        if not isinstance(kind, str) or not _KIND.match(kind):
            raise ValueError(f"embedding kind must be a lowercase name like 'query' or 'item', got {kind!r}")
        k, _ = self._keys()
        return k.item_embeddings(key) if kind.startswith(ITEM_EMBEDDING_PREFIX) else k.user_embeddings(key)

    def get_cached_embedding(self, kind: str, key: str, version: int) -> np.ndarray | None:
        """The cached vector, or None when absent, expired or invalidated by an event."""
        name = self._embedding_key(kind, key)
        with unavailable_on_redis_errors():
            raw = self.client.hget(name, f"{kind}:{version}")
        if raw is None:
            return None
        (expires,) = struct.unpack_from("<d", raw)
        if expires <= time.time():
            return None
        return np.frombuffer(raw, dtype="<f4", offset=8).copy()

    def set_cached_embedding(self, kind: str, key: str, version: int, vector, ttl_seconds: float) -> None:
        """Caches a float32 vector; fields expire one by one (checked on read), the hash with the longest TTL."""
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be > 0, got {ttl_seconds}")
        name = self._embedding_key(kind, key)
        payload = struct.pack("<d", time.time() + ttl_seconds) + np.asarray(vector, dtype="<f4").tobytes()
        with unavailable_on_redis_errors():
            pipe = self._pipeline()
            pipe.hset(name, f"{kind}:{version}", payload)
            pipe.expire(name, max(1, int(np.ceil(ttl_seconds))), gt=True)
            pipe.expire(name, max(1, int(np.ceil(ttl_seconds))), nx=True)
            pipe.execute()

    def invalidate_user_embeddings(self, user_id: str) -> None:
        k, _ = self._keys()
        with unavailable_on_redis_errors():
            self.client.delete(k.user_embeddings(user_id))
