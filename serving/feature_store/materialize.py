"""Bulk load of a feature set: users, items and events written beside the active version, then switched.

The caller streams rows in (the CLI reads them from the ingestion run's input
data; the benchmark generates them), so memory stays flat in the number of
events: only one batch and a user -> segment map are held. Events at or after
`as_of` are skipped, which puts the store in the state the offline evaluation
assumes at a cut-off. After the switch the replaced version is kept
`retire_after_seconds` (longer than any reader caches the active version),
then deleted.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from redis.cluster import RedisCluster

from towerflow.models import features
from towerflow.serving.feature_store import keys
from towerflow.serving.feature_store.errors import unavailable_on_redis_errors
from towerflow.serving.feature_store.writes import script_runner

Progress = Callable[[str, int], None]  # (stage, rows done in this call)


@dataclass
class MaterializeConfig:
    source: str  # what the feature set was made from, e.g. "ingestion-12" (part of the version name)
    as_of: int | None = None  # only events strictly before; None: all
    history_length: int = features.DEFAULT_HISTORY_LENGTH
    batch_size: int = 20_000
    retire_after_seconds: float = 2.0
    require_known_items: bool = True  # as ingestion does when the data has an item table

    def __post_init__(self):
        if not self.source.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"source must be alphanumeric with - or _, got {self.source!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.history_length < 1:
            raise ValueError(f"history_length must be >= 1, got {self.history_length}")


@dataclass
class MaterializeSummary:
    version: str
    as_of: int | None
    users: int
    items: int
    events: int
    events_after_as_of: int
    events_of_deleted_users: int
    events_of_unknown_items: int
    bytes: int  # Redis used_memory growth while writing (before the old version is retired)
    seconds: float
    retired: list[str]

    def format(self) -> str:
        cutoff = "all events" if self.as_of is None else f"events before {self.as_of}"
        return (
            f"Feature set {self.version} is active: {self.users:,} users, {self.items:,} items, "
            f"{self.events:,} events ({cutoff}; skipped {self.events_after_as_of:,} at/after the cut-off, "
            f"{self.events_of_deleted_users:,} of deleted users, {self.events_of_unknown_items:,} of unknown "
            f"items), {self.bytes / 2**20:.1f} MiB in Redis, {self.seconds:.1f}s"
            + (f"; retired {', '.join(self.retired)}" if self.retired else "")
        )


def used_memory(client) -> int:
    with unavailable_on_redis_errors():
        if isinstance(client, RedisCluster):
            info = client.info("memory", target_nodes=RedisCluster.PRIMARIES)
            return sum(node["used_memory"] for node in info.values())
        return int(client.info("memory")["used_memory"])


def _profile_fields(user: dict) -> dict:
    return {key: user.get(key, default) for key, default in _USER_DEFAULT_ITEMS}


_USER_DEFAULT_ITEMS = (
    (features.USER_AGE, -1),
    (features.USER_GENDER, ""),
    (features.USER_OCCUPATION, ""),
    (features.USER_ZIP, ""),
)


# KEYS: counter hashes of one day; ARGV[1]: JSON [[key index, item id, count], ...] (one argument instead
# of three per counter: packing arguments was the client's main cost).
_ADD_COUNTS = """
local counts = cjson.decode(ARGV[1])
for _, c in ipairs(counts) do
  redis.call('HINCRBY', KEYS[c[1]], c[2], c[3])
end
return #counts
"""


class _Writer:
    """Buffers one batch of writes and flushes it as one pipeline."""

    def __init__(self, client, names: keys.Keys):
        self.client, self.k = client, names
        self.scripts: dict = {}
        self.reset()

    def reset(self):
        self.history = defaultdict(dict)
        self.item_times = defaultdict(dict)
        self.day_events = defaultdict(dict)
        self.counts: Counter = Counter()
        self.days: set[int] = set()
        self.size = 0

    def add(self, user_id, item_id, rating, timestamp, event_id, segment):
        bucket, gender = segment
        day = keys.day_of(timestamp)
        self.history[user_id][keys.event_member(item_id, rating, event_id)] = timestamp
        self.item_times[item_id][event_id] = timestamp
        self.day_events[day][keys.day_member(item_id, bucket, gender, event_id)] = timestamp
        for seg in ("", *keys.segments_of(bucket, gender)):
            self.counts[(day, seg, item_id)] += 1
        self.days.add(day)
        self.size += 1

    def flush(self):
        if not self.size:
            return
        k = self.k
        with unavailable_on_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for user_id, members in self.history.items():
                pipe.zadd(k.history(user_id), members)
            for item_id, members in self.item_times.items():
                pipe.zadd(k.item_times(item_id), members)
            for day, members in self.day_events.items():
                pipe.zadd(k.day_events(day), members)
            pipe.zadd(k.days, {str(d): d for d in self.days})
            run = script_runner(self.client, pipe, self.scripts)
            # One script per day instead of one HINCRBY per (day, segment, item): all of a day's counters
            # share the day's slot, and this was three quarters of the commands of a materialization.
            by_day = defaultdict(list)
            for (day, seg, item_id), n in self.counts.items():
                by_day[day].append((seg, item_id, n))
            for day, counts in by_day.items():
                names = sorted({seg for seg, _, _ in counts})
                index = {seg: i + 1 for i, seg in enumerate(names)}
                payload = json.dumps([(index[seg], item_id, n) for seg, item_id, n in counts])
                run(_ADD_COUNTS, [k.day_counts(day, seg) for seg in names], [payload])
            pipe.execute()
        self.reset()


def materialize(
    client,
    config: MaterializeConfig,
    users: Iterable[dict],
    items: Iterable[dict],
    events: Iterable[tuple[str, str, float, int, str]],
    excluded: Callable[[str], bool] = lambda _: False,
    progress: Progress | None = None,
) -> MaterializeSummary:
    """Writes a new feature set and makes it active; returns what was written.

    users: dicts with user_id and the USER_FEATURES; items: dicts with the ITEM_FEATURES;
    events: (user_id, item_id, rating, timestamp, event_id) in any order. `excluded(user_id)` is True
    for users in the deletion ledger: none of their rows are written.
    """
    started = time.time()
    progress = progress or (lambda stage, n: None)
    memory_before = used_memory(client)
    with unavailable_on_redis_errors():
        version = f"{config.source}-{client.incr(keys.SEQUENCE)}"
        client.sadd(keys.VERSIONS, version)
    k = keys.Keys(version)
    batch = config.batch_size

    item_ids: set[str] = set()
    with unavailable_on_redis_errors():
        pipe = client.pipeline(transaction=False)
        for item in items:
            item_id = item[features.ITEM_ID]
            item_ids.add(item_id)
            pipe.hset(k.item(item_id), mapping={
                features.ITEM_TITLE: item[features.ITEM_TITLE],
                features.ITEM_GENRES: json.dumps(list(item[features.ITEM_GENRES])),
                features.ITEM_RELEASE_YEAR: int(item[features.ITEM_RELEASE_YEAR]),
            })  # fmt: skip
            pipe.sadd(k.items, item_id)
            if len(pipe) >= batch:
                progress("items", len(pipe) // 2)
                pipe.execute()
        progress("items", len(pipe) // 2)
        pipe.execute()

    segments: dict[str, tuple[int, str]] = {}
    with unavailable_on_redis_errors():
        pipe = client.pipeline(transaction=False)
        for user in users:
            user_id = user[features.USER_ID]
            if excluded(user_id):
                continue
            fields = _profile_fields(user)
            segments[user_id] = (keys.age_bucket(int(fields[features.USER_AGE])), fields[features.USER_GENDER])
            pipe.hset(k.profile(user_id), mapping=fields)
            if len(pipe) >= batch:
                progress("users", len(pipe))
                pipe.execute()
        progress("users", len(pipe))
        pipe.execute()

    writer = _Writer(client, k)
    skipped = Counter()
    written = 0
    new_profiles = client.pipeline(transaction=False)
    for user_id, item_id, rating, timestamp, event_id in events:
        if config.as_of is not None and timestamp >= config.as_of:
            skipped["after"] += 1
            continue
        if excluded(user_id):
            skipped["deleted"] += 1
            continue
        if config.require_known_items and item_id not in item_ids:
            skipped["unknown_item"] += 1
            continue
        if user_id not in segments:
            # A user with events but no users-table row: ingestion keeps their rows with default features.
            segments[user_id] = (keys.age_bucket(-1), "")
            new_profiles.hset(k.profile(user_id), mapping=_profile_fields({}))
        writer.add(user_id, item_id, float(rating), int(timestamp), event_id, segments[user_id])
        written += 1
        if writer.size >= batch:
            with unavailable_on_redis_errors():
                new_profiles.execute()
            writer.flush()
            progress("events", batch)
    progress("events", writer.size)
    with unavailable_on_redis_errors():
        new_profiles.execute()
    writer.flush()

    summary = MaterializeSummary(
        version=version,
        as_of=config.as_of,
        users=len(segments),
        items=len(item_ids),
        events=written,
        events_after_as_of=skipped["after"],
        events_of_deleted_users=skipped["deleted"],
        events_of_unknown_items=skipped["unknown_item"],
        bytes=max(0, used_memory(client) - memory_before),
        seconds=0.0,
        retired=[],
    )
    meta = {"source": config.source, "history_length": config.history_length, "created_at": int(time.time())}
    meta.update({key: value for key, value in asdict(summary).items() if key not in ("seconds", "retired")})
    with unavailable_on_redis_errors():
        client.hset(k.meta, mapping={key: json.dumps(value) for key, value in meta.items()})
        client.set(keys.ACTIVE, version)  # the atomic switch: readers move to the new version as a whole
    summary.retired = retire_versions(client, keep=version, wait_seconds=config.retire_after_seconds)
    summary.seconds = time.time() - started
    return summary


def retire_versions(client, keep: str, wait_seconds: float) -> list[str]:
    """Deletes every version but `keep`, after readers that cached the old one had time to finish."""
    with unavailable_on_redis_errors():
        old = sorted(v.decode() for v in client.smembers(keys.VERSIONS) if v.decode() != keep)
    if not old:
        return []
    time.sleep(wait_seconds)
    with unavailable_on_redis_errors():
        for version in old:
            client.srem(keys.VERSIONS, version)
            pipe = client.pipeline(transaction=False)
            for key in client.scan_iter(match=keys.Keys(version).all_pattern(), count=1000):
                pipe.unlink(key)
                if len(pipe) >= 1000:
                    pipe.execute()
            pipe.execute()
    return old
