"""Experiment settings: the `experiments:` section of the service's YAML config, as validated dataclasses.

    experiments:
      log:
        dir: runs/local/experiments      # impressions-*.jsonl / events-*.jsonl (default: the caller's choice)
        max_bytes: 10000000              # rotate a file past this size ...
        backup_count: 5                  # ... keeping this many old ones
      canary:                            # route a share of users to the `canary` model version and watch it
        share: 0.1
        salt: canary
        window_seconds: 300              # the watcher compares the last 5 minutes of traffic
        check_interval_seconds: 10
        min_requests: 100                # per version, before any verdict (PSI is noisy below ~100 lists)
        max_error_rate_increase: 0.02    # canary error rate - stable error rate
        max_p99_ratio: 2.0               # canary p99 latency / stable p99 latency
        max_psi: 0.25                    # PSI of canary scores vs the offline evaluation's score distribution
        # score_reference: runs/local/ref.json  # optional: that distribution from a file; default: the
        #                                         # pushed evaluation.json's (ModelEvaluator's score_distribution)
      variants:                          # pipeline variants: the service's settings with overrides
        relevance-only: {reranking: {diversity_lambda: 1.0, novelty_weight: 0.0, freshness_boost: 0.0}}
      tests:
        - name: ranker-v4
          salt: ranker-v4-2026-11        # a new salt re-shuffles users; two experiments never share one
          holdout: 0.05                  # this share of users is served `holdout_source` and never treated
          shadow: false                  # true: the treatment is computed and logged, the control served
          arms:
            - {name: control, source: stable, weight: 0.5}
            - {name: treatment, source: canary, weight: 0.5}

An arm's `source` names what serves it: a model version label (`stable`,
`canary`), `popularity` (always there), or a variant defined under
`variants:` -- the service's own config sections with some values overridden,
served from the stable models (the overrides are checked when the service
builds the variant). The first arm is the control. At most one experiment may
choose what is served (shadow: false), and not together with a canary share:
both would decide the model for the same user.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

STABLE = "stable"
CANARY = "canary"
POPULARITY = "popularity"
BUILTIN_SOURCES = (STABLE, CANARY, POPULARITY)
HOLDOUT_ARM = "holdout"


def _check_share(name: str, value: float, *, allow_one: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not (0.0 <= value < 1.0 or (allow_one and value == 1.0)):
        raise ValueError(f"{name} must be in [0, {'1]' if allow_one else '1)'}, got {value}")
    return float(value)


def _check_positive(name: str, value, kind=float):
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if kind is int and value != int(value):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return kind(value)


def _check_name(what: str, name) -> str:
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"{what} {name!r} must be a non-empty name of letters, digits, '-', '_' or '.'")
    return name


@dataclass(frozen=True)
class Arm:
    """One arm of an experiment: what serves it (`source`) and its share of the enrolled users."""

    name: str
    source: str
    weight: float = 1.0

    def __post_init__(self):
        _check_name("arm name", self.name)
        if self.name == HOLDOUT_ARM:
            raise ValueError(f"arm name {HOLDOUT_ARM!r} is reserved for the holdout slice")
        _check_name(f"arm {self.name!r} source", self.source)
        object.__setattr__(self, "weight", _check_positive(f"arm {self.name!r} weight", self.weight))


@dataclass(frozen=True)
class Experiment:
    """Users hashed with `salt` into a holdout slice and then into arms by weight (first arm = control)."""

    name: str
    arms: tuple[Arm, ...]
    salt: str = ""  # default: the experiment's name
    holdout: float = 0.0
    holdout_source: str = STABLE
    shadow: bool = False

    def __post_init__(self):
        _check_name("experiment name", self.name)
        object.__setattr__(self, "salt", self.salt or self.name)
        arms = tuple(a if isinstance(a, Arm) else Arm(**a) for a in self.arms)
        if len(arms) < 2:
            raise ValueError(f"experiment {self.name!r} needs at least two arms (control first), got {len(arms)}")
        names = [a.name for a in arms]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.name!r} has duplicate arm names: {names}")
        object.__setattr__(self, "arms", arms)
        object.__setattr__(self, "holdout", _check_share(f"experiment {self.name!r} holdout", self.holdout))
        _check_name(f"experiment {self.name!r} holdout_source", self.holdout_source)
        if not isinstance(self.shadow, bool):
            raise ValueError(f"experiment {self.name!r} shadow must be true or false, got {self.shadow!r}")

    @property
    def control(self) -> Arm:
        return self.arms[0]

    def sources(self) -> set[str]:
        return {a.source for a in self.arms} | {self.holdout_source}


@dataclass(frozen=True)
class CanaryConfig:
    """The canary split and the thresholds past which the watcher rolls the canary back."""

    share: float = 0.1
    salt: str = "canary"
    window_seconds: float = 300.0
    check_interval_seconds: float = 10.0
    # PSI over fewer lists is noise: 100 ml-100k test users' lists from the SAME model gave PSI p99 0.17, 40 gave 0.34
    min_requests: int = 100
    max_error_rate_increase: float = 0.02
    max_p99_ratio: float = 2.0
    max_psi: float = 0.25
    models: tuple[str, ...] = ("two_tower", "ranker")
    score_reference: str | None = None  # JSON {edges, fractions}; None: the stable version's evaluation.json

    def __post_init__(self):
        _check_share("canary.share", self.share, allow_one=True)
        if self.score_reference is not None and (not isinstance(self.score_reference, str) or not self.score_reference):
            raise ValueError(f"canary.score_reference must be a file path, got {self.score_reference!r}")
        _check_name("canary.salt", self.salt)
        object.__setattr__(self, "window_seconds", _check_positive("canary.window_seconds", self.window_seconds))
        interval = _check_positive("canary.check_interval_seconds", self.check_interval_seconds)
        if interval > self.window_seconds:
            raise ValueError(
                f"canary.check_interval_seconds ({interval}) must not exceed window_seconds ({self.window_seconds})"
            )
        object.__setattr__(self, "check_interval_seconds", interval)
        object.__setattr__(self, "min_requests", _check_positive("canary.min_requests", self.min_requests, int))
        for name in ("max_error_rate_increase", "max_p99_ratio", "max_psi"):
            object.__setattr__(self, name, _check_positive(f"canary.{name}", getattr(self, name)))
        models = (self.models,) if isinstance(self.models, str) else tuple(self.models)
        if not models:
            raise ValueError("canary.models must name at least one served model, e.g. [two_tower, ranker]")
        object.__setattr__(self, "models", tuple(_check_name("canary model", m) for m in models))


@dataclass(frozen=True)
class LogConfig:
    """Where impressions and events go (JSONL) and how files rotate."""

    dir: str | None = None
    max_bytes: int = 10_000_000
    backup_count: int = 5

    def __post_init__(self):
        if self.dir is not None and (not isinstance(self.dir, str) or not self.dir):
            raise ValueError(f"log.dir must be a directory path, got {self.dir!r}")
        object.__setattr__(self, "max_bytes", _check_positive("log.max_bytes", self.max_bytes, int))
        if isinstance(self.backup_count, bool) or not isinstance(self.backup_count, int) or self.backup_count < 1:
            raise ValueError(f"log.backup_count must be an integer >= 1, got {self.backup_count!r}")


@dataclass(frozen=True)
class ExperimentsConfig:
    """Everything under `experiments:`; empty means: every user is served `stable`, nothing is logged."""

    tests: tuple[Experiment, ...] = ()
    canary: CanaryConfig | None = None
    log: LogConfig = field(default_factory=LogConfig)
    variants: dict = field(default_factory=dict)  # name -> {section: {key: value}} overrides of the service config

    def __post_init__(self):
        if not isinstance(self.variants, dict):
            raise ValueError("experiments.variants must map variant names to service config overrides")
        for name, overrides in self.variants.items():
            _check_name("variant name", name)
            if name in BUILTIN_SOURCES:
                raise ValueError(f"variant name {name!r} is taken by a built-in source ({', '.join(BUILTIN_SOURCES)})")
            if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
                raise ValueError(f"variant {name!r} must map config sections to overrides, e.g. {{reranking: {{...}}}}")
        tests = tuple(
            t if isinstance(t, Experiment) else _build(Experiment, t, "experiments.tests[]") for t in self.tests
        )
        names = [t.name for t in tests]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment names must be unique, got {names}")
        salts = [t.salt for t in tests] + ([self.canary.salt] if self.canary else [])
        if len(set(salts)) != len(salts):
            # the same salt means the same buckets: the experiments would not be independent
            raise ValueError(f"every experiment (and the canary) needs its own salt, got {salts}")
        serving = [t.name for t in tests if not t.shadow]
        if len(serving) > 1:
            raise ValueError(f"at most one experiment may choose what is served (shadow: false); got {serving}")
        if serving and self.canary is not None and self.canary.share > 0:
            raise ValueError(
                f"experiment {serving[0]!r} and canary.share both choose the served model; make the canary an arm "
                "of the experiment (canary.share: 0 keeps the watcher) or run the experiment in shadow mode"
            )
        object.__setattr__(self, "tests", tests)

    @property
    def serving_test(self) -> Experiment | None:
        return next((t for t in self.tests if not t.shadow), None)

    def sources(self) -> set[str]:
        out = {STABLE}
        for test in self.tests:
            out |= test.sources()
        if self.canary is not None and self.canary.share > 0:
            out.add(CANARY)
        return out


def _build(cls, values, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a mapping, got {type(values).__name__}")
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    try:
        return cls(**values)
    except TypeError as err:
        raise ValueError(f"{where}: {err}") from None


def from_dict(section: dict | None) -> ExperimentsConfig:
    """The `experiments:` mapping (None or {} = no experiments) -> ExperimentsConfig, with clear errors."""
    if section is None:
        return ExperimentsConfig()
    if not isinstance(section, dict):
        raise ValueError(f"experiments must be a mapping, got {type(section).__name__}")
    values = dict(section)
    unknown = sorted(set(values) - {"tests", "canary", "log", "variants"})
    if unknown:
        raise ValueError(f"experiments: unknown key(s) {unknown}; known: canary, log, tests, variants")
    tests = values.get("tests") or []
    if not isinstance(tests, list):
        raise ValueError("experiments.tests must be a list of experiments")
    built = []
    for i, test in enumerate(tests):
        where = f"experiments.tests[{i}]"
        test = dict(test) if isinstance(test, dict) else test
        if isinstance(test, dict):
            arms = test.get("arms")
            if not isinstance(arms, list):
                raise ValueError(f"{where}.arms must be a list of {{name, source, weight}}")
            test["arms"] = tuple(_build(Arm, a, f"{where}.arms[{j}]") for j, a in enumerate(arms))
        built.append(_build(Experiment, test, where))
    canary = values.get("canary")
    return ExperimentsConfig(
        tests=tuple(built),
        canary=None if canary is None else _build(CanaryConfig, canary, "experiments.canary"),
        log=_build(LogConfig, values.get("log") or {}, "experiments.log"),
        variants=values.get("variants") or {},
    )


def load(path: str | Path) -> ExperimentsConfig:
    """The `experiments:` section of a service YAML file (a file without one = no experiments)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path} must hold a YAML mapping at the top level")
    try:
        return from_dict(document.get("experiments"))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
