"""TF Serving's REST and gRPC APIs, checked against the documented request/response shapes.

Expected values come from https://www.tensorflow.org/tfx/serving/api_rest (the
half_plus_two / half_plus_three examples, the status JSON, the row/columnar
and b64 rules) and tensorflow_serving/apis/*.proto -- not from this server's
output. The same suite runs against the embedded server and, when
`tensorflow_model_server` is on PATH, against the real one (marker `tfserving`).
Only status codes and the presence of {"error": ...} are checked for errors,
since message wording differs between servers.
"""

import base64
import http.client
import json
import socket
import subprocess

import numpy as np
import pytest

from towerflow.components.pusher import model_repository as repo
from towerflow.serving import tfserving
from towerflow.serving.client import GrpcClient, RestClient
from towerflow.serving.tensor_codec import ServingError

MODEL = "tiny"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module", params=["embedded", pytest.param("tfserving", marks=pytest.mark.tfserving)])
def server(request, tiny_models, tmp_path_factory):
    """(rest base url, grpc target, backend) serving `tiny` version 1 (offset 2) labelled stable."""
    root = tmp_path_factory.mktemp(f"serving_{request.param}")
    repo.push(root, MODEL, tiny_models[1])
    config = str(root / repo.CONFIG_FILE)
    if request.param == "embedded":
        from towerflow.serving.model_server import ModelServer, ServerOptions

        srv = ModelServer(
            ServerOptions(model_config_file=config, port=0, rest_api_port=0, max_body_bytes=200_000, max_instances=64)
        ).start()
        yield srv.rest_url, srv.grpc_target, "embedded"
        srv.stop()
        return
    if tfserving.find_binary() is None:
        pytest.skip("tensorflow_model_server is not on PATH")
    grpc_port, rest_port = free_port(), free_port()
    argv = tfserving.command(config, port=grpc_port, rest_api_port=rest_port, binary=tfserving.find_binary())
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        RestClient(f"http://127.0.0.1:{rest_port}").wait_until_available(MODEL, timeout=60)
        yield f"http://127.0.0.1:{rest_port}", f"127.0.0.1:{grpc_port}", "tfserving"
    finally:
        process.terminate()
        process.wait(timeout=30)


def raw(server, method, path, body=None, headers=None):
    """One HTTP request, returning (status, parsed JSON body)."""
    host, port = server[0].rsplit("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers or {})
        response = conn.getresponse()
        text = response.read()
        return response.status, json.loads(text) if text else None
    finally:
        conn.close()


# -- REST: documented success shapes ---------------------------------------------------------------
def test_status_matches_documented_json(server):
    status, body = raw(server, "GET", f"/v1/models/{MODEL}")
    assert status == 200
    assert body == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    for path in (f"/v1/models/{MODEL}/versions/1", f"/v1/models/{MODEL}/labels/stable"):
        status, body = raw(server, "GET", path)
        assert status == 200 and body["model_version_status"][0]["version"] == "1"


def test_predict_row_format_half_plus_two(server):
    status, body = raw(server, "POST", f"/v1/models/{MODEL}:predict", {"instances": [1.0, 2.0, 5.0]})
    assert (status, body) == (200, {"predictions": [2.5, 3.0, 4.5]})
    # version and label addressing, and signature_name explicitly set to the default
    for path in (f"/v1/models/{MODEL}/versions/1:predict", f"/v1/models/{MODEL}/labels/stable:predict"):
        payload = {"signature_name": "serving_default", "instances": [1.0]}
        assert raw(server, "POST", path, payload) == (200, {"predictions": [2.5]})


def test_predict_columnar_format(server):
    assert raw(server, "POST", f"/v1/models/{MODEL}:predict", {"inputs": [1.0, 3.0]}) == (200, {"outputs": [2.5, 3.5]})
    assert raw(server, "POST", f"/v1/models/{MODEL}:predict", {"inputs": {"x": [1.0]}}) == (200, {"outputs": [2.5]})


def test_predict_named_inputs_and_multiple_outputs(server):
    instances = [
        {"user_id": "u1", "user_age": 30, "hist_item_ids": ["a", "b", ""]},
        {"user_id": "u2", "user_age": 50, "hist_item_ids": ["c", "", ""]},
    ]
    status, body = raw(
        server, "POST", f"/v1/models/{MODEL}:predict", {"signature_name": "score", "instances": instances}
    )
    assert status == 200
    # row format, several outputs: a list of objects, one per instance
    assert [sorted(p) for p in body["predictions"]] == [["embedding", "score"]] * 2
    assert body["predictions"][0]["score"] == pytest.approx(0.3 + 2 + 2.0)
    assert body["predictions"][1]["embedding"] == pytest.approx([0.5 + 1 + 2.0, 1.0])
    columnar = {
        "signature_name": "score",
        "inputs": {"user_id": ["u1", "u2"], "user_age": [30, 50], "hist_item_ids": [["a", "b", ""], ["c", "", ""]]},
    }
    status, body = raw(server, "POST", f"/v1/models/{MODEL}:predict", columnar)
    # columnar format, several outputs: an object keyed by output name
    assert status == 200 and sorted(body["outputs"]) == ["embedding", "score"]
    assert body["outputs"]["score"] == pytest.approx([4.3, 3.5])


def test_b64_inputs_and_bytes_outputs(server):
    blob = bytes([0, 255, 1, 128])
    payload = {"signature_name": "echo", "instances": [{"b64": base64.b64encode(blob).decode()}]}
    status, body = raw(server, "POST", f"/v1/models/{MODEL}:predict", payload)
    assert status == 200
    (prediction,) = body["predictions"]
    # outputs named *_bytes come back as {"b64": ...}
    assert base64.b64decode(prediction["out_bytes"]["b64"]) == blob
    assert prediction["length"] == 4


def test_metadata_lists_signature_defs(server):
    status, body = raw(server, "GET", f"/v1/models/{MODEL}/metadata")
    assert status == 200
    assert body["model_spec"]["name"] == MODEL and body["model_spec"]["version"] == "1"
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "score", "echo"} <= set(signatures)
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in default["inputs"]["x"]["tensor_shape"]["dim"]] == ["-1"]
    assert signatures["score"]["inputs"]["hist_item_ids"]["dtype"] == "DT_STRING"
    assert len(signatures["score"]["inputs"]["hist_item_ids"]["tensor_shape"]["dim"]) == 2
    status, body = raw(server, "GET", f"/v1/models/{MODEL}/labels/stable/metadata")
    assert status == 200 and body["model_spec"]["version"] == "1"


# -- REST: errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("GET", "/v1/models/nope", None, 404),
        ("POST", "/v1/models/nope:predict", {"instances": [1.0]}, 404),
        ("GET", f"/v1/models/{MODEL}/versions/99", None, 404),
        ("POST", f"/v1/models/{MODEL}/versions/99:predict", {"instances": [1.0]}, 404),
        ("POST", f"/v1/models/{MODEL}:predict", b"{not json", 400),
        ("POST", f"/v1/models/{MODEL}:predict", {"instances": [1.0], "inputs": [1.0]}, 400),
        ("POST", f"/v1/models/{MODEL}:predict", {"signature_name": "serving_default"}, 400),
        ("POST", f"/v1/models/{MODEL}:predict", {"instances": ["a string"]}, 400),  # dtype
        ("POST", f"/v1/models/{MODEL}:predict", {"instances": [[1.0, 2.0]]}, 400),  # rank
        ("POST", f"/v1/models/{MODEL}:predict", {"signature_name": "nope", "instances": [1.0]}, 400),
        (
            "POST",
            f"/v1/models/{MODEL}:predict",
            {"signature_name": "score", "instances": [{"user_id": "u", "user_age": 1.5, "hist_item_ids": ["a"]}]},
            400,
        ),
        (
            "POST",
            f"/v1/models/{MODEL}:predict",
            {"signature_name": "score", "inputs": {"user_id": ["u"], "user_age": [1], "hist_item_ids": [["a"], []]}},
            400,
        ),  # ragged
        ("POST", f"/v1/models/{MODEL}:predict", {"signature_name": "score", "instances": [{"user_id": "u"}]}, 400),
    ],
)
def test_bad_requests_get_error_json_and_server_keeps_serving(server, method, path, body, expected):
    status, payload = raw(server, method, path, body)
    assert status == expected
    assert isinstance(payload, dict) and isinstance(payload.get("error"), str) and payload["error"]
    assert raw(server, "POST", f"/v1/models/{MODEL}:predict", {"instances": [1.0]}) == (200, {"predictions": [2.5]})


# -- gRPC -------------------------------------------------------------------------------------------
def test_grpc_predict_metadata_status(server):
    client = GrpcClient(server[1], timeout=10)
    try:
        out = client.predict(MODEL, {"x": np.array([1.0, 2.0, 5.0], np.float32)})
        assert list(out) == ["y"] and out["y"].tolist() == [2.5, 3.0, 4.5]
        out = client.predict(
            MODEL,
            {"user_id": ["u1"], "user_age": [30], "hist_item_ids": [["a", ""]]},
            signature_name="score",
            label="stable",
        )
        assert out["score"] == pytest.approx([3.3]) and out["embedding"].shape == (1, 2)
        response, signatures = client.metadata(MODEL, version=1)
        assert response.model_spec.name == MODEL and response.model_spec.version.value == 1
        assert signatures.signature_def["serving_default"].inputs["x"].dtype == 1  # DT_FLOAT
        status = client.status(MODEL)
        assert [(s.version, s.state) for s in status.model_version_status] == [(1, 30)]  # AVAILABLE
    finally:
        client.close()


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"model": "nope", "inputs": {"x": [1.0]}}, "NOT_FOUND"),
        ({"model": MODEL, "inputs": {"x": [1.0]}, "version": 99}, "NOT_FOUND"),
        ({"model": MODEL, "inputs": {"x": [1.0]}, "signature_name": "nope"}, "INVALID_ARGUMENT"),
        ({"model": MODEL, "inputs": {"x": np.array(["a"], object)}}, "INVALID_ARGUMENT"),
        ({"model": MODEL, "inputs": {"x": np.array([[1.0]], np.float32)}}, "INVALID_ARGUMENT"),
    ],
)
def test_grpc_errors(server, kwargs, code):
    client = GrpcClient(server[1], timeout=10, retries=0)
    try:
        with pytest.raises(ServingError) as err:
            client.predict(**kwargs)
        assert err.value.code == code
        assert client.predict(MODEL, {"x": [1.0]})["y"].tolist() == [2.5]
    finally:
        client.close()


def test_rest_client_round_trip(server):
    client = RestClient(server[0], timeout=10)
    assert client.predict(MODEL, instances=[1.0])["predictions"] == [2.5]
    assert client.status(MODEL, label="stable")["model_version_status"][0]["state"] == "AVAILABLE"
    with pytest.raises(ServingError) as err:
        client.predict(MODEL, instances=[1.0], version=42)
    assert err.value.code == "NOT_FOUND"
    client.close()
