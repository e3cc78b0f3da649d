"""The store's errors: what a caller (the recommend service, the CLI) catches and maps to a response."""

from __future__ import annotations

import contextlib

import redis


class FeatureStoreUnavailable(RuntimeError):  # noqa: N818 - name fixed by the service interface
    """The store cannot be reached (Redis down, timeout, cluster slot unserved)."""


class NotMaterialized(FeatureStoreUnavailable):
    """Redis answers but holds no materialization yet (`towerflow features materialize` first)."""


class InvalidEvent(ValueError):  # noqa: N818 - name fixed by the service interface
    """Bad input to record_event (unknown user/item, bad type, id or timestamp): nothing was stored."""


@contextlib.contextmanager
def unavailable_on_redis_errors():
    """Any Redis-level failure (connection refused, timeout, cluster down, loading) -> FeatureStoreUnavailable."""
    try:
        yield
    except redis.RedisError as err:
        raise FeatureStoreUnavailable(f"feature store unavailable: {type(err).__name__}: {err}") from err
