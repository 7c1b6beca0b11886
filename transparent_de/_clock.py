"""Time, in one place, and the rule for which clock measures what.

* **Durations inside one process** (waits, timeouts, heartbeats, backoff, when a parked
  flow falls due, how long a lease has gone unrenewed) use :func:`mono`, the monotonic
  clock: stepping the wall clock, or another process's clock being off, cannot stretch or
  shrink them.
* **Deadlines that must survive a restart** (a durable sleep's end, a wait's timeout) are
  stored as wall-clock milliseconds (:func:`now_ms`), the only clock two processes share.
  Where a stored deadline is read back after a restart, the time left is capped at the
  sleep's or wait's own length: a clock that went backwards cannot make it last longer
  than it was asked to.
* **Ownership never compares wall clocks across processes**: a lease is taken over only
  when its owner is known dead or has not renewed it for a lease length of the taker's own
  monotonic clock (see :mod:`._runner`).

Engine code reads the clocks through this module (``_clock.now_ms()``), so tests can move
them.
"""

from __future__ import annotations

import time


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch (what the journal stores)."""
    return time.time_ns() // 1_000_000


def mono() -> float:
    """Monotonic seconds (for every duration measured inside one process)."""
    return time.monotonic()
