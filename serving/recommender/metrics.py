"""Prometheus metrics of the recommender service (prometheus-client), one registry per app.

    towerflow_stage_latency_seconds{stage}          histogram, one per pipeline stage
    towerflow_request_latency_seconds               histogram, /v1/recommend end to end
    towerflow_fallbacks_total{stage, reason}        counter, reason = the error type
    towerflow_errors_total{endpoint, reason}        counter
    towerflow_http_requests_total{endpoint, status} counter
    towerflow_recommend_responses_total{outcome}    counter, ok | fallback
    towerflow_embedding_cache_total{result}         counter, hit | miss  (hit ratio = hit / (hit + miss))
    towerflow_feature_checks_total{feature}         counter; with _nulls_ below, the null rate per feature
    towerflow_feature_nulls_total{feature}
    towerflow_score{model, version}                 histogram of mean ranker scores per request (drift)
    towerflow_model_version{model}                  gauge, the version in use
    towerflow_rules_reloads_total{result}           counter
    towerflow_gc_pause_seconds{generation}          histogram of the process's garbage-collection pauses (every
                                                    thread stops for them: a source of tail latency)

A registry per app (not the global one) lets tests and benchmarks run several apps in one process.
"""

from __future__ import annotations

import gc
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SCORE_BUCKETS = (-10, -5, -3, -2, -1, -0.5, 0, 0.5, 1, 2, 3, 5, 10)
GC_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class GcPauses:
    """The process's garbage-collection pauses per generation, from `gc.callbacks` (installed once per
    process: collections are process-wide), exposed to every app's registry by `GcPauseCollector`."""

    _instance: GcPauses | None = None
    _instance_lock = threading.Lock()

    def __init__(self):
        self._lock = threading.Lock()
        self._started: float | None = None
        self.counts = {g: [0] * (len(GC_BUCKETS) + 1) for g in range(3)}  # per bucket, then +Inf
        self.sums = {g: 0.0 for g in range(3)}

    @classmethod
    def install(cls) -> GcPauses:
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
                gc.callbacks.append(cls._instance._callback)
            return cls._instance

    def _callback(self, phase: str, info: dict) -> None:
        # collections do not nest and run with the GIL held: one start time is enough
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.observe(int(info.get("generation", 0)), time.perf_counter() - self._started)
            self._started = None

    def observe(self, generation: int, seconds: float) -> None:
        bucket = next((i for i, upper in enumerate(GC_BUCKETS) if seconds <= upper), len(GC_BUCKETS))
        with self._lock:
            self.counts[generation][bucket] += 1
            self.sums[generation] += seconds

    def snapshot(self) -> dict[int, tuple[list[int], float]]:
        with self._lock:
            return {g: (list(c), self.sums[g]) for g, c in self.counts.items()}


class GcPauseCollector:
    """towerflow_gc_pause_seconds{generation} from the process's GcPauses."""

    def __init__(self, pauses: GcPauses):
        self.pauses = pauses

    def collect(self):
        family = HistogramMetricFamily(
            "towerflow_gc_pause_seconds", "Garbage-collection pauses of the process", labels=["generation"]
        )
        for generation, (counts, total) in self.pauses.snapshot().items():
            cumulative, buckets = 0, []
            for upper, count in zip([*map(str, GC_BUCKETS), "+Inf"], counts):
                cumulative += count
                buckets.append((upper, cumulative))
            family.add_metric([str(generation)], buckets, total)
        yield family


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.stage_latency = Histogram(
            "towerflow_stage_latency_seconds", "Latency of one recommend stage", ["stage"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.request_latency = Histogram(
            "towerflow_request_latency_seconds", "End-to-end /v1/recommend latency", buckets=LATENCY_BUCKETS, registry=r
        )
        self.fallbacks = Counter("towerflow_fallbacks", "Stage fallbacks", ["stage", "reason"], registry=r)
        self.errors = Counter("towerflow_errors", "Errors by endpoint and reason", ["endpoint", "reason"], registry=r)
        self.http = Counter("towerflow_http_requests", "HTTP requests", ["endpoint", "status"], registry=r)
        self.responses = Counter("towerflow_recommend_responses", "Recommend responses", ["outcome"], registry=r)
        self.cache = Counter("towerflow_embedding_cache", "Query embedding cache lookups", ["result"], registry=r)
        self.item_popularity_cache = Counter(
            "towerflow_item_popularity_cache", "Candidates' point-in-time popularity: items cached or read", ["result"],
            registry=r,
        )  # fmt: skip
        self.feature_checks = Counter("towerflow_feature_checks", "User features checked", ["feature"], registry=r)
        self.feature_nulls = Counter("towerflow_feature_nulls", "User features missing", ["feature"], registry=r)
        self.scores = Histogram(
            "towerflow_score", "Mean ranker score per request", ["model", "version"], buckets=SCORE_BUCKETS, registry=r
        )
        self.model_version = Gauge("towerflow_model_version", "Model version in use", ["model"], registry=r)
        self.rules_reloads = Counter("towerflow_rules_reloads", "Business-rule reloads", ["result"], registry=r)
        r.register(GcPauseCollector(GcPauses.install()))
