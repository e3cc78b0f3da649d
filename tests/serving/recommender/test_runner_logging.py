"""Starting the service in a process must leave that process's logging alone (uvicorn's dictConfig would not)."""

import io
import logging

import httpx
from fastapi import FastAPI

from towerflow.serving.recommender.runner import ServiceServer


class _ClosingHandler(logging.StreamHandler):
    """Like absl's handler: closing it closes its stream."""

    def close(self):
        self.stream.close()
        super().close()


def test_service_server_keeps_the_host_process_logging_handlers():
    stream = io.StringIO()
    handler = _ClosingHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    app = FastAPI()
    app.get("/ping")(lambda: {"ok": True})
    try:
        with ServiceServer(app) as server:
            assert httpx.get(f"{server.url}/ping", timeout=10).json() == {"ok": True}
        assert handler in root.handlers
        assert not stream.closed
        logging.getLogger("towerflow.test").error("still logging")
        assert "still logging" in stream.getvalue()
    finally:
        root.removeHandler(handler)
