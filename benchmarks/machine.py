"""What every benchmark records about the machine it ran on.

The CPU changes between machines (AMX, avx512_bf16, AVX2 only), and so do the kernels, the dtypes and the timings:
a benchmark's numbers mean nothing without its CPU model, the flags that pick those kernels and the load average.
One reader for all of them: model_store.hardware's, the one that also chooses the dtypes.
"""

from __future__ import annotations

import os
import time
from typing import Any

from model_store.hardware import parse_cpuinfo, read_cpuinfo


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def cpu(cpuinfo_text: str | None = None) -> dict[str, Any]:
    """The CPU's model name and the flags that pick kernels and dtypes (this machine's, or a /proc/cpuinfo text's)."""
    info = read_cpuinfo() if cpuinfo_text is None else parse_cpuinfo(cpuinfo_text)
    return {"model": info.model, "flags": info.relevant_flags}


def all_flags() -> list[str]:
    """Every flag the CPU reports (for a record that keeps them all)."""
    return sorted(read_cpuinfo().flags)


def wait_for_idle(threshold: float, timeout_s: float, poll_s: float = 5.0) -> dict[str, Any]:
    """Wait until the 1-minute load average is below `threshold` (at most `timeout_s`); what was seen."""
    start = time.monotonic()
    first = load_average()
    while os.getloadavg()[0] >= threshold and time.monotonic() - start < timeout_s:
        time.sleep(poll_s)
    now = load_average()
    return {
        "load_at_wait_start": first,
        "load_before": now,
        "waited_s": round(time.monotonic() - start, 1),
        "idle": now[0] < threshold,
        "threshold": threshold,
    }
