"""End to end: push v1, serve (a separate `towerflow serve` process), query, push v2 under load, roll back.

The load generator is bounded (threads x time x requests); the test asserts
zero failed requests across both swaps and that each client thread sees
v1 -> v2 -> v1 in order, never going back mid-switch.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from towerflow.cli import serving_commands
from towerflow.serving.client import GrpcClient, RestClient, placeholder_instance

REPO = Path(__file__).resolve().parents[2]
V1, V2 = 2.5, 3.5  # y for x=1 with offsets 2 and 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli(*argv) -> int:
    return serving_commands.main([str(a) for a in argv])


class Load:
    """Threads predicting x=1 over REST (and one over gRPC) until stopped or a bound is hit."""

    def __init__(self, rest_url, grpc_target, threads=3, max_seconds=60.0, max_requests=20_000):
        self.results = {i: [] for i in range(threads + 1)}  # thread -> [y or "error: ..."]
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._max = max_requests
        self._threads = [threading.Thread(target=self._rest, args=(i, rest_url)) for i in range(threads)]
        self._threads.append(threading.Thread(target=self._grpc, args=(threads, grpc_target)))

    def _go(self) -> bool:
        count = sum(len(r) for r in self.results.values())
        return not self._stop.is_set() and time.monotonic() < self._deadline and count < self._max

    def _rest(self, i, url):
        client = RestClient(url, timeout=10, retries=0)
        while self._go():
            try:
                self.results[i].append(client.predict("tiny", instances=[1.0])["predictions"][0])
            except Exception as err:
                self.results[i].append(f"error: {err}")

    def _grpc(self, i, target):
        client = GrpcClient(target, timeout=10, retries=0)
        while self._go():
            try:
                self.results[i].append(float(client.predict("tiny", {"x": [1.0]})["y"][0]))
            except Exception as err:
                self.results[i].append(f"error: {err}")
        client.close()

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def wait_for(self, value, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(r and r[-1] == value for r in self.results.values()):
                return
            time.sleep(0.05)
        raise AssertionError(f"no response {value} within {timeout}s")

    def errors(self):
        return [r for rs in self.results.values() for r in rs if isinstance(r, str)]


def phases(results):
    """Collapses a thread's responses into the sequence of distinct values (e.g. [2.5, 3.5])."""
    seq = []
    for r in results:
        if not seq or seq[-1] != r:
            seq.append(r)
    return seq


@pytest.mark.e2e
def test_push_serve_swap_under_load_and_rollback(tiny_models, tmp_path, capsys):
    root = tmp_path / "serving"
    assert cli("push", "--model", "tiny", "--saved-model", tiny_models[1], "--serving-root", root) == 0
    grpc_port, rest_port = free_port(), free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "towerflow.cli.serving_commands", "serve", "--serving-root", str(root),
         "--backend", "embedded",
         "--port", str(grpc_port), "--rest-api-port", str(rest_port), "--poll-seconds", "0.5"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip
    rest_url, grpc_target = f"http://127.0.0.1:{rest_port}", f"127.0.0.1:{grpc_port}"
    try:
        RestClient(rest_url).wait_until_available("tiny", timeout=90)
        capsys.readouterr()
        assert cli("query", "--model", "tiny", "--url", rest_url, "--json", '{"instances": [1.0]}', "--compact") == 0
        assert '{"predictions": [2.5]}' in capsys.readouterr().out

        with Load(rest_url, grpc_target) as load:
            load.wait_for(V1)
            assert cli("push", "--model", "tiny", "--saved-model", tiny_models[2], "--serving-root", root) == 0
            load.wait_for(V2)
            time.sleep(1.0)  # keep the load on after the switch
        assert load.errors() == []
        for results in load.results.values():
            assert phases(results) in ([V1, V2], [V2]), phases(results)
        assert sum(len(r) for r in load.results.values()) > 50

        status = RestClient(rest_url).status("tiny")["model_version_status"]
        assert {(s["version"], s["state"]) for s in status} >= {("1", "AVAILABLE"), ("2", "AVAILABLE")}

        with Load(rest_url, grpc_target) as load:
            load.wait_for(V2)
            assert cli("rollback", "--model", "tiny", "--serving-root", root) == 0
            load.wait_for(V1)
            time.sleep(1.0)
        assert load.errors() == []
        for results in load.results.values():
            assert phases(results) in ([V2, V1], [V1]), phases(results)
        out = capsys.readouterr().out
        assert "Rolled tiny back from version 2 to 1" in out
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            states = {s["version"]: s["state"] for s in RestClient(rest_url).status("tiny")["model_version_status"]}
            if states.get("2") == "END":
                break
            time.sleep(0.2)
        assert states == {"1": "AVAILABLE", "2": "END"}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
    assert "Server stopped" in (tmp_path / "server.log").read_text()


@pytest.mark.e2e
def test_real_exported_models_serve_over_rest_and_grpc(pipeline_run, tmp_path, capsys):
    """The Trainers' SavedModels from a real pipeline run through push -> embedded server -> both APIs."""
    config, _, _ = pipeline_run
    run_dir = Path(config.metadata_path).parent
    from towerflow.serving.model_server import ModelServer, ServerOptions

    root = tmp_path / "serving"
    for model in ("two_tower", "ranker"):
        assert cli("push", "--model", model, "--from-run", run_dir, "--serving-root", root) == 0
    options = ServerOptions(model_config_file=str(root / "models.config"), port=0, rest_api_port=0)
    with ModelServer(options) as server:
        rest, grpc_client = RestClient(server.rest_url, timeout=30), GrpcClient(server.grpc_target, timeout=30)
        try:
            for model, signature, output, shape in (
                ("two_tower", "query_tower", "embedding", (64,)),
                ("two_tower", "candidate_tower", "embedding", (64,)),
                ("ranker", "ranker", "rating", ()),
            ):
                sig = rest.metadata(model)["metadata"]["signature_def"]["signature_def"][signature]
                instance = placeholder_instance(sig)
                body = rest.predict(model, instances=[instance, instance], signature_name=signature)
                predictions = body["predictions"]
                assert len(predictions) == 2
                value = predictions[0][output] if isinstance(predictions[0], dict) else predictions[0]
                assert len(value) == shape[0] if shape else isinstance(value, float)
                columns = {k: [v, v] for k, v in instance.items()}
                out = grpc_client.predict(model, columns, signature_name=signature)
                assert out[output].shape == (2, *shape)
        finally:
            grpc_client.close()
