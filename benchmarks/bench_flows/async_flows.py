"""Async benchmark flows (benchmarks/async_flows.py) and their sync twins for the same work."""

from __future__ import annotations

import asyncio
import time


class AsyncStepFlow:
    """N trivial async steps in sequence: the async twin of flows.StepFlow."""

    __flow__ = "run"

    async def run(self, n):
        acc = 0
        for i in range(n):
            acc += await self.step(i)
        return acc

    async def step(self, i):
        return i + 1


class AsyncIOFlow:
    """N steps in sequence, each awaiting ``pause`` seconds of I/O (asyncio.sleep in the body)."""

    __flow__ = "run"

    async def run(self, n, pause):
        acc = 0
        for i in range(n):
            acc += await self.io(i, pause)
        return acc

    async def io(self, i, pause):
        await asyncio.sleep(pause)  # inside a step body: plain I/O, not a durable timer
        return i + 1


class SyncIOFlow:
    """The sync twin of AsyncIOFlow, run on a thread: each step blocks ``pause`` seconds."""

    __flow__ = "run"

    def run(self, n, pause):
        acc = 0
        for i in range(n):
            acc += self.io(i, pause)
        return acc

    def io(self, i, pause):
        time.sleep(pause)  # inside a step body: plain blocking I/O, not a durable timer
        return i + 1


class AsyncParkFlow:
    """One step, then a long durable timer (awaited in place in the foreground; parked in the background)."""

    __flow__ = "run"

    async def run(self, i, seconds):
        x = await self.step(i)
        await asyncio.sleep(seconds)
        return x

    async def step(self, i):
        return i + 1


class PlainAsyncParkFlow:
    """Not a flow: the same coroutine as AsyncParkFlow in plain asyncio (the memory baseline)."""

    async def run(self, i, seconds):
        x = await self.step(i)
        await asyncio.sleep(seconds)
        return x

    async def step(self, i):
        return i + 1
