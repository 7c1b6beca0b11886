"""Benchmark flows: N trivial steps, payload-returning steps, and an unmarked twin."""

from __future__ import annotations


class StepFlow:
    __flow__ = "run"

    def run(self, n):
        acc = 0
        for i in range(n):
            acc += self.step(i)
        return acc

    def _loop(self, n):
        # Called with no flow active: each self.step goes through the trampoline, plainly.
        acc = 0
        for i in range(n):
            acc += self.step(i)
        return acc

    def step(self, i):
        return i + 1


class PayloadFlow:
    __flow__ = "run"

    def run(self, n, size):
        total = 0
        for i in range(n):
            total += len(self.blob(i, size))
        return total

    def blob(self, i, size):
        return b"x" * size


class PlainFlow:
    """Not a flow: the same loop with ordinary method calls."""

    def _loop(self, n):
        acc = 0
        for i in range(n):
            acc += self.step(i)
        return acc

    def step(self, i):
        return i + 1


class CrashFlow:
    """Runs n steps; with BENCH_CRASH_AT=i in the environment, step i kills the process."""

    __flow__ = "run"

    def run(self, n):
        acc = 0
        for i in range(n):
            acc += self.step(i)
        return acc

    def step(self, i):
        import os

        if os.environ.get("BENCH_CRASH_AT") == str(i):
            os._exit(1)
        return i + 1
