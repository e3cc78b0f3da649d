"""Live writes to the store: `record_event` and the privacy delete.

An event touches three hash-tag groups -- the item's timestamps, the day's
popularity counters and the user's history -- so each group is updated by one
atomic command or Lua script in its own slot (Redis Cluster cannot run one
script across slots). Each step is idempotent on the event id (sorted-set
members carry it; counters move only when the member is new), and the user's
step runs last and marks the event id as recorded, so a client that retries
after an error never counts an event twice.
"""

from __future__ import annotations

import math
import re
import time
import uuid

from redis.cluster import RedisCluster

from towerflow.serving.feature_store import keys
from towerflow.serving.feature_store.errors import InvalidEvent, unavailable_on_redis_errors

EVENT_TYPES = ("rating", "click", "view", "purchase")
_ID = re.compile(r"^[A-Za-z0-9_.:@\-]+$")

# KEYS: day events, then every counter hash to move; ARGV: timestamp, member, item id, +1 | -1.
_DAY_UPDATE = """
local changed
if ARGV[4] == '1' then
  changed = redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
else
  changed = redis.call('ZREM', KEYS[1], ARGV[2])
end
if changed == 1 then
  for i = 2, #KEYS do
    if redis.call('HINCRBY', KEYS[i], ARGV[3], tonumber(ARGV[4])) <= 0 then
      redis.call('HDEL', KEYS[i], ARGV[3])
    end
  end
end
return changed
"""

# KEYS: history, event ids, embeddings; ARGV: timestamp, member, client event id ("" = none).
_USER_ADD = """
if ARGV[3] ~= '' and redis.call('SADD', KEYS[2], ARGV[3]) == 0 then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('DEL', KEYS[3])
return 1
"""


def script_runner(client, pipe, cache: dict):
    """See WritesMixin._script_runner; `cache` keeps one registered Script per text (EVALSHA)."""
    cluster = isinstance(client, RedisCluster)

    def run(text: str, script_keys: list, args: list):
        if text not in cache:
            cache[text] = client.register_script(text)
        if not cluster:
            cache[text](keys=script_keys, args=args, client=pipe)
            return None
        if len(pipe):
            pipe.execute()
        return cache[text](keys=script_keys, args=args)

    return run


def _check_id(value, what: str, max_length: int) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidEvent(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > max_length:
        raise InvalidEvent(f"{what} is {len(value)} characters long; the limit is {max_length}")
    if not _ID.match(value):
        raise InvalidEvent(f"{what} {value!r} may only hold letters, digits and _ . : @ -")
    return value


class WritesMixin:
    """record_event / delete_user of FeatureStore (needs self.client, self.config, self._load_active)."""

    def _script_runner(self, pipe):
        """run(script, keys, args): queued in `pipe` on a standalone Redis (one round trip and, with
        appendfsync always, one fsync for the whole update), run at once on a cluster, whose pipelines
        do not carry EVAL (then the pipeline's own commands are sent first). Returns the reply, or None
        when queued."""
        return script_runner(self.client, pipe, self.__dict__.setdefault("_scripts", {}))

    def _validate(self, user_id, item_id, event_type, rating, timestamp, event_id) -> tuple[float, int]:
        cfg = self.config
        _check_id(user_id, "user_id", cfg.max_id_length)
        _check_id(item_id, "item_id", cfg.max_id_length)
        if event_id is not None:
            _check_id(event_id, "event_id", cfg.max_id_length)
        if event_type not in EVENT_TYPES:
            raise InvalidEvent(f"event type must be one of {', '.join(EVENT_TYPES)}, got {event_type!r}")
        lo, hi = cfg.rating_range
        if event_type == "rating":
            if isinstance(rating, bool) or not isinstance(rating, int | float) or not math.isfinite(rating):
                raise InvalidEvent(f"a rating event needs a numeric rating, got {rating!r}")
            if not lo <= rating <= hi:
                raise InvalidEvent(f"rating {rating} is outside {lo}..{hi}")
            rating = float(rating)
        elif rating is not None:
            raise InvalidEvent(f"only rating events carry a rating; a {event_type} event got {rating!r}")
        else:
            rating = cfg.implicit_rating
        now = int(time.time())
        if timestamp is None:
            timestamp = now
        if isinstance(timestamp, bool) or not isinstance(timestamp, int):
            raise InvalidEvent(f"timestamp must be integer seconds since the epoch, got {timestamp!r}")
        if timestamp < 0 or timestamp > now + cfg.max_future_seconds:
            raise InvalidEvent(f"timestamp {timestamp} is negative or more than {cfg.max_future_seconds}s ahead")
        return rating, timestamp

    def record_event(self, user_id, item_id, event_type, rating=None, timestamp=None, event_id=None) -> dict:
        """Appends one event to the user's history, the item's timestamps and the popularity counters.

        Raises InvalidEvent (nothing stored) for bad input or an unknown user/item, and
        FeatureStoreUnavailable when Redis cannot be reached (then nothing is acknowledged: retry with
        the same event_id). A repeated event_id is acknowledged again but counted once.
        """
        rating, timestamp = self._validate(user_id, item_id, event_type, rating, timestamp, event_id)
        active = self._load_active(fresh=True)
        k = keys.Keys(active.version)
        with unavailable_on_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.exists(k.item(item_id))
            pipe.hmget(k.profile(user_id), ["user_age", "user_gender"])
            pipe.sismember(k.event_ids(user_id), event_id or "")
            item_known, (age, gender), seen = pipe.execute()
        if not item_known:
            raise InvalidEvent(f"unknown item {item_id!r}: it is not in the catalog of feature set {k.version}")
        if age is None:
            raise InvalidEvent(f"unknown user {user_id!r}: no profile in feature set {k.version}")
        result = {"event_id": event_id, "feature_set_id": k.version, "timestamp": timestamp, "duplicate": True}
        if seen:
            return result
        eid = event_id or uuid.uuid4().hex
        bucket, gender = keys.age_bucket(int(age)), gender.decode()
        day = keys.day_of(timestamp)
        day_keys = [k.day_events(day), k.day_counts(day)] + [
            k.day_counts(day, s) for s in keys.segments_of(bucket, gender)
        ]
        day_member = keys.day_member(item_id, bucket, gender, eid)
        with unavailable_on_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.zadd(k.item_times(item_id), {eid: timestamp})
            pipe.zadd(k.days, {str(day): day})
            runner = self._script_runner(pipe)
            runner(_DAY_UPDATE, day_keys, [timestamp, day_member, item_id, 1])
            # Last, in the user's slot: marks the event id as recorded (see the module docstring).
            user_keys = [k.history(user_id), k.event_ids(user_id), k.user_embeddings(user_id)]
            member = keys.event_member(item_id, rating, eid)
            added = runner(_USER_ADD, user_keys, [timestamp, member, event_id or ""])
            if added is None:  # queued in the pipeline: its last reply is the user step's
                added = pipe.execute()[-1]
        result.update(event_id=eid, duplicate=not added)
        if added and self.event_log is not None:
            self.event_log.append(
                {
                    "event_id": eid,
                    "user_id": user_id,
                    "item_id": item_id,
                    "event_type": event_type,
                    "rating": rating,
                    "timestamp": timestamp,
                    "feature_set_id": k.version,
                }
            )
        return result

    def delete_user(self, user_id: str) -> dict:
        """Removes the user's profile, history, event ids and cached embeddings from every version the store
        holds, takes the user's events out of the item and popularity counts, and appends the user's hashed
        id to the deletion ledger (the next Ingestion run and every event-log read skip the user).
        """
        _check_id(user_id, "user_id", self.config.max_id_length)
        with unavailable_on_redis_errors():
            versions = {v.decode() for v in self.client.smembers(keys.VERSIONS)}
            active = self.client.get(keys.ACTIVE)
            if active is not None:
                versions.add(active.decode())
            removed, found = 0, False
            for version in sorted(versions):
                k = keys.Keys(version)
                pipe = self.client.pipeline(transaction=False)
                pipe.hmget(k.profile(user_id), ["user_age", "user_gender"])
                pipe.zrange(k.history(user_id), 0, -1, withscores=True)
                (age, gender), events = pipe.execute()
                found = found or age is not None or bool(events)
                bucket = keys.age_bucket(int(age)) if age is not None else 0
                gender = gender.decode() if gender is not None else ""
                pipe = self.client.pipeline(transaction=False)
                runner = self._script_runner(pipe)
                for member, score in events:
                    item_id, _, eid = keys.parse_event_member(member)
                    day = keys.day_of(int(score))
                    day_keys = [k.day_events(day), k.day_counts(day)]
                    day_keys += [k.day_counts(day, s) for s in keys.segments_of(bucket, gender)]
                    pipe.zrem(k.item_times(item_id), eid)
                    runner(
                        _DAY_UPDATE, day_keys, [int(score), keys.day_member(item_id, bucket, gender, eid), item_id, -1]
                    )
                for key in k.user_keys(user_id):
                    pipe.delete(key)
                pipe.execute()
                removed += len(events)
        ledger = self.ledger.append(user_id) if self.ledger is not None else None
        return {"user_id": user_id, "found": found, "events_removed": removed, "versions": sorted(versions),
                "ledger": ledger}  # fmt: skip
