"""User slices by demographic attribute: age buckets and gender.

Used to slice evaluation reports (gender, age bucket) and by the segment-popularity baseline
(age bucket x gender). No TensorFlow, so baselines and their tests stay light.
"""

from __future__ import annotations

import pandas as pd

from towerflow.models import features as F

# MovieLens-1M's age codes are the lower bounds of these buckets, so raw ages (ML-100K) and codes
# (ML-1M) land in the same buckets.
AGE_BUCKETS = ((1, 18, "<18"), (18, 25, "18-24"), (25, 35, "25-34"), (35, 45, "35-44"), (45, 50, "45-49"))
AGE_BUCKETS += ((50, 56, "50-55"), (56, 10_000, "56+"))
UNKNOWN = "unknown"


def age_bucket(age) -> str:
    """ "<18", "18-24", ..., "56+"; "unknown" for a missing or non-positive age."""
    try:
        value = int(age)
    except (TypeError, ValueError):
        return UNKNOWN
    for low, high, label in AGE_BUCKETS:
        if low <= value < high:
            return label
    return UNKNOWN


def user_slicings(users: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Slicing name -> {user_id: slice label}: "gender" -> "gender=F", "age" -> "age=25-34".

    `users` is indexed by user_id with USER_GENDER and USER_AGE columns. Empty genders and unknown
    ages get "=unknown".
    """
    gender = {str(u): f"gender={g or UNKNOWN}" for u, g in users[F.USER_GENDER].fillna("").items()}
    age = {str(u): f"age={age_bucket(a)}" for u, a in users[F.USER_AGE].items()}
    return {"gender": gender, "age": age}


def demographic_segments(users: pd.DataFrame) -> dict[str, str]:
    """user_id -> "age=25-34|gender=F" (age bucket x gender), the segment-popularity baseline's key."""
    slicings = user_slicings(users)
    return {u: f"{slicings['age'][u]}|{slicings['gender'][u]}" for u in slicings["gender"]}
