"""The reference numbers of docs/design.md: popularity on MovieLens-100K under the global_time protocol.

Needs RecBole's ml-100k atomic files (``ml-100k.inter``) in $TOWERFLOW_ML100K_DIR or <repo>/data/ml-100k;
``pip download --no-deps recbole==1.2.1`` and unzip ``recbole/dataset_example/ml-100k/*`` to get them.
"""

import os
from pathlib import Path

import pandas as pd
import pytest

from towerflow.components.evaluation.protocol import (
    EvalSet,
    PopularityRecommender,
    assign_global_time_split,
    evaluate,
    global_time_cutoffs,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("TOWERFLOW_ML100K_DIR") or REPO_ROOT / "data" / "ml-100k")
INTER = DATA_DIR / "ml-100k.inter"

pytestmark = pytest.mark.skipif(
    not INTER.exists(),
    reason=f"MovieLens-100K not found at {INTER} (set TOWERFLOW_ML100K_DIR or fetch it into data/ml-100k)",
)


def _load() -> pd.DataFrame:
    df = pd.read_csv(INTER, sep="\t", dtype=str)
    df.columns = [c.split(":")[0] for c in df.columns]  # "user_id:token" -> "user_id"
    df["timestamp"] = df["timestamp"].astype(float)
    return df


def test_popularity_reference_numbers():
    df = _load()
    df["split"] = assign_global_time_split(df, global_time_cutoffs(df["timestamp"], (0.8, 0.9)))
    eval_set = EvalSet.from_frame(df)
    report = evaluate(PopularityRecommender(df[df["split"] != "test"]), eval_set, ks=(10, 50, 100))

    assert report.n_users["all"] == 166
    assert (report.n_users["warm"], report.n_users["cold"]) == (90, 76)
    expected = {
        ("all", "recall", 100): 0.333,
        ("all", "recall", 10): 0.068,
        ("all", "hit_rate", 10): 0.711,
        ("all", "ndcg", 10): 0.288,
        ("warm", "recall", 100): 0.323,
        ("warm", "ndcg", 10): 0.151,
        ("cold", "recall", 100): 0.345,
        ("cold", "ndcg", 10): 0.450,
    }
    got = {key: round(report.metric(name, k, key[0]), 3) for key in expected for name, k in [key[1:]]}
    assert got == expected, report.format_table(5)
