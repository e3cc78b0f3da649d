"""The /v1/recommend request: its fields, defaults and validation (BadRequestError -> HTTP 400)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field


class BadRequestError(ValueError):
    """The request is invalid (the app answers 400 with this message)."""


@dataclass
class Request:
    user_id: str
    k: int = 10
    context: dict = field(default_factory=dict)
    exclude: list[str] = field(default_factory=list)
    explore: bool = True
    request_id: str = ""

    @classmethod
    def parse(cls, body: Mapping, max_k: int, max_exclude: int) -> Request:
        if not isinstance(body, Mapping):
            raise BadRequestError("the request body must be a JSON object")
        unknown = set(body) - {"user_id", "k", "context", "exclude", "explore", "request_id"}
        if unknown:
            raise BadRequestError(f"unknown field(s) {sorted(unknown)}")
        user_id = body.get("user_id")
        if isinstance(user_id, int) and not isinstance(user_id, bool):
            user_id = str(user_id)
        if not isinstance(user_id, str) or not user_id or len(user_id) > 128:
            raise BadRequestError("user_id must be a non-empty string of at most 128 characters")
        k = body.get("k", 10)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_k:
            raise BadRequestError(f"k must be an integer in [1, {max_k}], got {k!r}")
        context = body.get("context") or {}
        if not isinstance(context, Mapping):
            raise BadRequestError("context must be an object")
        ts = context.get("timestamp")
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float) or not 0 <= ts < 2**40):
            raise BadRequestError(f"context.timestamp must be seconds since the epoch, got {ts!r}")
        exclude = body.get("exclude") or []
        if not isinstance(exclude, list) or not all(isinstance(i, str | int) for i in exclude):
            raise BadRequestError("exclude must be a list of item ids")
        if len(exclude) > max_exclude:
            raise BadRequestError(f"exclude may hold at most {max_exclude} items, got {len(exclude)}")
        explore = body.get("explore", True)
        if not isinstance(explore, bool):
            raise BadRequestError("explore must be true or false")
        request_id = body.get("request_id") or uuid.uuid4().hex
        if not isinstance(request_id, str) or len(request_id) > 128:
            raise BadRequestError("request_id must be a string of at most 128 characters")
        return cls(user_id, k, dict(context), [str(i) for i in exclude], explore, request_id)
