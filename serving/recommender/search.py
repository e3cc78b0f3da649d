"""The top-N search of one request over the served ScaNN index, without the scheduler's tail.

Why: a single ScaNN query at 1M items takes ~0.3 ms of CPU, yet its p99
latency was 20-30x its p50. Timing the slow queries showed their thread CPU
time was normal and every one of them had an involuntary context switch
(`getrusage(RUSAGE_THREAD).ru_nivcsw`): the query thread was runnable but
preempted by other processes on a 2-core machine, for a scheduler slice of
3-10 ms. Neither warm-up, allocation (no page faults in slow queries) nor
ScaNN's or BLAS's threads (none spin after a call) were the cause
(benchmarks/results/scann.md).

So the search runs as a short real-time section: the calling thread switches
to SCHED_FIFO (lowest real-time priority) for the duration of the C++ search
and back to SCHED_OTHER right after -- two system calls, about 2 us. Ordinary
processes cannot preempt it in between; the kernel's real-time throttling
(95% of each second by default) still bounds it. Without the privilege
(CAP_SYS_NICE or an RLIMIT_RTPRIO > 0) the search runs as before and
`REALTIME_AVAILABLE` is False.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterator

import numpy as np


def _probe() -> bool:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        return True
    except (AttributeError, OSError):
        return False


REALTIME_AVAILABLE = _probe()


@contextlib.contextmanager
def no_preemption(enabled: bool = True) -> Iterator[None]:
    """The calling thread runs SCHED_FIFO inside the block (if allowed); keep the block short."""
    if not (enabled and REALTIME_AVAILABLE):
        yield
        return
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    try:
        yield
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def search_top_n(
    index, query: np.ndarray, n: int, banned_rows: Collection[int] = (), realtime: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Top-n rows (and dot-product scores) for one query, `banned_rows` left out; ScaNN's single-query path.

    Over-fetches by the number of banned rows so n results remain when the catalog has them.
    """
    fetch = min(index.num_items, n + len(banned_rows))
    query = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
    with no_preemption(realtime):
        rows, scores = index.search_one(query, fetch)
    rows, scores = np.asarray(rows, dtype=np.int64), np.asarray(scores, dtype=np.float32)
    keep = rows >= 0
    if len(banned_rows):
        keep &= ~np.isin(rows, np.fromiter(banned_rows, dtype=np.int64, count=len(banned_rows)))
    return rows[keep][:n], scores[keep][:n]
