"""The service's runtime: the event loop, HTTP parser and Redis reply parser it runs on, and a frozen heap."""

import asyncio
import gc

import httpx
from fastapi import FastAPI

from towerflow.serving.recommender.runner import ServiceServer, freeze_heap


def test_service_runs_on_uvloop_with_the_httptools_parser():
    app = FastAPI()

    @app.get("/loop")
    async def loop() -> dict:
        return {"loop": type(asyncio.get_running_loop()).__module__}

    with ServiceServer(app) as server:
        assert httpx.get(f"{server.url}/loop", timeout=10).json()["loop"].startswith("uvloop")
        assert server.server.config.http_protocol_class.__name__ == "HttpToolsProtocol"


def test_redis_replies_are_parsed_by_hiredis():
    import redis.connection

    assert redis.connection.DefaultParser.__name__ == "_HiredisParser"


def test_freeze_heap_takes_live_objects_out_of_the_collections():
    before = gc.get_freeze_count()
    kept = [{"n": n} for n in range(1000)]  # tracked containers, alive across the freeze
    freeze_heap()
    assert gc.get_freeze_count() >= before + len(kept)
    walked = {id(obj) for obj in gc.get_objects(generation=2)}  # what a full collection walks
    assert id(kept[0]) not in walked
