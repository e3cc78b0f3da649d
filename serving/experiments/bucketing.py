"""Deterministic, salted assignment of users to experiment arms.

A user's position in an experiment is one uniform number in [0, 1): the first
8 bytes of SHA-256(salt || 0x00 || user_id) over 2**64. The same user always
lands in the same arm (no state, any replica agrees), and two experiments with
different salts see unrelated numbers, so their assignments are independent.
The holdout takes the bottom `holdout` of the interval; the rest is cut into
arms in proportion to their weights.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from towerflow.serving.experiments.config import HOLDOUT_ARM, Experiment

_SCALE = float(2**64)


def unit_hash(salt: str, user_id: str) -> float:
    """A uniform number in [0, 1) fixed by (salt, user_id)."""
    digest = hashlib.sha256(salt.encode("utf-8") + b"\x00" + str(user_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


@dataclass(frozen=True)
class Assignment:
    experiment: str
    arm: str  # an arm name, or "holdout"
    source: str  # what serves this user in this experiment

    @property
    def in_holdout(self) -> bool:
        return self.arm == HOLDOUT_ARM


def assign(experiment: Experiment, user_id: str) -> Assignment:
    """The user's arm in `experiment` (the same answer on every call and every replica)."""
    u = unit_hash(experiment.salt, user_id)
    if u < experiment.holdout:
        return Assignment(experiment.name, HOLDOUT_ARM, experiment.holdout_source)
    position = (u - experiment.holdout) / (1.0 - experiment.holdout)  # uniform again on [0, 1)
    total = sum(a.weight for a in experiment.arms)
    edge = 0.0
    for arm in experiment.arms:
        edge += arm.weight / total
        if position < edge:
            return Assignment(experiment.name, arm.name, arm.source)
    last = experiment.arms[-1]  # float rounding can leave the top edge a hair under 1
    return Assignment(experiment.name, last.name, last.source)


def in_share(salt: str, user_id: str, share: float) -> bool:
    """Whether the user falls in the first `share` of the salted interval (e.g. the canary's users)."""
    return unit_hash(salt, user_id) < share
