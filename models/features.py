"""The one feature contract of towerflow.

Every feature key is named here once and imported by ingestion,
preprocessing, the models, the evaluators and the serving side.

`history_features` is THE function that builds a user's point-in-time
features. Ingestion calls it for every training example with the example's
timestamp as the cut-off; the online feature store calls it with "now". Only
events strictly earlier than the cut-off are used, so nothing leaks from the
future, and ties are broken by (timestamp, item_id) so the result is
deterministic.
"""

from __future__ import annotations

import bisect
import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass

# --- raw interaction -------------------------------------------------------
USER_ID = "user_id"
ITEM_ID = "item_id"
RATING = "rating"
TIMESTAMP = "timestamp"
LIKED = "liked"  # 1 if rating >= LIKED_THRESHOLD
LIKED_THRESHOLD = 4.0

# --- user side features ----------------------------------------------------
USER_AGE = "user_age"  # int, -1 when unknown
USER_GENDER = "user_gender"  # bytes, "" when unknown
USER_OCCUPATION = "user_occupation"  # bytes, "" when unknown
USER_ZIP = "user_zip"  # bytes, "" when unknown

# --- item side features ----------------------------------------------------
ITEM_TITLE = "item_title"  # bytes
ITEM_GENRES = "item_genres"  # list of bytes (may be empty)
ITEM_RELEASE_YEAR = "item_release_year"  # int, 0 when unknown

# --- point-in-time features (strictly before the example's timestamp) -------
HIST_ITEM_IDS = "hist_item_ids"  # list of bytes, oldest first, newest last
USER_PRIOR_COUNT = "user_prior_count"  # int
USER_PRIOR_MEAN_RATING = "user_prior_mean_rating"  # float, 0.0 with no history
USER_DAYS_SINCE_FIRST = "user_days_since_first"  # float, 0.0 with no history
ITEM_PRIOR_COUNT = "item_prior_count"  # int, interactions with the item before

# --- request context ------------------------------------------------------
CTX_HOUR = "ctx_hour"  # 0..23, UTC
CTX_DAY_OF_WEEK = "ctx_day_of_week"  # 0 = Monday .. 6 = Sunday, UTC

USER_FEATURES = (USER_ID, USER_AGE, USER_GENDER, USER_OCCUPATION, USER_ZIP)
ITEM_FEATURES = (ITEM_ID, ITEM_TITLE, ITEM_GENRES, ITEM_RELEASE_YEAR)
HISTORY_FEATURES = (HIST_ITEM_IDS, USER_PRIOR_COUNT, USER_PRIOR_MEAN_RATING, USER_DAYS_SINCE_FIRST)
CONTEXT_FEATURES = (CTX_HOUR, CTX_DAY_OF_WEEK)
# Features the query tower sees: who the user is, what they did, and when.
QUERY_FEATURES = USER_FEATURES + HISTORY_FEATURES + CONTEXT_FEATURES
CANDIDATE_FEATURES = ITEM_FEATURES
LABEL_FEATURES = (RATING, LIKED)

INT_FEATURES = frozenset(
    {TIMESTAMP, LIKED, USER_AGE, ITEM_RELEASE_YEAR, USER_PRIOR_COUNT, ITEM_PRIOR_COUNT, CTX_HOUR, CTX_DAY_OF_WEEK}
)
FLOAT_FEATURES = frozenset({RATING, USER_PRIOR_MEAN_RATING, USER_DAYS_SINCE_FIRST})
BYTES_FEATURES = frozenset(
    {USER_ID, ITEM_ID, USER_GENDER, USER_OCCUPATION, USER_ZIP, ITEM_TITLE, ITEM_GENRES, HIST_ITEM_IDS}
)
LIST_FEATURES = frozenset({ITEM_GENRES, HIST_ITEM_IDS})

DEFAULT_HISTORY_LENGTH = 20
SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True, order=True)
class Event:
    """One interaction of a user, as the history function sees it.

    Ordering is (timestamp, item_id, rating): the deterministic tie-break.
    """

    timestamp: int
    item_id: str
    rating: float


class UserHistory:
    """A user's events sorted once, queried at any cut-off in O(log n + N)."""

    def __init__(self, events: Sequence[Event]):
        self.events = sorted(events)
        self._timestamps = [e.timestamp for e in self.events]
        # Prefix sums make the mean rating of any prefix O(1).
        self._rating_prefix = [0.0]
        for e in self.events:
            self._rating_prefix.append(self._rating_prefix[-1] + e.rating)

    def count_before(self, as_of: int) -> int:
        """Number of events strictly earlier than `as_of`."""
        return bisect.bisect_left(self._timestamps, as_of)

    def features(self, as_of: int, max_len: int = DEFAULT_HISTORY_LENGTH) -> dict:
        return history_features(self, as_of, max_len)


def history_features(history: UserHistory | Sequence[Event], as_of: int, max_len: int = DEFAULT_HISTORY_LENGTH) -> dict:
    """Point-in-time user features from events strictly earlier than `as_of`.

    Returns a dict keyed by the HISTORY_FEATURES names. `hist_item_ids` holds
    the last `max_len` item ids, oldest first; events that share a timestamp
    keep the (timestamp, item_id) order.
    """
    if max_len < 0:
        raise ValueError(f"max_len must be >= 0, got {max_len}")
    if not isinstance(history, UserHistory):
        history = UserHistory(history)
    n = history.count_before(as_of)
    recent = history.events[max(0, n - max_len) : n] if max_len else []
    if n:
        mean_rating = history._rating_prefix[n] / n
        days_since_first = (as_of - history.events[0].timestamp) / SECONDS_PER_DAY
    else:
        mean_rating = 0.0
        days_since_first = 0.0
    return {
        HIST_ITEM_IDS: [e.item_id for e in recent],
        USER_PRIOR_COUNT: n,
        USER_PRIOR_MEAN_RATING: float(mean_rating),
        USER_DAYS_SINCE_FIRST: float(days_since_first),
    }


def context_features(timestamp: int) -> dict:
    """Time-of-day and day-of-week of a request or interaction, in UTC."""
    moment = _dt.datetime.fromtimestamp(int(timestamp), tz=_dt.UTC)
    return {CTX_HOUR: moment.hour, CTX_DAY_OF_WEEK: moment.weekday()}
