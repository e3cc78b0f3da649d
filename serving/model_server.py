"""The embedded model server: TF Serving's REST API and gRPC services over a `ModelManager`.

REST (https://www.tensorflow.org/tfx/serving/api_rest):
    GET  /v1/models/{m}[/versions/{v}|/labels/{l}]            GetModelStatusResponse as JSON
    GET  /v1/models/{m}[/versions/{v}|/labels/{l}]/metadata   GetModelMetadataResponse as JSON
    POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict    {"instances": ...} | {"inputs": ...}
Errors are {"error": "..."} with TF Serving's status mapping (400 bad input,
404 unknown model/version/label, 413 body too large, 500 model failure).

gRPC on another port: tensorflow.serving.PredictionService (Predict,
GetModelMetadata) and tensorflow.serving.ModelService (GetModelStatus).

Nothing a client sends can stop the server: every handler turns failures into
an error response.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import re
import threading
from concurrent import futures
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from towerflow.serving.servables import BatchingOptions, ModelManager, Servable, SessionThreads, load_custom_ops
from towerflow.serving.tensor_codec import (
    ServingError,
    array_from_proto,
    array_to_proto,
    dtype_name,
    format_predict_response,
    invalid,
    parse_predict_request,
)

log = logging.getLogger(__name__)

_URL = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<suffix>/metadata|:predict|:classify|:regress)?/?$"
)


@dataclass
class ServerOptions:
    """How `towerflow serve` runs the embedded server (flag names follow tensorflow_model_server)."""

    model_config_file: str | None = None
    model_name: str | None = None
    model_base_path: str | None = None
    host: str = "127.0.0.1"
    port: int = 8500  # gRPC; 0 picks a free port
    rest_api_port: int = 8501  # 0 picks a free port
    file_system_poll_wait_seconds: float = 1.0
    batching: BatchingOptions | None = None
    threads: SessionThreads = field(default_factory=SessionThreads)  # TensorFlow's threads per version
    max_body_bytes: int = 8 * 1024 * 1024
    max_instances: int = 1024
    grpc_workers: int = 16
    custom_ops: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.max_body_bytes < 1 or self.max_instances < 1:
            raise ValueError("max_body_bytes and max_instances must be positive")


# -- shared request logic (REST and gRPC) -----------------------------------------------------------
def as_serving_error(err: Exception, where: str) -> ServingError:
    """The error a client gets for a failed request: a ServingError as it is, anything else INTERNAL (logged)."""
    if isinstance(err, ServingError):
        return err
    log.error("unexpected error in %s", where, exc_info=err)
    return ServingError("INTERNAL", f"{type(err).__name__}: {err}")


def status_response(manager: ModelManager, name: str, version=None, label=None):
    response = get_model_status_pb2.GetModelStatusResponse()
    for number, event in manager.status(name, version, label):
        entry = response.model_version_status.add()
        entry.version = number
        entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(event.state)
        entry.status.error_code = _error_code_value(event.error_code)
        entry.status.error_message = event.error_message
    return response


def _error_code_value(code: str) -> int:
    from tensorflow.core.protobuf import error_codes_pb2

    return error_codes_pb2.Code.Value(code)


def metadata_response(servable: Servable):
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in servable.signature_defs.items():
        signatures.signature_def[key].CopyFrom(sig)
    response.metadata["signature_def"].Pack(signatures)
    return response, signatures


def _to_json_dict(message) -> dict:
    return json_format.MessageToDict(message, including_default_value_fields=True, preserving_proto_field_name=True)


# -- REST ---------------------------------------------------------------------------------------
class _RestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes; Nagle + delayed ACK would add 40 ms
    server_version = "towerflow-model-server"
    manager: ModelManager
    options: ServerOptions

    def log_message(self, format, *args):  # noqa: A002  (the base class's signature)
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, err: ServingError) -> None:
        self._send(err.http_status, {"error": err.message})

    def _route(self, method: str):
        match = _URL.match(self.path.split("?", 1)[0])
        suffix = match and (match.group("suffix") or "")
        ok = match and (
            (method == "GET" and suffix in ("", "/metadata")) or (method == "POST" and suffix.startswith(":"))
        )
        if not ok:
            raise ServingError("NOT_FOUND", f"Malformed request: {method} {self.path}")
        version = int(match.group("version")) if match.group("version") else None
        return match.group("name"), version, match.group("label"), suffix

    def do_GET(self):  # noqa: N802  (http.server's naming)
        self._handle("GET")

    def do_POST(self):  # noqa: N802
        self._handle("POST")

    def _handle(self, method: str) -> None:
        try:
            body = self._read_body() if method == "POST" else b""
            name, version, label, suffix = self._route(method)
            if suffix == "":
                self._send(200, _to_json_dict(status_response(self.manager, name, version, label)))
            elif suffix == "/metadata":
                servable = self.manager.resolve(name, version, label)
                response, signatures = metadata_response(servable)
                payload = _to_json_dict(response)
                # TF Serving prints the Any as the SignatureDefMap itself (no "@type")
                payload["metadata"] = {"signature_def": _to_json_dict(signatures)}
                self._send(200, payload)
            elif suffix == ":predict":
                self._send(200, self._predict(name, version, label, body))
            else:
                raise ServingError("UNIMPLEMENTED", f"{suffix[1:]} is not supported by this server; use :predict")
        except _ResponseSentError:
            pass
        except Exception as err:  # never let one request take the server down
            self._error(as_serving_error(err, f"{method} {self.path}"))

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise ServingError("INVALID_ARGUMENT", "POST needs a Content-Length header")
        try:
            size = int(length)
        except ValueError:
            self.close_connection = True
            raise invalid(f"bad Content-Length {length!r}") from None
        if size > self.options.max_body_bytes:
            self.close_connection = True  # the unread body must not be parsed as the next request
            err = ServingError(
                "RESOURCE_EXHAUSTED",
                f"request body of {size} bytes exceeds this server's limit of {self.options.max_body_bytes} bytes",
            )
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": err.message})
            raise _ResponseSentError
        return self.rfile.read(size)

    def _predict(self, name, version, label, body: bytes) -> dict:
        try:
            request = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise invalid(f"JSON Parse error: {err}") from None
        servable = self.manager.resolve(name, version, label)
        signature = request.get("signature_name") if isinstance(request, dict) else None
        if signature is not None and not isinstance(signature, str):
            raise invalid("'signature_name' must be a string")
        key, specs = servable.signature(signature)
        inputs, row_format = parse_predict_request(request, specs, key, self.options.max_instances)
        outputs = servable.predict(key, inputs)
        return format_predict_response(outputs, row_format)


class _ResponseSentError(Exception):
    """The handler already wrote its response (an early rejection)."""


class _RestServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


# -- gRPC ---------------------------------------------------------------------------------------
def _grpc_handler(method):
    """Wraps a servicer method so a failure ends the call with its gRPC status instead of escaping.

    A ServingError's canonical code becomes the status code of the same name
    (INTERNAL for a name gRPC lacks); any other exception is logged and becomes
    INTERNAL with its type and message.
    """

    @functools.wraps(method)
    def handler(self, request, context):
        try:
            return method(self, request, context)
        except Exception as err:
            error = as_serving_error(err, method.__name__)
            context.abort(getattr(grpc.StatusCode, error.code, grpc.StatusCode.INTERNAL), error.message)

    return handler


def _spec_of(request) -> tuple[str, int | None, str | None]:
    spec = request.model_spec
    choice = spec.WhichOneof("version_choice")
    version = spec.version.value if choice == "version" else None
    label = spec.version_label if choice == "version_label" else None
    return spec.name, version, label


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager, options: ServerOptions):
        self._manager = manager
        self._options = options

    @_grpc_handler
    def Predict(self, request, context):  # noqa: N802  (gRPC method names)
        name, version, label = _spec_of(request)
        servable = self._manager.resolve(name, version, label)
        key, specs = servable.signature(request.model_spec.signature_name)
        inputs = {}
        for input_name, proto in request.inputs.items():
            array = array_from_proto(proto)
            spec = specs.get(input_name)
            if spec is not None and array.dtype != spec.numpy_dtype:
                raise invalid(
                    f"input {input_name!r} is {dtype_name(proto.dtype)} but signature {key!r} expects {spec.dtype_name}"
                )
            inputs[input_name] = array
        for input_name, array in inputs.items():
            if array.ndim and array.shape[0] > self._options.max_instances:
                raise invalid(
                    f"input {input_name!r} has {array.shape[0]} rows; this server allows at most "
                    f"{self._options.max_instances}"
                )
        outputs = servable.predict(key, inputs)
        wanted = list(request.output_filter) or sorted(outputs)
        unknown = [k for k in wanted if k not in outputs]
        if unknown:
            raise invalid(f"output_filter names unknown outputs {unknown}; outputs are {sorted(outputs)}")
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = key
        for out in wanted:
            response.outputs[out].CopyFrom(array_to_proto(outputs[out]))
        return response

    @_grpc_handler
    def GetModelMetadata(self, request, context):  # noqa: N802
        if list(request.metadata_field) != ["signature_def"]:
            raise invalid(f"metadata_field must be ['signature_def'], got {list(request.metadata_field)}")
        name, version, label = _spec_of(request)
        response, _ = metadata_response(self._manager.resolve(name, version, label))
        return response


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager):
        self._manager = manager

    @_grpc_handler
    def GetModelStatus(self, request, context):  # noqa: N802
        name, version, label = _spec_of(request)
        return status_response(self._manager, name, version, label)


# -- the server -----------------------------------------------------------------------------------
class ModelServer:
    """Starts the manager (first load is synchronous), the REST server and the gRPC server.

    with ModelServer(ServerOptions(model_config_file=..., port=0, rest_api_port=0)) as server:
        server.rest_url, server.grpc_target
    """

    def __init__(self, options: ServerOptions):
        self.options = options
        self.custom_ops = load_custom_ops()
        self.manager = ModelManager(
            config_file=options.model_config_file,
            model_name=options.model_name,
            model_base_path=options.model_base_path,
            poll_seconds=options.file_system_poll_wait_seconds,
            batching=options.batching,
            threads=options.threads,
        )
        self._rest: _RestServer | None = None
        self._rest_thread: threading.Thread | None = None
        self._grpc: grpc.Server | None = None
        self.rest_port = None
        self.grpc_port = None

    @property
    def rest_url(self) -> str:
        return f"http://{self.options.host}:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.options.host}:{self.grpc_port}"

    def start(self) -> ModelServer:
        self.manager.start()
        handler = type("RestHandler", (_RestHandler,), {"manager": self.manager, "options": self.options})
        try:
            self._rest = _RestServer((self.options.host, self.options.rest_api_port), handler)
        except OSError as err:
            self.manager.stop()
            raise RuntimeError(f"cannot bind the REST port {self.options.rest_api_port}: {err}") from err
        self.rest_port = self._rest.server_address[1]
        self._rest_thread = threading.Thread(target=self._rest.serve_forever, name="rest-server", daemon=True)
        self._rest_thread.start()
        limit = self.options.max_body_bytes
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.options.grpc_workers),
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", 64 << 20)],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            _PredictionService(self.manager, self.options), self._grpc
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(self.manager), self._grpc)
        try:
            self.grpc_port = self._grpc.add_insecure_port(f"{self.options.host}:{self.options.port}")
        except RuntimeError as err:
            self.stop()
            raise RuntimeError(f"cannot bind the gRPC port {self.options.port}: {err}") from err
        self._grpc.start()
        # The loaded TensorFlow graphs are ~10^5 Python objects that live as long as the server. A full
        # (generation 2) collection walks all of them: ~100-230 ms, a pause every request in flight waits
        # out. Frozen, they are left out of every collection; versions loaded later are collected as usual.
        gc.collect()
        gc.freeze()
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=1).wait(5)
            self._grpc = None
        if self._rest is not None:
            self._rest.shutdown()
            self._rest.server_close()
            self._rest = None
        self.manager.stop()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
