"""The shared point-in-time history function, on hand-made edge cases."""

import pytest

from towerflow.models import features as F


def _events():
    # user's log: two events share t=100, one at t=50, one at t=200
    return [F.Event(100, "b", 4.0), F.Event(50, "z", 2.0), F.Event(100, "a", 5.0), F.Event(200, "c", 3.0)]


def test_only_strictly_earlier_events_count():
    feats = F.history_features(_events(), as_of=100)
    # t=100 events are not strictly earlier than 100: only z@50 counts
    assert feats[F.HIST_ITEM_IDS] == ["z"]
    assert feats[F.USER_PRIOR_COUNT] == 1
    assert feats[F.USER_PRIOR_MEAN_RATING] == pytest.approx(2.0)
    assert feats[F.USER_DAYS_SINCE_FIRST] == pytest.approx(50 / 86400)


def test_ties_are_ordered_by_item_id_and_history_is_oldest_first():
    feats = F.history_features(_events(), as_of=201)
    assert feats[F.HIST_ITEM_IDS] == ["z", "a", "b", "c"]
    # mean of 2, 5, 4, 3
    assert feats[F.USER_PRIOR_MEAN_RATING] == pytest.approx(3.5)


def test_history_is_truncated_to_the_most_recent():
    feats = F.history_features(_events(), as_of=1000, max_len=2)
    assert feats[F.HIST_ITEM_IDS] == ["b", "c"]
    assert feats[F.USER_PRIOR_COUNT] == 4


def test_no_history():
    feats = F.history_features([], as_of=10)
    assert feats == {
        F.HIST_ITEM_IDS: [],
        F.USER_PRIOR_COUNT: 0,
        F.USER_PRIOR_MEAN_RATING: 0.0,
        F.USER_DAYS_SINCE_FIRST: 0.0,
    }
    assert F.history_features(_events(), as_of=50)[F.HIST_ITEM_IDS] == []


def test_user_history_object_gives_the_same_result_as_the_function():
    history = F.UserHistory(_events())
    for as_of in (0, 50, 51, 100, 101, 200, 201):
        assert history.features(as_of, 3) == F.history_features(_events(), as_of, 3)


def test_negative_length_is_rejected():
    with pytest.raises(ValueError, match="max_len"):
        F.history_features(_events(), as_of=10, max_len=-1)


def test_context_features_are_utc():
    # 1970-01-05 was a Monday; 13:00 UTC
    ctx = F.context_features(4 * 86400 + 13 * 3600)
    assert ctx == {F.CTX_HOUR: 13, F.CTX_DAY_OF_WEEK: 0}


def test_item_features_count_strictly_earlier_events_and_the_recent_window():
    day = int(F.SECONDS_PER_DAY)
    window = F.RECENT_WINDOW_DAYS * day
    as_of = 100 * day
    # one event before the window, one exactly at its start, one inside, one at as_of (not counted), one after
    times = [as_of - window - 1, as_of - window, as_of - 1, as_of, as_of + 5]
    out = F.item_features_at(times, as_of)
    assert out[F.ITEM_PRIOR_COUNT] == 3
    assert out[F.ITEM_RECENT_COUNT] == 2
    assert out[F.ITEM_DAYS_SINCE_FIRST] == pytest.approx((window + 1) / day)


def test_item_features_of_an_item_with_no_past():
    assert F.item_features_at([], 1000) == {F.ITEM_PRIOR_COUNT: 0, F.ITEM_RECENT_COUNT: 0, F.ITEM_DAYS_SINCE_FIRST: 0.0}
    assert F.item_features_at([1000, 2000], 1000)[F.ITEM_PRIOR_COUNT] == 0
