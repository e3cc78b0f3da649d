"""The store's key layout: one place that names every Redis key.

Every key of a materialization carries its feature-set version `<v>`, so a new
materialization is written beside the active one and `tf:active` is switched
in one SET. Keys that one atomic update touches share a hash tag (the part in
braces), so on Redis Cluster they live in one slot:

    tf:active                      string  the active feature-set version
    tf:seq                         counter versions are "<source>-<n>"
    tf:versions                    set     versions written and not yet retired
    tf:<v>:meta                    hash    source, as_of, created_at, counts (JSON)
    tf:<v>:items                   set     every item id of the catalog
    tf:<v>:{u:<user>}:p            hash    profile: user_age, user_gender, user_occupation, user_zip
    tf:<v>:{u:<user>}:h            zset    events, score = timestamp, member = item \\x1f rating \\x1f event id
    tf:<v>:{u:<user>}:x            set     event ids already recorded (idempotency)
    tf:<v>:{u:<user>}:emb          hash    cached query embeddings, field = kind:model version
    tf:<v>:{i:<item>}:f            hash    item_title, item_genres (JSON list), item_release_year
    tf:<v>:{i:<item>}:t            zset    interaction timestamps, score = timestamp, member = event id
    tf:<v>:{i:<item>}:emb          hash    cached item embeddings, field = kind:model version
    tf:<v>:{d:<day>}:n             hash    item -> interactions on that UTC day
    tf:<v>:{d:<day>}:n:<segment>   hash    the same, per demographic segment (a:<age bucket>, g:<gender>, both)
    tf:<v>:{d:<day>}:ev            zset    that day's events, score = timestamp, member = item \\x1f age bucket
                                           \\x1f gender \\x1f event id (exact counts for partial days)
    tf:<v>:days                    zset    days that have events (score = member = day number)

No key outside a user's tag holds the user id: deleting a user deletes the
three user keys and decrements the popularity counters.
"""

from __future__ import annotations

import bisect

SEP = "\x1f"  # unit separator: never in an id (ids are validated) nor in a float
ACTIVE = "tf:active"
SEQUENCE = "tf:seq"
VERSIONS = "tf:versions"  # every version written and not yet retired
SECONDS_PER_DAY = 86400
# The model's age buckets (models/preprocessing.py AGE_BOUNDARIES, checked by a test); kept here because
# importing the preprocessing module loads TensorFlow.
AGE_BOUNDARIES = (0, 18, 25, 35, 45, 50, 56)


def age_bucket(age: int) -> int:
    """Bucket index as the model's Bucketize gives it: 0 for unknown (-1), then one per boundary passed."""
    return bisect.bisect_right(AGE_BOUNDARIES, age)


def day_of(timestamp: int) -> int:
    return int(timestamp) // SECONDS_PER_DAY


class Keys:
    """Key names of one feature-set version."""

    def __init__(self, version: str):
        self.version = version
        self.prefix = f"tf:{version}:"

    @property
    def meta(self) -> str:
        return self.prefix + "meta"

    @property
    def items(self) -> str:
        return self.prefix + "items"

    @property
    def days(self) -> str:
        return self.prefix + "days"

    def profile(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:p"

    def history(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:h"

    def event_ids(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:x"

    def user_embeddings(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:emb"

    def user_keys(self, user_id: str) -> list[str]:
        return [self.profile(user_id), self.history(user_id), self.event_ids(user_id), self.user_embeddings(user_id)]

    def item(self, item_id: str) -> str:
        return f"{self.prefix}{{i:{item_id}}}:f"

    def item_times(self, item_id: str) -> str:
        return f"{self.prefix}{{i:{item_id}}}:t"

    def item_embeddings(self, item_id: str) -> str:
        return f"{self.prefix}{{i:{item_id}}}:emb"

    def day_counts(self, day: int, segment: str = "") -> str:
        return f"{self.prefix}{{d:{day}}}:n" + (f":{segment}" if segment else "")

    def day_events(self, day: int) -> str:
        return f"{self.prefix}{{d:{day}}}:ev"

    def all_pattern(self) -> str:
        return self.prefix + "*"


def segments_of(age_bucket_value: int, gender: str) -> list[str]:
    """The segment counters one event increments: by age bucket, by gender, and by both."""
    return [f"a:{age_bucket_value}", f"g:{gender}", f"a:{age_bucket_value}|g:{gender}"]


def segment_name(segment: dict | None) -> str:
    """The counter suffix of a query segment {"age_bucket": .., "gender": ..} ("" = everyone)."""
    if not segment:
        return ""
    unknown = set(segment) - {"age_bucket", "gender"}
    if unknown:
        raise ValueError(f"segment keys must be age_bucket and/or gender, got {sorted(unknown)}")
    parts = []
    if "age_bucket" in segment:
        bucket = segment["age_bucket"]
        if not isinstance(bucket, int) or not 0 <= bucket <= len(AGE_BOUNDARIES):
            raise ValueError(f"age_bucket must be an int in 0..{len(AGE_BOUNDARIES)}, got {bucket!r}")
        parts.append(f"a:{bucket}")
    if "gender" in segment:
        parts.append(f"g:{segment['gender']}")
    return "|".join(parts)


def event_member(item_id: str, rating: float, event_id: str) -> str:
    return f"{item_id}{SEP}{rating!r}{SEP}{event_id}"


def parse_event_member(member: bytes | str) -> tuple[str, float, str]:
    text = member.decode() if isinstance(member, bytes) else member
    item_id, rating, event_id = text.split(SEP)
    return item_id, float(rating), event_id


def day_member(item_id: str, age_bucket_value: int, gender: str, event_id: str) -> str:
    return f"{item_id}{SEP}{age_bucket_value}{SEP}{gender}{SEP}{event_id}"
