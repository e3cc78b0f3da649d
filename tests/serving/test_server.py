"""Embedded server behaviour beyond the protocol: version swaps, in-flight requests, batching, limits."""

import http.client
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from towerflow.components.pusher import model_repository as repo
from towerflow.serving.client import RestClient
from towerflow.serving.model_server import ModelServer, ServerOptions
from towerflow.serving.servables import Batcher, BatchingOptions, ModelManager


def test_manager_swaps_versions_and_in_flight_servable_survives(tiny_models, tmp_path):
    repo.push(tmp_path, "tiny", tiny_models[1])
    manager = ModelManager(config_file=str(tmp_path / repo.CONFIG_FILE), poll_seconds=0)
    manager.start()
    try:
        held = manager.resolve("tiny")  # a request that resolved v1 before the swap
        repo.push(tmp_path, "tiny", tiny_models[2])
        assert manager.refresh() == {"tiny": [1, 2]}
        assert manager.resolve("tiny").version == 2
        assert manager.resolve("tiny", label="stable").version == 2
        repo.rollback(tmp_path, "tiny", to=1)
        assert manager.refresh() == {"tiny": [1]}
        assert manager.resolve("tiny").version == 1
        assert [(v, e.state) for v, e in manager.status("tiny")] == [(2, "END"), (1, "AVAILABLE")]
        assert held.predict(None, {"x": np.array([1.0], np.float32)})["y"].tolist() == [2.5]
    finally:
        manager.stop()


def test_broken_version_is_reported_and_not_served(tiny_models, tmp_path):
    repo.push(tmp_path, "tiny", tiny_models[1])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a proto")
    repo.push(tmp_path, "tiny", broken)
    manager = ModelManager(config_file=str(tmp_path / repo.CONFIG_FILE), poll_seconds=0)
    manager.start()
    try:
        assert manager.resolve("tiny").version == 1
        states = dict(manager.status("tiny"))
        assert states[2].state == "END" and states[2].error_code != "OK" and "failed to load" in states[2].error_message
    finally:
        manager.stop()


def test_batcher_merges_concurrent_calls_and_isolates_failures():
    calls = []

    def run(inputs):
        calls.append(len(inputs["x"]))
        if (inputs["x"] < 0).any():
            raise ValueError("negative")
        return {"y": inputs["x"] * 2, "w": inputs["h"][:, :1]}

    batcher = Batcher(run, BatchingOptions(max_batch_size=64, batch_timeout_micros=50_000), "t")
    try:

        def one(i):
            h = np.array([["a"] * (1 + i % 3)], object)
            return batcher.submit({"x": np.array([float(i)]), "h": h})

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(8)))
        assert [r["y"].tolist() for r in results] == [[2.0 * i] for i in range(8)]
        assert max(calls) > 1  # at least one merged call (hist widths differed, so padding was exercised)
        with ThreadPoolExecutor(2) as pool:
            good = pool.submit(batcher.submit, {"x": np.array([1.0]), "h": np.array([["a"]], object)})
            bad = pool.submit(batcher.submit, {"x": np.array([-1.0]), "h": np.array([["a"]], object)})
            assert good.result()["y"].tolist() == [2.0]
            with pytest.raises(ValueError):
                bad.result()
    finally:
        batcher.close()


def test_batching_server_gives_the_same_answers(tiny_models, tmp_path):
    repo.push(tmp_path, "tiny", tiny_models[1])
    options = ServerOptions(
        model_config_file=str(tmp_path / repo.CONFIG_FILE),
        port=0,
        rest_api_port=0,
        batching=BatchingOptions(max_batch_size=16, batch_timeout_micros=20_000),
    )
    with ModelServer(options) as server:
        client = RestClient(server.rest_url)

        def one(i):
            hist = ["a"] * (i % 4) + [""]
            body = {"signature_name": "score", "instances": [{"user_id": "u", "user_age": i, "hist_item_ids": hist}]}
            return client.predict_body("tiny", body)["predictions"][0]["score"]

        with ThreadPoolExecutor(8) as pool:
            scores = list(pool.map(one, range(16)))
        assert scores == pytest.approx([0.01 * i + (i % 4) + 2.0 for i in range(16)])


def test_body_and_instance_limits(tiny_models, tmp_path):
    repo.push(tmp_path, "tiny", tiny_models[1])
    options = ServerOptions(
        model_config_file=str(tmp_path / repo.CONFIG_FILE),
        port=0,
        rest_api_port=0,
        max_body_bytes=1000,
        max_instances=3,
    )
    with ModelServer(options) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=10)
        conn.request("POST", "/v1/models/tiny:predict", body=json.dumps({"instances": [1.0] * 500}))
        response = conn.getresponse()
        assert response.status == 413 and "limit" in json.loads(response.read())["error"]
        conn.close()
        status, body = RestClient(server.rest_url).request("POST", "/v1/models/tiny:predict", {"instances": [1.0] * 4})
        assert status == 400 and "at most 3" in body["error"]
        assert RestClient(server.rest_url).predict("tiny", instances=[1.0])["predictions"] == [2.5]


def test_rest_client_retries_then_reports_unavailable():
    client = RestClient("http://127.0.0.1:9", timeout=0.5, retries=1, backoff=0.01)
    with pytest.raises(RuntimeError, match="UNAVAILABLE|failed"):
        client.status("m")


def test_stop_event_ends_cli_serve(tiny_models, tmp_path, capsys):
    """`towerflow serve` (embedded) starts, reports, and stops on its stop event."""
    import argparse

    from towerflow.cli import serving_commands

    repo.push(tmp_path, "tiny", tiny_models[1])
    parser = argparse.ArgumentParser()
    serving_commands.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["serve", "--serving-root", str(tmp_path), "--backend", "embedded", "--port", "0", "--rest-api-port", "0"]
    )
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=serving_commands._serve, args=(args, ready, stop))
    thread.start()
    assert ready.wait(60)
    stop.set()
    thread.join(30)
    out = capsys.readouterr().out
    assert "REST http://127.0.0.1:" in out and "'tiny': [1]" in out and "Server stopped" in out


def test_grpc_handlers_turn_failures_into_status_codes(tiny_models, tmp_path, monkeypatch):
    """Every gRPC method ends a failed call with the failure's status and keeps serving."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    from towerflow.serving.client import GrpcClient
    from towerflow.serving.tensor_codec import ServingError

    repo.push(tmp_path, "tiny", tiny_models[1])
    options = ServerOptions(model_config_file=str(tmp_path / repo.CONFIG_FILE), port=0, rest_api_port=0)
    with ModelServer(options) as server:
        client = GrpcClient(server.grpc_target, timeout=10, retries=0)
        try:
            with pytest.raises(ServingError) as err:
                client.status("nope")
            assert err.value.code == "NOT_FOUND" and "nope" in err.value.message
            with pytest.raises(ServingError) as err:
                client.metadata("tiny", version=7)
            assert err.value.code == "NOT_FOUND"
            request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["other"])
            request.model_spec.name = "tiny"
            with pytest.raises(ServingError) as err:
                client._call(client._predict.GetModelMetadata, request)
            assert err.value.code == "INVALID_ARGUMENT" and "signature_def" in err.value.message
            # A bug (not a bad request) in any handler: INTERNAL with the exception's type and message.
            monkeypatch.setattr(server.manager, "resolve", lambda *a: {}["no such key"])
            with pytest.raises(ServingError) as err:
                client.predict("tiny", {"x": [1.0]})
            assert err.value.code == "INTERNAL" and err.value.message == "KeyError: 'no such key'"
            with pytest.raises(ServingError) as err:
                client.metadata("tiny")
            assert err.value.code == "INTERNAL"
            monkeypatch.undo()
            assert client.predict("tiny", {"x": [1.0]})["y"].tolist() == [2.5]
            assert [s.version for s in client.status("tiny").model_version_status] == [1]
        finally:
            client.close()


def test_grpc_status_for_a_code_grpc_does_not_know_is_internal():
    import grpc

    from towerflow.serving.model_server import _grpc_handler
    from towerflow.serving.tensor_codec import ServingError

    class Context:  # records what grpc's ServicerContext.abort receives, and raises as it does
        def abort(self, code, details):
            self.aborted = (code, details)
            raise RuntimeError("aborted")

    class Servicer:
        @_grpc_handler
        def Method(self, request, context):  # noqa: N802
            if request == "odd":
                raise ServingError("NOT_A_CODE", "odd failure")
            if request == "bad":
                raise ServingError("FAILED_PRECONDITION", "not ready")
            return "response"

    context = Context()
    assert Servicer().Method("ok", context) == "response" and not hasattr(context, "aborted")
    with pytest.raises(RuntimeError, match="aborted"):
        Servicer().Method("odd", context)
    assert context.aborted == (grpc.StatusCode.INTERNAL, "odd failure")
    with pytest.raises(RuntimeError, match="aborted"):
        Servicer().Method("bad", context)
    assert context.aborted == (grpc.StatusCode.FAILED_PRECONDITION, "not ready")
    assert Servicer.Method.__name__ == "Method"
