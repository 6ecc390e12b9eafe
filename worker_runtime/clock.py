"""Seconds since this process started, as the kernel saw it (interpreter start-up included).

Cold start is measured from the moment the container runs `python`, not from the first line of
our code: Python's own start-up and site imports are part of what the user waits for.
"""

from __future__ import annotations

import os
import time

_FALLBACK_START = time.time()


def process_start() -> float:
    """Wall-clock time (time.time()) at which this process was created."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            # The command name may contain spaces and parentheses: fields start after the last ')'.
            fields = fh.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 (starttime) of proc(5)
        with open("/proc/uptime", encoding="ascii") as fh:
            uptime = float(fh.read().split()[0])
        ticks = os.sysconf("SC_CLK_TCK")
        return time.time() - (uptime - start_ticks / ticks)
    except (OSError, ValueError, IndexError):
        return _FALLBACK_START


def since_start(started: float) -> float:
    return max(0.0, time.time() - started)
