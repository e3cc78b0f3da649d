"""Temporal split rules."""

import pytest

from towerflow.components.ingestion.splits import SplitConfig, assign_split_global_time, assign_splits_leave_last_n


@pytest.mark.parametrize("timestamp,expected", [(9, "train"), (10, "eval"), (19.5, "eval"), (20, "test"), (99, "test")])
def test_global_time_cutoff_belongs_to_the_later_split(timestamp, expected):
    assert assign_split_global_time(timestamp, (10, 20)) == expected


@pytest.mark.parametrize(
    "n_events,n,expected",
    [
        (1, 1, ["train"]),  # a single interaction stays in train
        (2, 1, ["train", "test"]),
        (3, 1, ["train", "eval", "test"]),
        (5, 2, ["train", "eval", "eval", "test", "test"]),
        (4, 2, ["train", "eval", "test", "test"]),
        (0, 1, []),
    ],
)
def test_leave_last_n(n_events, n, expected):
    assert assign_splits_leave_last_n(n_events, n) == expected


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"strategy": "random"}, "unknown split strategy"),
        ({"fractions": (0.9, 0.8)}, "fractions"),
        ({"fractions": (0.0, 0.8)}, "fractions"),
        ({"leave_last_n": 0}, "leave_last_n"),
    ],
)
def test_bad_split_config_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SplitConfig(**kwargs)
