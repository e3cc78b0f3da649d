"""Business rules for re-ranking: a YAML file validated on load and reloaded while the service runs.

    blocked_items: ["1432", "1500"]          # never recommended
    boosted_items: {"50": 0.5, "181": 0.2}   # added to the item's score
    availability:                            # items only some requests may see
      context_field: region                  # which request `context` field decides
      items: {"1": ["us", "ca"], "2": ["de"]}
      # a request whose context lacks the field sees only items with no restriction

A bad file is refused with a message naming the problem; on a reload the
previous rules stay in force, so a typo never takes the service down.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

_KEYS = {"blocked_items", "boosted_items", "availability"}


@dataclass(frozen=True)
class Rules:
    blocked: frozenset[str] = frozenset()
    boosts: Mapping[str, float] = field(default_factory=dict)
    context_field: str | None = None
    available_in: Mapping[str, frozenset[str]] = field(default_factory=dict)
    source: str | None = None

    def allowed(self, item_id: str, context: Mapping) -> bool:
        """False for blocked items and for items not available where the request comes from."""
        if item_id in self.blocked:
            return False
        places = self.available_in.get(item_id)
        if places is None:
            return True
        where = context.get(self.context_field) if self.context_field else None
        return where is not None and str(where) in places

    def boost(self, item_id: str) -> float:
        return self.boosts.get(item_id, 0.0)

    def summary(self) -> dict:
        return {
            "source": self.source,
            "blocked_items": len(self.blocked),
            "boosted_items": len(self.boosts),
            "restricted_items": len(self.available_in),
            "context_field": self.context_field,
        }


def _ids(value, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise ValueError(f"{where} must be a list of item ids, got {value!r}")
    return [str(v) for v in value]


def parse_rules(values, source: str | None = None) -> Rules:
    """Rules from the parsed YAML; ValueError with the offending key on anything unexpected."""
    values = values or {}
    if not isinstance(values, dict):
        raise ValueError(f"rules must be a mapping with keys {sorted(_KEYS)}, got {type(values).__name__}")
    unknown = set(values) - _KEYS
    if unknown:
        raise ValueError(f"unknown rule key(s) {sorted(unknown)}; known: {sorted(_KEYS)}")
    blocked = frozenset(_ids(values.get("blocked_items") or [], "blocked_items"))
    boosts_in = values.get("boosted_items") or {}
    if not isinstance(boosts_in, dict):
        raise ValueError(f"boosted_items must map item id -> boost, got {boosts_in!r}")
    boosts = {}
    for item, boost in boosts_in.items():
        if isinstance(boost, bool) or not isinstance(boost, int | float) or not math.isfinite(boost):
            raise ValueError(f"boosted_items[{item!r}] must be a finite number, got {boost!r}")
        boosts[str(item)] = float(boost)
    both = blocked & set(boosts)
    if both:
        raise ValueError(f"items both blocked and boosted: {sorted(both)}")
    availability = values.get("availability") or {}
    if not isinstance(availability, dict) or set(availability) - {"context_field", "items"}:
        raise ValueError(f"availability must be a mapping with context_field and items, got {availability!r}")
    context_field = availability.get("context_field")
    items = availability.get("items") or {}
    if items and not (isinstance(context_field, str) and context_field):
        raise ValueError("availability.context_field must name a request context field (e.g. region)")
    if not isinstance(items, dict):
        raise ValueError(f"availability.items must map item id -> list of allowed values, got {items!r}")
    available_in = {str(i): frozenset(_ids(places, f"availability.items[{i!r}]")) for i, places in items.items()}
    return Rules(blocked, boosts, context_field or None, available_in, source)


def load_rules(path: str | os.PathLike) -> Rules:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"cannot read rules file {path}: {err}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"rules file {path} is not valid YAML: {err}") from None
    try:
        return parse_rules(values, str(path))
    except ValueError as err:
        raise ValueError(f"rules file {path}: {err}") from None


class RulesHolder:
    """The rules in force; `reload()` swaps them only if the new file is valid; `maybe_reload()` on change."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._mtime = None
        self.last_error: str | None = None
        self.rules = Rules()
        if self.path is not None:
            self.rules = load_rules(self.path)  # a bad file at start-up is fatal: say so now
            self._mtime = self._stat()

    def _stat(self):
        try:
            stat = self.path.stat()
            return (stat.st_mtime_ns, stat.st_size)
        except OSError:
            return None

    def reload(self) -> Rules:
        """Re-reads the file; raises ValueError (and keeps the old rules) if it is invalid."""
        if self.path is None:
            raise ValueError("no rules file configured (reranking.rules_file)")
        with self._lock:
            mtime = self._stat()
            try:
                rules = load_rules(self.path)
            except ValueError as err:
                self.last_error = str(err)
                self._mtime = mtime  # do not retry the same broken file on every poll
                raise
            self.rules, self._mtime, self.last_error = rules, mtime, None
            return rules

    def maybe_reload(self) -> bool:
        """Reloads if the file changed since the last load; True if new rules are in force."""
        if self.path is None or self._stat() == self._mtime:
            return False
        try:
            self.reload()
        except ValueError:
            return False
        return True
