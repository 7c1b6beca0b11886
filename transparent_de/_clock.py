"""Time, in one place: wall-clock milliseconds for what the journal stores.

Journal timestamps (a step's first attempt, a durable sleep's deadline, a lease's expiry)
must mean the same thing to every process that reads them, so they are wall-clock
milliseconds since the epoch.
"""

from __future__ import annotations

import time


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch (what the journal stores)."""
    return time.time_ns() // 1_000_000
