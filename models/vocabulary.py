"""Bounds on Transform's id vocabularies: plain settings with no TensorFlow import, so configs can hold them.

`models.preprocessing.preprocessing_fn` reads them from the Transform
component's custom_config (under VOCABULARY_CONFIG_KEY).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

# The Transform custom_config key that holds VocabularyLimits.settings().
VOCABULARY_CONFIG_KEY = "vocabulary"


@dataclass(frozen=True)
class VocabularyLimits:
    """Bounds on the id vocabularies, so a catalog of millions of items keeps its embedding tables bounded.

    `*_top_k` keeps the most frequent values (None: all); `*_min_count` drops
    values seen fewer times in the analysed (training) data. Values left out
    share the OOV bucket, exactly like values never seen in training; the
    feature contract (PAD_ID, ids shifted by one, OOV after the vocabulary) is
    unchanged. The defaults bound nothing, which is today's behaviour.
    Applies to user ids, item ids (candidate and history share the
    vocabulary, and the log-Q frequency file follows it) and title tokens.
    """

    user_top_k: int | None = None
    user_min_count: int = 1
    item_top_k: int | None = None
    item_min_count: int = 1
    title_token_top_k: int | None = None

    def __post_init__(self):
        for name in ("user_top_k", "item_top_k", "title_token_top_k"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        for name in ("user_min_count", "item_min_count"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    @classmethod
    def from_settings(cls, settings: Mapping | None) -> VocabularyLimits:
        """Limits from a dict of field values (a config's overrides); unknown names are a clear error."""
        settings = dict(settings or {})
        unknown = sorted(set(settings) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown vocabulary settings {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**settings)

    @classmethod
    def from_custom_config(cls, custom_config: Mapping | None) -> VocabularyLimits:
        """The limits in Transform's custom_config (under VOCABULARY_CONFIG_KEY), defaults when absent."""
        return cls.from_settings((custom_config or {}).get(VOCABULARY_CONFIG_KEY))

    def settings(self) -> dict:
        """JSON-ready, for Transform's custom_config[VOCABULARY_CONFIG_KEY]."""
        return asdict(self)
