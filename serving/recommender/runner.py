"""Wiring and running the service: a Recommender over a store and a model server, served by uvicorn.

    recommender = build_recommender(store, serving_root, grpc_target=..., rest_url=..., config=config)
    with ServiceServer(create_app(recommender, token), host="127.0.0.1", port=0) as server:
        print(server.url)   # http://127.0.0.1:<free port>

`ServiceServer` runs uvicorn in a thread (tests, benchmarks, the CLI) and
stops it on exit; port 0 picks a free port.
"""

from __future__ import annotations

import gc
import socket
import threading
import time
from pathlib import Path

import uvicorn

from towerflow.serving.recommender.config import ServiceConfig
from towerflow.serving.recommender.metrics import ServiceMetrics
from towerflow.serving.recommender.recommender import Recommender
from towerflow.serving.recommender.served import ModelClient, VersionWatcher


def build_recommender(
    store,
    serving_root: str | Path,
    grpc_target: str | None = None,
    rest_url: str | None = None,
    config: ServiceConfig | None = None,
    metrics: ServiceMetrics | None = None,
    start: bool = True,
) -> Recommender:
    """A Recommender whose models come from the server at grpc_target/rest_url, versions from `serving_root`."""
    config = config or ServiceConfig()
    client = ModelClient(grpc_target, rest_url, config.retrieval.protocol)

    def catalog() -> list[dict]:
        return [item for item in store.items(store.all_item_ids()) if item]

    watcher = VersionWatcher(serving_root, client, config.ranking.default_weight, catalog=catalog)
    recommender = Recommender(store, watcher, config, metrics or ServiceMetrics())
    if start:
        try:
            watcher.refresh()
        except Exception as err:  # noqa: BLE001 - not ready yet is fine: /readyz says so, requests fall back
            watcher.last_error = str(err)
        recommender.start()
        recommender.warm_up()
        freeze_heap()
    return recommender


def freeze_heap() -> None:
    """Moves every object alive now (TensorFlow, ScaNN, the index, imported modules) out of the garbage
    collector's reach: a full collection over them took 100-230 ms (measured in this process after start-up)
    and, striking every few thousand requests, made the p99 -- each request in flight waited it out.
    Objects made later (requests, caches) are collected as usual."""
    gc.collect()
    gc.freeze()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ServiceServer:
    """uvicorn in a background thread, bound to host:port (0 = a free port)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.host, self.port = host, port or free_port(host)
        # log_config=None: uvicorn must not run logging.config.dictConfig in the host process -- that closes
        # every handler already installed (absl's closes the stream it was made with, which under pytest's
        # capture is the capture file); uvicorn's loggers propagate to the process's own handlers instead.
        config = uvicorn.Config(
            app, host=self.host, port=self.port, log_level=log_level, access_log=False, log_config=None
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServiceServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(15)

    def __enter__(self) -> ServiceServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
