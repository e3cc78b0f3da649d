"""Safe model changes in the live service: A/B experiments, shadow mode, the canary split and its watcher.

config.py     the `experiments:` section of the service YAML (validated dataclasses)
bucketing.py  deterministic salted hash of a user into an experiment's holdout or arms
router.py     ExperimentRouter: which source serves a request, shadow lists, impression logging
service.py    attach(): the sources (stable, canary, popularity, variants) around the service's Recommender
event_log.py  impressions.jsonl / events.jsonl, size-rotated
canary.py     CanaryWatcher: canary vs stable on errors, p99 latency, score PSI; rollback + MLMD record
stats.py      two-proportion z-test, bootstrap differences, the score reference and PSI
metrics.py    the Prometheus counters and gauges of all of the above
"""
