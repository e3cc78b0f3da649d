"""The recommender service's settings: typed dataclasses, one place for every default, loaded from YAML.

    retrieval:   {top_n: null, protocol: grpc, cache_ttl_seconds: 300}   (null: the pushed evaluation's depth)
    ranking:     {enabled: true}
    reranking:   {diversity_lambda: 0.9, freshness_days: 30, freshness_boost: 0.3, rules_file: rules.yaml}
    exploration: {epsilon0: 0.1, ...}
    cold_start:  {min_events: 5, popularity_window_days: 7, popularity_candidates: 50}
    budgets_ms:  {features: 30, retrieval: 40, ranking: 60, reranking: 20, exploration: 10}
    limits:      {max_k: 200, max_body_bytes: 65536, rate_per_second: 200, burst: 400}

`load_config(path)` rejects unknown keys and bad values with one clear line
naming the field, so a typo in service.yaml fails at start-up, not at 3 a.m.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

GRPC = "grpc"
REST = "rest"


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def _unit(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


FALLBACK_TOP_N = 300  # retrieval.top_n when neither the config nor the pushed evaluation sets a depth


@dataclass
class RetrievalConfig:
    # Candidates ScaNN hands to the ranker. None: the pushed evaluation's rerank_depth -- the depth the
    # offline evaluation (and so the blessing gate) scored the served blend at, so the service ranks the
    # list that was judged (100 on the default pipeline), or the request's k when that is larger;
    # FALLBACK_TOP_N when the version has no evaluation. A number is used as it is.
    top_n: int | None = None
    protocol: str = GRPC  # how the query tower is called: TF Serving gRPC, or REST
    cache_ttl_seconds: float = 300.0  # per-user query-embedding cache (dropped by the user's next event)
    version_poll_seconds: float = 1.0  # how often the served model versions are checked
    # The ScaNN search runs as a short SCHED_FIFO section so other processes cannot preempt it (its p99
    # was a scheduler slice, not search work: serving/recommender/search.py); needs CAP_SYS_NICE.
    realtime_search: bool = True

    def __post_init__(self):
        if self.top_n is not None and (
            not isinstance(self.top_n, int) or isinstance(self.top_n, bool) or not 1 <= self.top_n <= 10_000
        ):
            raise ValueError(f"retrieval.top_n must be null or an integer in [1, 10000], got {self.top_n!r}")
        if self.protocol not in (GRPC, REST):
            raise ValueError(f"retrieval.protocol must be {GRPC!r} or {REST!r}, got {self.protocol!r}")
        _positive("retrieval.cache_ttl_seconds", self.cache_ttl_seconds)
        _positive("retrieval.version_poll_seconds", self.version_poll_seconds)
        if not isinstance(self.realtime_search, bool):
            raise ValueError(f"retrieval.realtime_search must be true or false, got {self.realtime_search!r}")


@dataclass
class RankingConfig:
    enabled: bool = True
    # The final score is retrieval logit + weight x interaction score [+ popularity_weight x log(1 + the
    # item's recent count)]; the weights come from the evaluation pushed with the model (the ModelEvaluator's
    # two_tower+dcn+pop). default_weight is used only when the pushed version carries no weight.
    default_weight: float = 0.25
    # None: the pushed evaluation's popularity_weight (0 = no popularity term, no popular candidates).
    popularity_weight: float | None = None
    # How many of the most recently popular unseen items join retrieval's candidates when the popularity
    # term is on; None: the pushed evaluation's rerank_depth (the offline evaluation's candidate count).
    popularity_candidates: int | None = None
    # The candidates' point-in-time popularity is read once per item and request time and reused for this
    # many seconds (pit_cache.py: live requests of one second share it); 0 = read it for every request.
    # Experiment variants and the canary share the base service's cache, so this is the base's setting.
    item_popularity_cache_seconds: float = 1.0

    def __post_init__(self):
        if not isinstance(self.enabled, bool):
            raise ValueError(f"ranking.enabled must be true or false, got {self.enabled!r}")
        if not (isinstance(self.default_weight, int | float) and self.default_weight >= 0):
            raise ValueError(f"ranking.default_weight must be >= 0, got {self.default_weight!r}")
        weight = self.popularity_weight
        if weight is not None and not (
            isinstance(weight, int | float) and not isinstance(weight, bool) and 0 <= weight < float("inf")
        ):
            raise ValueError(f"ranking.popularity_weight must be a number >= 0 or null, got {weight!r}")
        count = self.popularity_candidates
        if count is not None and not (isinstance(count, int) and not isinstance(count, bool) and 0 <= count <= 10_000):
            raise ValueError(f"ranking.popularity_candidates must be an integer in [0, 10000] or null, got {count!r}")
        seconds = self.item_popularity_cache_seconds
        if not (isinstance(seconds, int | float) and not isinstance(seconds, bool) and 0 <= seconds <= 60):
            raise ValueError(f"ranking.item_popularity_cache_seconds must be a number in [0, 60], got {seconds!r}")


@dataclass
class RerankingConfig:
    # MMR trade-off: 1.0 = pure relevance order (diversity off), lower = more genre diversity.
    # freshness_boost and novelty_weight, like MMR's relevance, are in units of each request's score scale:
    # the spread of its best `diversity_depth` scores (reranking.score_scale).
    # The defaults (diversity_lambda, diversity_depth, freshness_boost, novelty_weight) were chosen on the
    # EVAL window by `towerflow select-reranking --run-dir RUN` (rerank_selection.py: its grid and rule --
    # diversity and freshness on, diversity@10 and coverage@10 up, NDCG@10 cost <= 2% at the upper 95%
    # bootstrap bound over eval users, then the largest gain) on a default ml-100k run serving
    # two_tower+dcn+pop (benchmarks/results/reranking.md): eval NDCG@10 0.3746 vs 0.3748 plain (bound
    # 1.99%), diversity@10 0.8531 vs 0.8527, coverage@10 0.0583 vs 0.0553. The test window, reported only:
    # NDCG@10 0.3848 vs 0.3774 (cost -1.98%), diversity@10 0.8552 vs 0.8330, coverage@10 0.0583 vs 0.0535.
    diversity_lambda: float = 0.5
    diversity_depth: int = 20  # MMR picks from the best max(k, diversity_depth) candidates
    freshness_days: float = 30.0  # an item first seen less than this long ago counts as new
    freshness_boost: float = 0.1  # added to its score, x the request's score scale
    # Subtracted x log(1 + the item's interactions so far) x the score scale: favours the long tail, so lists
    # differ more between users (catalog coverage); genre MMR alone makes each list varied, not the lists distinct.
    novelty_weight: float = 0.1
    rules_file: str | None = None  # business rules YAML (serving/recommender/rules.py)
    rules_poll_seconds: float = 2.0  # the rules file is re-read when it changes

    def __post_init__(self):
        _unit("reranking.diversity_lambda", self.diversity_lambda)
        if not isinstance(self.diversity_depth, int) or self.diversity_depth < 1:
            raise ValueError(f"reranking.diversity_depth must be a positive integer, got {self.diversity_depth!r}")
        if not (isinstance(self.freshness_days, int | float) and self.freshness_days >= 0):
            raise ValueError(f"reranking.freshness_days must be >= 0, got {self.freshness_days!r}")
        if not (isinstance(self.freshness_boost, int | float) and math.isfinite(self.freshness_boost)):
            raise ValueError(f"reranking.freshness_boost must be a number, got {self.freshness_boost!r}")
        if not (isinstance(self.novelty_weight, int | float) and self.novelty_weight >= 0):
            raise ValueError(f"reranking.novelty_weight must be >= 0, got {self.novelty_weight!r}")
        _positive("reranking.rules_poll_seconds", self.rules_poll_seconds)


@dataclass
class ExplorationConfig:
    # epsilon = epsilon0 / sqrt(1 + events): new users see more exploration, engaged users less.
    epsilon0: float = 0.1
    quality_floor: float = 0.5  # explore only among candidates whose score is above this quantile
    protected_top: int = 3  # the first slots are never replaced
    pool_size: int = 20  # draw from the least-exposed `pool_size` candidates above the floor
    seed: int = 0

    def __post_init__(self):
        _unit("exploration.epsilon0", self.epsilon0)
        _unit("exploration.quality_floor", self.quality_floor)
        if not isinstance(self.protected_top, int) or self.protected_top < 0:
            raise ValueError(f"exploration.protected_top must be an integer >= 0, got {self.protected_top!r}")
        if not isinstance(self.pool_size, int) or self.pool_size < 1:
            raise ValueError(f"exploration.pool_size must be a positive integer, got {self.pool_size!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"exploration.seed must be an integer, got {self.seed!r}")


@dataclass
class ColdStartConfig:
    min_events: int = 5  # fewer events than this (or an unknown user) = the cold path
    popularity_window_days: float = 7.0  # "recent" popularity
    popularity_candidates: int = 50  # segment-popular items added to a cold user's candidates

    def __post_init__(self):
        if not isinstance(self.min_events, int) or self.min_events < 0:
            raise ValueError(f"cold_start.min_events must be an integer >= 0, got {self.min_events!r}")
        _positive("cold_start.popularity_window_days", self.popularity_window_days)
        if not isinstance(self.popularity_candidates, int) or self.popularity_candidates < 0:
            raise ValueError(
                f"cold_start.popularity_candidates must be an integer >= 0, got {self.popularity_candidates!r}"
            )


@dataclass
class BudgetsConfig:
    """Milliseconds each stage may take before the request falls back (the model calls time out at it)."""

    features: float = 50.0
    retrieval: float = 100.0
    ranking: float = 150.0
    reranking: float = 50.0
    exploration: float = 20.0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            _positive(f"budgets_ms.{f.name}", getattr(self, f.name))


@dataclass
class LimitsConfig:
    max_k: int = 200
    max_exclude: int = 1000
    max_body_bytes: int = 64 * 1024
    rate_per_second: float = 200.0  # per client (token bucket); over it -> 429
    burst: int = 400
    fallback_list_size: int = 500  # in-process popularity list kept for when the store is down
    fallback_refresh_seconds: float = 300.0  # how often that list is refreshed
    popularity_cache_seconds: float = 60.0  # recent / segment popularity cached in process this long

    def __post_init__(self):
        for name in ("max_k", "max_exclude", "max_body_bytes", "burst", "fallback_list_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"limits.{name} must be a positive integer, got {value!r}")
        _positive("limits.rate_per_second", self.rate_per_second)
        _positive("limits.fallback_refresh_seconds", self.fallback_refresh_seconds)
        _positive("limits.popularity_cache_seconds", self.popularity_cache_seconds)


@dataclass
class ServiceConfig:
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    reranking: RerankingConfig = field(default_factory=RerankingConfig)
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    cold_start: ColdStartConfig = field(default_factory=ColdStartConfig)
    budgets_ms: BudgetsConfig = field(default_factory=BudgetsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    @classmethod
    def from_dict(cls, values: dict | None) -> ServiceConfig:
        """Builds the config from nested dicts; unknown sections or keys are errors."""
        values = values or {}
        if not isinstance(values, dict):
            raise ValueError(f"the service config must be a mapping of sections, got {type(values).__name__}")
        sections = {f.name: f.default_factory for f in dataclasses.fields(cls)}
        # `experiments:` is read and validated by serving/experiments/config.py
        unknown = set(values) - set(sections) - {"experiments"}
        if unknown:
            raise ValueError(f"unknown config section(s) {sorted(unknown)}; known: {sorted(sections)}")
        built = {}
        for name, factory in sections.items():
            section = values.get(name) or {}
            if not isinstance(section, dict):
                raise ValueError(f"config section {name!r} must be a mapping, got {section!r}")
            known = {f.name for f in dataclasses.fields(factory)}
            bad = set(section) - known
            if bad:
                raise ValueError(f"unknown key(s) {sorted(bad)} in section {name!r}; known: {sorted(known)}")
            built[name] = factory(**section)
        return cls(**built)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None) -> ServiceConfig:
    """The config in a YAML file (None: every default). Relative `rules_file` is relative to the YAML file."""
    if path is None:
        return ServiceConfig()
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except OSError as err:
        raise FileNotFoundError(f"cannot read service config {path}: {err}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from None
    try:
        config = ServiceConfig.from_dict(values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None
    rules = config.reranking.rules_file
    if rules and not Path(rules).is_absolute():
        config.reranking.rules_file = str((path.parent / rules).resolve())
    return config
