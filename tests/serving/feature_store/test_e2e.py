"""The store against what the pipeline really wrote, on MovieLens-100K.

Parity: materialized with --as-of eval-cutoff, then fed every later event
through record_event, the store returns for 500 sampled (user, time) pairs
exactly the features ingestion wrote into the tf.Examples. Privacy: a deleted
user is gone from the store, from every split of the next ingestion run and
from the dataset exported for the run after.

The ingestion run is the session's shared pipeline run (tests/conftest.py);
TOWERFLOW_FS_RUN_DIR may name an existing `towerflow run --output-dir` instead.
"""

import os
import random
from pathlib import Path

import numpy as np
import pytest
from ingestion_checks import read_examples

from towerflow.cli.main import main
from towerflow.models import features
from towerflow.pipeline import mlmd
from towerflow.serving.feature_store import FeatureStore, StoreConfig

pytestmark = pytest.mark.e2e
SAMPLES = 500


@pytest.fixture(scope="module")
def run_dir(request) -> Path:
    if os.environ.get("TOWERFLOW_FS_RUN_DIR"):
        return Path(os.environ["TOWERFLOW_FS_RUN_DIR"]).resolve()
    config, _, _ = request.getfixturevalue("pipeline_run")
    return Path(config.pipeline_root).parent


def _examples_uri(run_dir: Path) -> str:
    return mlmd.latest_artifacts(str(run_dir / "metadata.sqlite"))["Ingestion.examples"]


def _read_splits(uri: str) -> dict[str, list[dict]]:
    return {s: read_examples(os.path.join(uri, f"Split-{s}")) for s in ("train", "eval", "test")}


@pytest.fixture(scope="module")
def examples(run_dir) -> list[dict]:
    return [row for rows in _read_splits(_examples_uri(run_dir)).values() for row in rows]


def _where(kind: str, client) -> list[str]:
    if kind == "standalone":
        kwargs = client.connection_pool.connection_kwargs
        return ["--redis-url", f"redis://{kwargs['host']}:{kwargs['port']}/0"]
    nodes = client.get_nodes()
    return ["--redis-cluster", ",".join(f"{n.host}:{n.port}" for n in nodes)]


def _f32(value) -> np.float32:
    return np.float32(value)


def test_store_features_equal_the_ingested_examples(backend, run_dir, examples, tmp_path, capsys):
    kind, client = backend
    assert main(["features", "materialize", "--run-dir", str(run_dir), "--as-of", "eval-cutoff",
                 *_where(kind, client)]) == 0  # fmt: skip
    assert "is active" in capsys.readouterr().out
    store = FeatureStore(client, StoreConfig(events_dir=str(tmp_path / "events")))
    as_of = store.metadata["as_of"]
    later = sorted((r for r in examples if r[features.TIMESTAMP] >= as_of), key=lambda r: r[features.TIMESTAMP])
    assert store.metadata["events"] + len(later) == len(examples) == 100_000
    for n, row in enumerate(later):
        store.record_event(row[features.USER_ID], row[features.ITEM_ID], "rating", rating=row[features.RATING],
                           timestamp=row[features.TIMESTAMP], event_id=f"p{n}")  # fmt: skip

    sample = random.Random(0).sample(examples, SAMPLES)
    assert sum(r[features.TIMESTAMP] >= as_of for r in sample) > 50  # both sides of the cut-off are checked
    for row in sample:
        user, item, ts = row[features.USER_ID], row[features.ITEM_ID], row[features.TIMESTAMP]
        got = store.query_features(user, ts)
        context = (user, item, ts)
        assert got[features.HIST_ITEM_IDS] == row[features.HIST_ITEM_IDS], context
        for key in (features.USER_PRIOR_COUNT, features.USER_AGE, features.USER_GENDER, features.USER_OCCUPATION,
                    features.USER_ZIP, features.CTX_HOUR, features.CTX_DAY_OF_WEEK):  # fmt: skip
            assert got[key] == row[key], (key, context)
        for key in (features.USER_PRIOR_MEAN_RATING, features.USER_DAYS_SINCE_FIRST):
            assert _f32(got[key]) == _f32(row[key]), (key, context)
        [popularity] = store.item_features_at([item], ts)
        assert popularity[features.ITEM_PRIOR_COUNT] == row[features.ITEM_PRIOR_COUNT], context
        assert popularity[features.ITEM_RECENT_COUNT] == row[features.ITEM_RECENT_COUNT], context
        assert _f32(popularity[features.ITEM_DAYS_SINCE_FIRST]) == _f32(row[features.ITEM_DAYS_SINCE_FIRST]), context
        [item_row] = store.items([item])
        assert item_row[features.ITEM_GENRES] == row[features.ITEM_GENRES], context
        assert item_row[features.ITEM_RELEASE_YEAR] == row[features.ITEM_RELEASE_YEAR], context


def test_a_deleted_user_is_gone_from_the_store_the_next_ingestion_and_the_export(
    standalone_server, run_dir, examples, ml100k_dir, tmp_path, capsys
):
    from towerflow.pipeline.config import PipelineConfig
    from towerflow.pipeline.local_runner import run_local

    server = standalone_server
    url = ["--redis-url", server.url]
    _client(server).flushall()
    counts = {}
    for row in examples:
        counts[row[features.USER_ID]] = counts.get(row[features.USER_ID], 0) + 1
    user = max(counts, key=counts.get)  # the most active user: rows in every split
    assert main(["features", "materialize", "--run-dir", str(run_dir), *url]) == 0

    # A new run directory: the delete writes its ledger, its next pipeline run reads it.
    out = tmp_path / "after_delete"
    assert main(["users", "delete", user, "--run-dir", str(out), *url]) == 0
    assert "removed from" in capsys.readouterr().out
    store = FeatureStore(_client(server), StoreConfig())
    assert store.user_profile(user) is None and store.user_events(user) == []

    config = PipelineConfig(data_dir=str(ml100k_dir), pipeline_root=str(out / "pipeline_root"),
                            metadata_path=str(out / "metadata.sqlite"), train_models=False)  # fmt: skip
    summary = run_local(config)
    assert summary.examples_properties["deleted_users_excluded"] == 1
    splits = _read_splits(_examples_uri(out))
    assert sum(len(rows) for rows in splits.values()) == 100_000 - counts[user]
    for rows in splits.values():
        assert user not in {r[features.USER_ID] for r in rows}

    assert main(["features", "materialize", "--run-dir", str(out), *url]) == 0
    store = FeatureStore(_client(server), StoreConfig())
    assert store.user_profile(user) is None and store.metadata["users"] == 942

    # Online events of others still flow to the next run; the deleted user's never do.
    store = FeatureStore(_client(server), StoreConfig(events_dir=str(out / "serving" / "events")))
    other = next(u for u in counts if u != user)
    store.record_event(other, "1", "rating", rating=5)
    assert main(["features", "export-events", "--run-dir", str(out), "--out", str(tmp_path / "next")]) == 0
    lines = (tmp_path / "next" / "interactions.csv").read_text().splitlines()
    assert len(lines) == 1 + 100_000 - counts[user] + 1
    assert not any(line.startswith(f"{user},") for line in lines)


def _client(server):
    from towerflow.serving.feature_store.server import connect

    return connect(redis_url=server.url)
