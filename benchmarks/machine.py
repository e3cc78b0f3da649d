"""What the benchmarks print about the machine they ran on (CPU model, cores, memory)."""

from __future__ import annotations

import os
from pathlib import Path


def _proc_field(path: str, prefix: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" elsewhere)."""
    return _proc_field("/proc/cpuinfo", "model name") or "unknown"


def memory_gib() -> str:
    """Total memory, e.g. "23.5 GiB" ("unknown" where /proc/meminfo is missing)."""
    total = _proc_field("/proc/meminfo", "MemTotal")
    return f"{int(total.split()[0]) / 2**20:.1f} GiB" if total else "unknown"


def cores() -> int:
    return os.cpu_count() or 1
