"""A flow whose steps take wall time, for benchmarks/postgres.py's recovery rows.

A worker is SIGKILLed while these flows are half done; their steps sleep (plainly: calls made
inside a step are not journaled) so that "half done" lasts long enough to aim at.
"""

from __future__ import annotations


class SlowFlow:
    __flow__ = "run"

    def run(self, n, ms):
        acc = 0
        for i in range(n):
            acc += self.step(i, ms)
        return acc

    def step(self, i, ms):
        import time

        time.sleep(ms / 1000)
        return i + 1
