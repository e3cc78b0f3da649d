"""Clients for TF Serving's REST and gRPC APIs (real tensorflow_model_server or the embedded server).

    rest = RestClient("http://127.0.0.1:8501", timeout=2.0, retries=2)
    rest.predict("two_tower", instances=[{"user_id": "42", ...}])   # -> {"predictions": [...]}
    grpc_client = GrpcClient("127.0.0.1:8500")
    grpc_client.predict("ranker", {"user_id": ["42"], ...})         # -> {"rating": np.ndarray, ...}

Both retry what is safe to retry (connection failures, UNAVAILABLE/503,
RESOURCE_EXHAUSTED/429) with exponential backoff, never a 4xx; every call has a
timeout. Errors surface as `ServingError` with the canonical code and the
server's message. The REST client needs no TensorFlow.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Mapping

import numpy as np

from towerflow.serving.tensor_codec import HTTP_STATUS, ServingError, array_from_proto

_CODE_OF_HTTP = {status: code for code, status in reversed(list(HTTP_STATUS.items()))}
_RETRYABLE = {"UNAVAILABLE", "RESOURCE_EXHAUSTED"}


def _model_path(model: str, version: int | None, label: str | None) -> str:
    if version is not None and label is not None:
        raise ValueError("give a version or a label, not both")
    path = f"/v1/models/{urllib.parse.quote(model, safe='')}"
    if version is not None:
        path += f"/versions/{int(version)}"
    elif label is not None:
        path += f"/labels/{urllib.parse.quote(label, safe='')}"
    return path


class RestClient:
    """TF Serving REST API over keep-alive HTTP/1.1 connections (one per thread)."""

    def __init__(self, base_url: str, timeout: float = 5.0, retries: int = 2, backoff: float = 0.05):
        parsed = urllib.parse.urlparse(base_url if "://" in base_url else f"http://{base_url}")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"bad server URL {base_url!r}; expected e.g. http://127.0.0.1:8501")
        self.base_url = f"{parsed.scheme}://{parsed.netloc}"
        self._scheme, self._host, self._port = parsed.scheme, parsed.hostname, parsed.port
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(self, method: str, path: str, payload: Mapping | None = None) -> tuple[int, dict]:
        """One call with retries; returns (HTTP status, parsed JSON) without raising on HTTP errors."""
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        attempt = 0
        while True:
            try:
                conn = self._connection()
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                if response.will_close:
                    self._drop_connection()
                status = response.status
                try:
                    data = json.loads(raw) if raw else {}
                except json.JSONDecodeError:
                    data = {"error": raw.decode(errors="replace")[:500]}
                code = _CODE_OF_HTTP.get(status, "UNKNOWN")
                if status >= 400 and code in _RETRYABLE and attempt < self.retries:
                    raise _RetryableError(ServingError(code, data.get("error", "")))
                return status, data
            except (OSError, http.client.HTTPException, _RetryableError) as err:
                self._drop_connection()
                if attempt >= self.retries:
                    if isinstance(err, _RetryableError):
                        return HTTP_STATUS[err.error.code], {"error": err.error.message}
                    kind = "timed out" if isinstance(err, socket.timeout | TimeoutError) else "failed"
                    raise ServingError(
                        "DEADLINE_EXCEEDED" if kind == "timed out" else "UNAVAILABLE",
                        f"{method} {self.base_url}{path} {kind} after {attempt + 1} attempt(s): {err}",
                    ) from None
                time.sleep(self.backoff * (2**attempt))
                attempt += 1

    def _checked(self, method: str, path: str, payload: Mapping | None = None) -> dict:
        status, data = self.request(method, path, payload)
        if status != 200:
            raise ServingError(_CODE_OF_HTTP.get(status, "UNKNOWN"), data.get("error", f"HTTP {status}"))
        return data

    def status(self, model: str, version: int | None = None, label: str | None = None) -> dict:
        return self._checked("GET", _model_path(model, version, label))

    def metadata(self, model: str, version: int | None = None, label: str | None = None) -> dict:
        return self._checked("GET", _model_path(model, version, label) + "/metadata")

    def predict(
        self,
        model: str,
        instances: list | None = None,
        inputs=None,
        signature_name: str | None = None,
        version: int | None = None,
        label: str | None = None,
    ) -> dict:
        """Row format (`instances`) -> {"predictions": ...}; columnar (`inputs`) -> {"outputs": ...}."""
        if (instances is None) == (inputs is None):
            raise ValueError("give exactly one of instances (row format) or inputs (columnar format)")
        body: dict = {"instances": instances} if instances is not None else {"inputs": inputs}
        if signature_name:
            body["signature_name"] = signature_name
        return self._checked("POST", _model_path(model, version, label) + ":predict", body)

    def predict_body(self, model: str, body: Mapping, version: int | None = None, label: str | None = None) -> dict:
        """Sends a ready-made predict body (what `towerflow query --json` does)."""
        return self._checked("POST", _model_path(model, version, label) + ":predict", body)

    def wait_until_available(self, model: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                status = self.status(model)
                if any(v.get("state") == "AVAILABLE" for v in status.get("model_version_status", [])):
                    return status
            except ServingError:
                pass
            if time.monotonic() > deadline:
                raise ServingError("DEADLINE_EXCEEDED", f"{model} not AVAILABLE at {self.base_url} after {timeout}s")
            time.sleep(0.2)

    def close(self) -> None:
        self._drop_connection()


class _RetryableError(Exception):
    def __init__(self, error: ServingError):
        super().__init__(error.message)
        self.error = error


class GrpcClient:
    """PredictionService and ModelService over one gRPC channel (thread-safe)."""

    def __init__(self, target: str, timeout: float = 5.0, retries: int = 2, backoff: float = 0.05):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self._grpc = grpc
        self.target, self.timeout, self.retries, self.backoff = target, timeout, retries, backoff
        self._channel = grpc.insecure_channel(
            target, options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        )
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def _call(self, method, request):
        retryable = {self._grpc.StatusCode.UNAVAILABLE, self._grpc.StatusCode.RESOURCE_EXHAUSTED}
        attempt = 0
        while True:
            try:
                return method(request, timeout=self.timeout)
            except self._grpc.RpcError as err:
                code = err.code()
                if code in retryable and attempt < self.retries:
                    time.sleep(self.backoff * (2**attempt))
                    attempt += 1
                    continue
                raise ServingError(code.name, err.details() or code.name) from None

    @staticmethod
    def _spec(spec, model: str, version: int | None, label: str | None, signature_name: str | None) -> None:
        if version is not None and label is not None:
            raise ValueError("give a version or a label, not both")
        spec.name = model
        if version is not None:
            spec.version.value = int(version)
        elif label is not None:
            spec.version_label = label
        if signature_name:
            spec.signature_name = signature_name

    def predict(
        self,
        model: str,
        inputs: Mapping[str, object],
        signature_name: str | None = None,
        version: int | None = None,
        label: str | None = None,
        output_filter: list[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Named arrays (lists, numpy arrays or TensorProtos) in, named numpy arrays out.

        Python ints become int64 and floats float32, matching the exported signatures;
        pass numpy arrays to choose dtypes yourself.
        """
        import tensorflow as tf
        from tensorflow.core.framework import tensor_pb2
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, model, version, label, signature_name)
        for name, value in inputs.items():
            if isinstance(value, tensor_pb2.TensorProto):
                request.inputs[name].CopyFrom(value)
            else:
                request.inputs[name].CopyFrom(tf.make_tensor_proto(_as_array(value)))
        request.output_filter.extend(output_filter or [])
        response = self._call(self._predict.Predict, request)
        return {k: array_from_proto(v) for k, v in response.outputs.items()}

    def metadata(self, model: str, version: int | None = None, label: str | None = None):
        """GetModelMetadataResponse with the SignatureDefMap unpacked: (response, signature_def_map)."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec, model, version, label, None)
        response = self._call(self._predict.GetModelMetadata, request)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return response, signatures

    def status(self, model: str, version: int | None = None, label: str | None = None):
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec, model, version, label, None)
        return self._call(self._models.GetModelStatus, request)

    def close(self) -> None:
        self._channel.close()


def _as_array(value) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind == "U":
        return np.vectorize(lambda s: s.encode(), otypes=[object])(array)
    if array.dtype == np.float64 and not isinstance(value, np.ndarray):
        return array.astype(np.float32)
    if array.dtype.kind == "i" and not isinstance(value, np.ndarray):
        return array.astype(np.int64)
    return array


def placeholder_instance(signature_def: Mapping) -> dict:
    """One row-format instance that fits a signature (from the metadata JSON): for smoke tests and benchmarks.

    Strings get "1", integers 1, floats 1.0; 2-D inputs (list features) get ["1", ""] (padded with "").
    """
    values = {"DT_STRING": "1", "DT_BOOL": True, "DT_FLOAT": 1.0, "DT_DOUBLE": 1.0, "DT_HALF": 1.0}
    instance = {}
    for name, info in signature_def["inputs"].items():
        value = values.get(info["dtype"], 1)
        rank = len(info.get("tensor_shape", {}).get("dim", []))
        instance[name] = [value, "" if isinstance(value, str) else value] if rank == 2 else value
    return instance
