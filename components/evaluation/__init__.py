"""Offline evaluation: the time-split protocol of DESIGN.md and the ranking / beyond-accuracy metrics."""
