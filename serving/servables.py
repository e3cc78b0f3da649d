"""Loaded model versions and the manager that keeps them in step with the serving root.

`ModelManager` reads a ModelServerConfig (or one model name + base path, like
`tensorflow_model_server --model_name --model_base_path`), polls each base
path and the config file, loads the versions the version policy selects and
unloads the rest -- new versions are loaded *before* old ones are dropped,
and the switch is one reference swap, so a request that already resolved its
version finishes on it (TF Serving's availability-preserving policy).

`Servable` is one loaded SavedModel version: its SignatureDefs (what the
metadata API returns), input specs, and predict, optionally through a
`Batcher` that merges concurrent requests into one model call.

A version runs the way tensorflow_model_server runs it: the SavedModel is
loaded into a graph-mode Session (the C++ server's SavedModelBundle) and a
predict feeds the signature's input tensors and fetches its output tensors by
name, through one `Session.make_callable` per signature. Calling the eager
signature functions instead (`tf.saved_model.load`) gives the same outputs
but costs ~1 ms of Python per call in argument binding and tensor conversion
(17 inputs to the query tower; benchmarks/results/recommend.md).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from towerflow.components.pusher import model_repository as repo
from towerflow.serving.tensor_codec import InputSpec, ServingError, check_inputs, invalid

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"


def load_custom_ops() -> list[str]:
    """Registers op libraries SavedModels may need (ScaNN's ops for the retrieval index)."""
    loaded = []
    try:
        import scann  # noqa: F401  (importing it loads _scann_ops.so into TensorFlow's op registry)

        loaded.append("scann")
    except Exception as err:  # a missing or broken ScaNN only matters for models that use its ops
        log.warning("ScaNN ops not registered (%s); SavedModels with ScaNN ops will fail to load", err)
    return loaded


@dataclass(frozen=True)
class BatchingOptions:
    """Server-side batching of concurrent predicts (the knobs of TF Serving's batching_parameters)."""

    max_batch_size: int = 32
    batch_timeout_micros: int = 2000
    pad_variable_length_inputs: bool = True

    def __post_init__(self):
        if self.max_batch_size < 1 or self.batch_timeout_micros < 0:
            raise ValueError("max_batch_size must be >= 1 and batch_timeout_micros >= 0")


@dataclass(frozen=True)
class SessionThreads:
    """TensorFlow's threads for a version's Session (tensorflow_model_server's --tensorflow_intra_op_parallelism
    and --tensorflow_inter_op_parallelism).

    The default is ONE inter-op thread per version, which runs the graph's ops, and one intra-op thread (no op
    splits itself). On this 2-core machine that is the cheapest: TensorFlow's default pools (a thread per
    core each) spin after every call. Measured on the ml-100k ranker (300 candidates, in process, a call
    every 5 ms, identical outputs): the per-session default pool that the earlier setting here (inter_op
    -1 with per-session threads) actually got 3.3-4.4 ms of CPU per call, one thread 2.3-2.9 ms; the
    query tower 1.0-1.4 -> 0.5-0.8 ms; 4 threads calling at once finished in 0.9-1.5 s instead of 1.6-2.9 s
    (benchmarks/results/recommend.md). 0 = TensorFlow's choice. inter_op < 0 asks for the ops to run in the
    calling thread; with per-session threads DirectSession ignored that and made a pool of one thread per
    core (py-spy: RunInternal schedules onto it), so such a Session uses the process-wide pools instead
    (measured in process: 3.4-4.3 ms per ranker call, no cheaper than one thread).
    """

    intra_op: int = 1
    inter_op: int = 1

    def __post_init__(self):
        if self.intra_op < 0:
            raise ValueError(f"intra_op must be >= 0 (0 = TensorFlow's choice), got {self.intra_op}")


def _pad_value(dtype: np.dtype):
    return b"" if dtype.kind == "O" else dtype.type(0)


def _concat(arrays: list[np.ndarray], pad: bool) -> np.ndarray:
    if len(arrays) == 1:
        return arrays[0]
    if pad and arrays[0].ndim >= 2:
        widths = np.max([a.shape[1:] for a in arrays], axis=0)
        padded = []
        for a in arrays:
            extra = [(0, 0)] + [(0, int(w) - n) for w, n in zip(widths, a.shape[1:])]
            padded.append(np.pad(a, extra, constant_values=_pad_value(a.dtype)) if any(e[1] for e in extra) else a)
        arrays = padded
    return np.concatenate(arrays, axis=0)


class Batcher:
    """Merges concurrent calls of one signature into one model call (up to max_batch_size rows).

    A request waits at most batch_timeout_micros for company. If the merged
    call fails, each request is re-run alone, so one bad request cannot fail
    its neighbours.
    """

    _STOP = object()

    def __init__(self, run, options: BatchingOptions, name: str):
        self._run = run
        self._options = options
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def submit(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = next(iter(inputs.values())).shape[0] if inputs else 0
        if rows >= self._options.max_batch_size:
            return self._run(inputs)
        future: Future = Future()
        with self._lock:
            if self._closed:
                return self._run(inputs)
            self._queue.put((inputs, rows, future))
        return future.result()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(self._STOP)

    def _loop(self) -> None:
        timeout = self._options.batch_timeout_micros / 1e6
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is self._STOP:
                return
            batch, rows = [item], item[1]
            deadline = time.monotonic() + timeout
            while rows < self._options.max_batch_size:
                remaining = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is self._STOP:
                    stopping = True
                    break
                batch.append(nxt)
                rows += nxt[1]
            self._execute(batch)

    def _execute(self, batch: list) -> None:
        if len(batch) > 1:
            try:
                keys = batch[0][0].keys()
                merged = {k: _concat([b[0][k] for b in batch], self._options.pad_variable_length_inputs) for k in keys}
                outputs = self._run(merged)
                total = sum(b[1] for b in batch)
                if all(v.ndim and v.shape[0] == total for v in outputs.values()):
                    start = 0
                    for _, rows, future in batch:
                        future.set_result({k: v[start : start + rows] for k, v in outputs.items()})
                        start += rows
                    return
            except Exception:  # fall back to one call per request below
                pass
        for inputs, _, future in batch:
            try:
                future.set_result(self._run(inputs))
            except Exception as err:
                future.set_exception(err)


class Servable:
    """One loaded version of one model."""

    def __init__(
        self,
        name: str,
        version: int,
        path: str,
        batching: BatchingOptions | None = None,
        threads: SessionThreads | None = None,
    ):
        import tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2

        self.name = name
        self.version = version
        self.path = path
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
        graph = next((g for g in proto.meta_graphs if "serve" in g.meta_info_def.tags), None)
        if graph is None:
            raise ValueError(f"{path} has no MetaGraph tagged 'serve'")
        self.signature_defs = graph.signature_def
        self._tf = tf
        self._graph = tf.Graph()
        threads = threads or SessionThreads()
        config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=threads.intra_op,
            inter_op_parallelism_threads=threads.inter_op,
            # this version's own pool, not the first Session's in the process; DirectSession runs ops in
            # the caller's thread (inter_op < 0) only with the process-wide pools
            use_per_session_threads=threads.inter_op >= 0,
        )
        self._session = tf.compat.v1.Session(graph=self._graph, config=config)
        with self._graph.as_default():
            # restores the variables and runs the init op (tables, e.g. Transform's vocabularies)
            tf.compat.v1.saved_model.loader.load(self._session, ["serve"], path)
        # "__saved_model_init_op" is a signature key of the graph, not a servable signature
        self.input_specs = {
            key: {n: InputSpec.from_tensor_info(n, info) for n, info in sig.inputs.items()}
            for key, sig in self.signature_defs.items()
            if not key.startswith("__")
        }
        self._callables: dict[str, tuple] = {}
        self._callables_lock = threading.Lock()
        self._batching = batching
        self._batchers: dict[str, Batcher] = {}
        self._batchers_lock = threading.Lock()
        self._warm_up()

    def _warm_up(self) -> None:
        """Makes each signature's callable and runs it once on a one-row placeholder input ("" / 0).

        A callable's first run optimizes and instantiates the graph's functions: a second or more, which
        a request must not wait out (tensorflow_model_server's answer is the warm-up requests a SavedModel
        may carry in assets.extra; this is the same, made from the signature). A signature that cannot
        run on placeholders is still warmed as far as it got; its error is only logged.
        """
        for key, specs in self.input_specs.items():
            inputs = {}
            for name, spec in specs.items():
                shape = (1,) if spec.shape is None else tuple(1 if d is None else d for d in spec.shape)
                dtype = spec.numpy_dtype
                inputs[name] = np.full(shape, b"", dtype=object) if dtype.kind == "O" else np.zeros(shape, dtype)
            try:
                self._call(key, inputs)
            except ServingError as err:
                log.debug("warm-up of %s v%d %s: %s", self.name, self.version, key, err.message)

    def _callable(self, key: str) -> tuple[list[str], list[str], object]:
        """(input names, output names, the Session callable feeding and fetching them), made once per signature."""
        made = self._callables.get(key)
        if made is None:
            with self._callables_lock:
                made = self._callables.get(key)
                if made is None:
                    from tensorflow.core.protobuf import config_pb2

                    sig = self.signature_defs[key]
                    feeds, fetches = sorted(sig.inputs), sorted(sig.outputs)
                    # Session::MakeCallable (what tensorflow_model_server runs a signature with): the feeds
                    # and fetches are resolved once. `Session.make_callable` with feeds re-runs
                    # `Session.run`'s Python feed/fetch handling on every call (~0.2 ms of the ranker's).
                    # Inputs are not checked here: `predict` has checked names, dtypes and shapes.
                    options = config_pb2.CallableOptions(
                        feed=[sig.inputs[n].name for n in feeds], fetch=[sig.outputs[n].name for n in fetches]
                    )
                    fn = self._session._make_callable_from_options(options)  # noqa: SLF001 - no public form
                    made = self._callables[key] = (feeds, fetches, fn)
        return made

    def signature(self, signature_name: str | None) -> tuple[str, dict[str, InputSpec]]:
        key = signature_name or DEFAULT_SIGNATURE
        if key not in self.input_specs:
            raise invalid(
                f'Serving signature name: "{key}" not found in signature def of {self.name} version {self.version} '
                f"(signatures: {sorted(self.input_specs)})"
            )
        return key, self.input_specs[key]

    def _call(self, key: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        tf = self._tf
        feeds, fetches, fn = self._callable(key)
        try:
            results = fn(*[inputs[n] for n in feeds])
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as err:
            raise invalid(f"{self.name} version {self.version}, signature {key!r}: {_first_line(err)}") from err
        except tf.errors.OpError as err:
            raise ServingError("INTERNAL", f"{self.name} version {self.version}: {_first_line(err)}") from err
        return dict(zip(fetches, results))

    def predict(self, signature_name: str | None, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Checks inputs against the signature, then runs it (through the batcher when batching is on)."""
        key, specs = self.signature(signature_name)
        check_inputs(inputs, specs, key)
        inputs = {n: np.asarray(a, dtype=specs[n].numpy_dtype) for n, a in inputs.items()}
        batchable = self._batching is not None and all(
            s.shape and s.shape[0] is None and inputs[n].ndim for n, s in specs.items()
        )
        if not batchable:
            return self._call(key, inputs)
        with self._batchers_lock:
            batcher = self._batchers.get(key)
            if batcher is None:
                batcher = Batcher(
                    lambda x, key=key: self._call(key, x), self._batching, f"{self.name}-{self.version}-{key}"
                )
                self._batchers[key] = batcher
        return batcher.submit(inputs)

    def close(self) -> None:
        """Stops the batchers; requests already holding this servable still complete."""
        with self._batchers_lock:
            for batcher in self._batchers.values():
                batcher.close()
            self._batchers.clear()


def _first_line(err: Exception) -> str:
    text = getattr(err, "message", None) or str(err)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


@dataclass(frozen=True)
class VersionEvent:
    state: str  # AVAILABLE | END (unloaded or failed)
    error_code: str = "OK"
    error_message: str = ""


@dataclass(frozen=True)
class ModelSnapshot:
    """What one model serves right now; replaced as a whole, never mutated."""

    name: str
    base_path: str
    versions: dict[int, Servable] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    history: dict[int, VersionEvent] = field(default_factory=dict)


@dataclass(frozen=True)
class _ModelTarget:
    name: str
    base_path: str
    config: object  # ModelConfig proto (policy and labels)


class ModelManager:
    """Keeps loaded versions in step with the config and the base paths."""

    def __init__(
        self,
        config_file: str | None = None,
        model_name: str | None = None,
        model_base_path: str | None = None,
        poll_seconds: float = 1.0,
        batching: BatchingOptions | None = None,
        threads: SessionThreads | None = None,
    ):
        if bool(config_file) == bool(model_name and model_base_path):
            raise ValueError("give either a model config file, or a model name and a model base path")
        self.config_file = config_file
        self.model_name = model_name
        self.model_base_path = model_base_path
        self.poll_seconds = poll_seconds
        self.batching = batching
        self.threads = threads
        self._models: dict[str, ModelSnapshot] = {}
        self._failed: dict[tuple[str, int], float] = {}  # (model, version) -> mtime of the failed directory
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- configuration ---------------------------------------------------------------------------
    def _targets(self) -> list[_ModelTarget]:
        from tensorflow_serving.config import model_server_config_pb2

        if self.config_file:
            config = repo.read_config(self.config_file)
            return [_ModelTarget(m.name, m.base_path, m) for m in config.model_config_list.config]
        model = model_server_config_pb2.ModelConfig(name=self.model_name, base_path=self.model_base_path)
        return [_ModelTarget(self.model_name, self.model_base_path, model)]

    def refresh(self) -> dict[str, list[int]]:
        """One poll: load what the policy wants, then unload what it no longer wants. Returns loaded versions."""
        with self._refresh_lock:
            try:
                targets = self._targets()
            except (ValueError, OSError) as err:
                log.error("cannot read the model config %s: %s; keeping the current models", self.config_file, err)
                return {name: sorted(s.versions) for name, s in self._models.items()}
            new_models = {}
            for target in targets:
                new_models[target.name] = self._refresh_model(target)
            for name, old in self._models.items():
                if name not in new_models:
                    for servable in old.versions.values():
                        servable.close()
            self._models = new_models
            return {name: sorted(s.versions) for name, s in new_models.items()}

    def _refresh_model(self, target: _ModelTarget) -> ModelSnapshot:
        old = self._models.get(target.name) or ModelSnapshot(target.name, target.base_path)
        on_disk = repo.versions_on_disk(target.base_path)
        wanted = repo.served_versions(target.config, on_disk)
        versions = {v: s for v, s in old.versions.items() if v in wanted and s.path == _version_path(target, v)}
        history = dict(old.history)
        for version in wanted:
            if version in versions:
                continue
            path = _version_path(target, version)
            mtime = _mtime(path)
            if self._failed.get((target.name, version)) == mtime:
                continue
            try:
                started = time.monotonic()
                versions[version] = Servable(target.name, version, path, self.batching, self.threads)
                history[version] = VersionEvent("AVAILABLE")
                log.info("loaded %s version %d in %.1fs", target.name, version, time.monotonic() - started)
            except Exception as err:
                self._failed[(target.name, version)] = mtime
                history[version] = VersionEvent("END", "UNKNOWN", f"failed to load {path}: {_first_line(err)}")
                log.error("failed to load %s version %d from %s: %s", target.name, version, path, err)
        for version, servable in old.versions.items():
            if versions.get(version) is not servable:
                servable.close()
                if history.get(version, VersionEvent("END")).state == "AVAILABLE" and version not in versions:
                    history[version] = VersionEvent("END")
                log.info("unloaded %s version %d", target.name, version)
        labels = dict(target.config.version_labels)
        return ModelSnapshot(target.name, target.base_path, versions, labels, history)

    # -- polling ----------------------------------------------------------------------------------
    def start(self) -> None:
        self.refresh()
        if self.poll_seconds > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._poll, name="model-poller", daemon=True)
            self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception:  # the poller must outlive any one bad poll
                log.exception("model poll failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        for snapshot in self._models.values():
            for servable in snapshot.versions.values():
                servable.close()

    # -- lookups ----------------------------------------------------------------------------------
    def model_names(self) -> list[str]:
        return sorted(self._models)

    def snapshot(self, name: str) -> ModelSnapshot:
        snapshot = self._models.get(name)
        if snapshot is None:
            raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
        return snapshot

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable a request addresses: a version, a label, or (neither) the latest loaded one."""
        snapshot = self.snapshot(name)
        if label is not None:
            if label not in snapshot.labels:
                raise ServingError("NOT_FOUND", f"Unrecognized servable version label: {label} (model {name})")
            version = snapshot.labels[label]
        if version is None:
            if not snapshot.versions:
                raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({name})")
            return snapshot.versions[max(snapshot.versions)]
        servable = snapshot.versions.get(version)
        if servable is None:
            raise ServingError("NOT_FOUND", f"Servable not found for request: Specific({name}, {version})")
        return servable

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[tuple[int, VersionEvent]]:
        """(version, state) pairs in the manner of GetModelStatus; NOT_FOUND like TF Serving."""
        snapshot = self.snapshot(name)
        if label is not None:
            if label not in snapshot.labels:
                raise ServingError("NOT_FOUND", f"Unrecognized servable version label: {label} (model {name})")
            version = snapshot.labels[label]
        if version is not None:
            if version not in snapshot.history:
                raise ServingError("NOT_FOUND", f"Could not find version {version} of model {name}")
            return [(version, snapshot.history[version])]
        if not snapshot.history:
            raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
        return sorted(snapshot.history.items(), reverse=True)


def _version_path(target: _ModelTarget, version: int) -> str:
    return os.path.join(target.base_path, str(version))


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0
