"""Prometheus metrics of the experiments, registered on the service's own registry.

towerflow_experiment_impressions_total{experiment, arm, source, served}   lists served (or shadow-computed)
towerflow_experiment_shadow_skipped_total                                  shadow lists skipped (queue full)
towerflow_canary_psi / _p99_ratio / _error_rate_increase                   the watcher's last verdict
towerflow_canary_rollbacks_total                                           canaries rolled back
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ExperimentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        r = registry or CollectorRegistry()
        self.impressions = Counter(
            "towerflow_experiment_impressions",
            "Recommendation lists by experiment, arm and source (served=false: shadow)",
            ["experiment", "arm", "source", "served"],
            registry=r,
        )
        self.shadow_skipped = Counter(
            "towerflow_experiment_shadow_skipped", "Shadow lists not computed: the shadow queue was full", registry=r
        )
        self.psi = Gauge("towerflow_canary_psi", "Canary score PSI vs the offline reference (last check)", registry=r)
        self.p99_ratio = Gauge("towerflow_canary_p99_ratio", "Canary / stable latency p99 (last check)", registry=r)
        self.error_rate_increase = Gauge(
            "towerflow_canary_error_rate_increase", "Canary - stable error rate (last check)", registry=r
        )
        self.rollbacks = Counter("towerflow_canary_rollbacks", "Canary versions rolled back by the watcher", registry=r)

    def verdict(self, verdict) -> None:
        for gauge, value in (
            (self.psi, verdict.psi),
            (self.p99_ratio, verdict.p99_ratio),
            (self.error_rate_increase, verdict.error_rate_increase),
        ):
            gauge.set(float("nan") if value is None else value)
        if verdict.rollback:
            self.rollbacks.inc()
