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
ITEM_RECENT_COUNT = "item_recent_count"  # int, interactions with the item in the RECENT_WINDOW_DAYS before
ITEM_DAYS_SINCE_FIRST = "item_days_since_first"  # float, days since the item's first interaction, 0.0 with none

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
    {
        TIMESTAMP,
        LIKED,
        USER_AGE,
        ITEM_RELEASE_YEAR,
        USER_PRIOR_COUNT,
        ITEM_PRIOR_COUNT,
        ITEM_RECENT_COUNT,
        CTX_HOUR,
        CTX_DAY_OF_WEEK,
    }
)
FLOAT_FEATURES = frozenset({RATING, USER_PRIOR_MEAN_RATING, USER_DAYS_SINCE_FIRST, ITEM_DAYS_SINCE_FIRST})
BYTES_FEATURES = frozenset(
    {USER_ID, ITEM_ID, USER_GENDER, USER_OCCUPATION, USER_ZIP, ITEM_TITLE, ITEM_GENRES, HIST_ITEM_IDS}
)
LIST_FEATURES = frozenset({ITEM_GENRES, HIST_ITEM_IDS})

DEFAULT_HISTORY_LENGTH = 20
SECONDS_PER_DAY = 86400.0
RECENT_WINDOW_DAYS = 14
# The item's point-in-time popularity: what the ranker sees about an item at request time.
ITEM_POINT_IN_TIME_FEATURES = (ITEM_PRIOR_COUNT, ITEM_RECENT_COUNT, ITEM_DAYS_SINCE_FIRST)


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


def item_features_at(timestamps: Sequence[int], as_of: int) -> dict:
    """Point-in-time popularity of one item from its interaction `timestamps` (sorted ascending).

    THE function for these features: ingestion calls it with each example's
    timestamp, evaluation and serving with the request time. Only interactions
    strictly earlier than `as_of` count.
    """
    n = bisect.bisect_left(timestamps, as_of)
    window_start = as_of - int(RECENT_WINDOW_DAYS * SECONDS_PER_DAY)
    recent = n - bisect.bisect_left(timestamps, window_start, 0, n)
    return {
        ITEM_PRIOR_COUNT: n,
        ITEM_RECENT_COUNT: recent,
        ITEM_DAYS_SINCE_FIRST: (as_of - timestamps[0]) / SECONDS_PER_DAY if n else 0.0,
    }


def context_features(timestamp: int) -> dict:
    """Time-of-day and day-of-week of a request or interaction, in UTC."""
    moment = _dt.datetime.fromtimestamp(int(timestamp), tz=_dt.UTC)
    return {CTX_HOUR: moment.hour, CTX_DAY_OF_WEEK: moment.weekday()}


# =============================================================================
# Transformed features: the outputs of models.preprocessing.preprocessing_fn.
# The models, the trainers and the serving signatures read these keys; the raw
# names above stay the ingestion contract.
#
# Every id feature is an int64 index into an embedding table whose row 0 is
# reserved for padding (PAD_ID): vocabulary index i is stored as i + 1 and the
# OOV buckets follow the vocabulary, so a model can mask with `ids != PAD_ID`
# and never has to special-case -1. List features are right-padded with PAD_ID
# to the fixed lengths below.
# =============================================================================
TRANSFORMED_SUFFIX = "_xf"


def transformed_name(key: str) -> str:
    """Name of the transformed feature derived from raw feature `key`."""
    return key + TRANSFORMED_SUFFIX


PAD_ID = 0
NUM_OOV_BUCKETS = 1
HIST_MAX_LEN = DEFAULT_HISTORY_LENGTH
GENRES_MAX_LEN = 8
TITLE_MAX_TOKENS = 12

# --- ids and categories: int64 [B] ------------------------------------------
USER_ID_XF = transformed_name(USER_ID)
ITEM_ID_XF = transformed_name(ITEM_ID)
USER_GENDER_XF = transformed_name(USER_GENDER)
USER_OCCUPATION_XF = transformed_name(USER_OCCUPATION)
USER_ZIP_PREFIX_XF = "user_zip_prefix" + TRANSFORMED_SUFFIX  # first 3 chars of the zip code
USER_AGE_BUCKET_XF = "user_age_bucket" + TRANSFORMED_SUFFIX  # bucket 0 = unknown age
ITEM_YEAR_BUCKET_XF = "item_release_year_bucket" + TRANSFORMED_SUFFIX  # bucket 0 = unknown year
CTX_HOUR_XF = transformed_name(CTX_HOUR)  # 0..23, no padding slot
CTX_DAY_OF_WEEK_XF = transformed_name(CTX_DAY_OF_WEEK)  # 0..6, no padding slot

# --- padded lists: int64 [B, *_MAX_LEN], PAD_ID after the last real entry ----
HIST_ITEM_IDS_XF = transformed_name(HIST_ITEM_IDS)  # oldest first, same ids as ITEM_ID_XF
ITEM_GENRES_XF = transformed_name(ITEM_GENRES)
ITEM_TITLE_TOKENS_XF = "item_title_tokens" + TRANSFORMED_SUFFIX

# --- dense numbers: float32 [B] ----------------------------------------------
USER_PRIOR_COUNT_LOG_XF = "user_prior_count_log1p" + TRANSFORMED_SUFFIX
USER_PRIOR_MEAN_RATING_XF = transformed_name(USER_PRIOR_MEAN_RATING)  # rating / 5
USER_DAYS_SINCE_FIRST_LOG_XF = "user_days_since_first_log1p" + TRANSFORMED_SUFFIX
ITEM_PRIOR_COUNT_LOG_XF = "item_prior_count_log1p" + TRANSFORMED_SUFFIX
ITEM_RECENT_COUNT_LOG_XF = "item_recent_count_log1p" + TRANSFORMED_SUFFIX
ITEM_DAYS_SINCE_FIRST_LOG_XF = "item_days_since_first_log1p" + TRANSFORMED_SUFFIX
ITEM_POPULARITY_XF = (ITEM_PRIOR_COUNT_LOG_XF, ITEM_RECENT_COUNT_LOG_XF, ITEM_DAYS_SINCE_FIRST_LOG_XF)
# log(share of training interactions that hit the item); unseen items get the
# smallest share seen in training. Used for the log-Q correction of retrieval.
ITEM_LOG_FREQUENCY_XF = "item_log_frequency" + TRANSFORMED_SUFFIX

# --- labels -------------------------------------------------------------------
# Seconds since the epoch, passed through so training can batch examples by time (not a model input).
TIMESTAMP_XF = transformed_name(TIMESTAMP)
RATING_XF = transformed_name(RATING)  # float32 [B]
LIKED_XF = transformed_name(LIKED)  # float32 [B], 0.0 or 1.0

# --- vocabulary files (read sizes with TFTransformOutput.vocabulary_size_by_name)
USER_ID_VOCAB = "user_id_vocab"
ITEM_ID_VOCAB = "item_id_vocab"  # shared by ITEM_ID_XF and HIST_ITEM_IDS_XF
ITEM_FREQUENCY_VOCAB = "item_id_frequency_vocab"  # "count item_id" lines
USER_GENDER_VOCAB = "user_gender_vocab"
USER_OCCUPATION_VOCAB = "user_occupation_vocab"
USER_ZIP_PREFIX_VOCAB = "user_zip_prefix_vocab"
ITEM_GENRE_VOCAB = "item_genre_vocab"
ITEM_TITLE_TOKEN_VOCAB = "item_title_token_vocab"

# Transformed features each tower reads (labels and the log-Q weight excluded).
QUERY_FEATURES_XF = (
    USER_ID_XF,
    USER_GENDER_XF,
    USER_OCCUPATION_XF,
    USER_ZIP_PREFIX_XF,
    USER_AGE_BUCKET_XF,
    HIST_ITEM_IDS_XF,
    USER_PRIOR_COUNT_LOG_XF,
    USER_PRIOR_MEAN_RATING_XF,
    USER_DAYS_SINCE_FIRST_LOG_XF,
    CTX_HOUR_XF,
    CTX_DAY_OF_WEEK_XF,
)
CANDIDATE_FEATURES_XF = (ITEM_ID_XF, ITEM_GENRES_XF, ITEM_TITLE_TOKENS_XF, ITEM_YEAR_BUCKET_XF)
LABEL_FEATURES_XF = (RATING_XF, LIKED_XF)
