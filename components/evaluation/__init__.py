"""Offline evaluation: the time-split protocol of docs/design.md, its metrics, baselines, statistics and the gate."""
