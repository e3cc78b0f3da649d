"""Temporal split rules of ingestion (no Beam or TensorFlow, so configs and tests stay light)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SPLITS = ("train", "eval", "test")
GLOBAL_TIME = "global_time"
LEAVE_LAST_N = "leave_last_n"
SPLIT_STRATEGIES = (GLOBAL_TIME, LEAVE_LAST_N)
# The one place the split defaults live; the Ingestion component and PipelineConfig take them from here.
DEFAULT_TRAIN_FRACTION = 0.8
DEFAULT_EVAL_FRACTION = 0.9
DEFAULT_LEAVE_LAST_N = 1


@dataclass(frozen=True)
class SplitConfig:
    """How interactions are assigned to train / eval / test.

    global_time: train < quantile(fractions[0]) <= eval < quantile(fractions[1]) <= test.
    leave_last_n: each user's last n interactions are test, the n before are eval;
      a user keeps at least one interaction in train, so users with few
      interactions give up eval/test rows first.
    """

    strategy: str = GLOBAL_TIME
    fractions: tuple[float, float] = (DEFAULT_TRAIN_FRACTION, DEFAULT_EVAL_FRACTION)
    leave_last_n: int = DEFAULT_LEAVE_LAST_N

    def __post_init__(self):
        if self.strategy not in SPLIT_STRATEGIES:
            raise ValueError(f"unknown split strategy {self.strategy!r}; choose one of {SPLIT_STRATEGIES}")
        lo, hi = self.fractions
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"split fractions must satisfy 0 < train <= eval <= 1, got {self.fractions}")
        if self.leave_last_n < 1:
            raise ValueError(f"leave_last_n must be >= 1, got {self.leave_last_n}")


def assign_split_global_time(timestamp: int, cutoffs: Sequence[float]) -> str:
    """train < cutoffs[0] <= eval < cutoffs[1] <= test."""
    if timestamp < cutoffs[0]:
        return "train"
    if timestamp < cutoffs[1]:
        return "eval"
    return "test"


def assign_splits_leave_last_n(num_events: int, n: int) -> list[str]:
    """Split labels for one user's events in time order (see SplitConfig)."""
    n_test = min(n, max(num_events - 1, 0))
    n_eval = min(n, max(num_events - 1 - n_test, 0))
    n_train = num_events - n_test - n_eval
    return ["train"] * n_train + ["eval"] * n_eval + ["test"] * n_test
