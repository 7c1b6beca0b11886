"""More async shapes in the differential matrix (issue #16): plain == journaled == replayed.

``await`` inside expressions and comprehensions, ``async for`` over an async generator helper,
``async with``, ``gather(return_exceptions=True)``, nested gathers, one task awaited from two
others, a step task cancelled, ``asyncio.timeout`` (3.11+). Each runs as plain asyncio, journaled,
and replayed in a fresh interpreter that must execute no step (see ``async_support``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from async_support import HAS_TASKGROUP, PRELUDE, agent_module, differential

SHAPES = PRELUDE + """
class Guard:
    # An async context manager of plain code (not a step): its enter and exit run live and on replay.
    def __init__(self, log):
        self.log = log

    async def __aenter__(self):
        self.log.append("enter")
        return self

    async def __aexit__(self, *exc):
        self.log.append("exit")
        return False


class Agent:
    __flow__ = (
        "expressions", "iterate", "partial", "nested", "shared", "cancelled", "deadline",
    )

    async def expressions(self, x):  # await inside expressions, comprehensions, f-strings
        total = (await self.fetch("e1", x))["x"] + (await self.fetch("e2", x + 1))["x"]
        labels = [(await self.fetch(f"c{i}", i))["label"] for i in range(3)]
        odd = {k: (await self.fetch(k, 1))["x"] for k in ("k1", "k2") if k != "k0"}
        return total, labels, odd, f"{(await self.fetch('f', total))['x']}!"

    async def iterate(self, n):  # async for over an async generator helper, inside async with
        log = []
        async with Guard(log):
            async for item in self._produce(n):
                log.append(item["label"])
        return log

    async def _produce(self, n):
        for i in range(n):
            yield await self.fetch(f"y{i}", i)

    async def partial(self, n):  # gather(return_exceptions=True) with failing steps
        got = await asyncio.gather(*(self.maybe(i) for i in range(n)), return_exceptions=True)
        return [g if not isinstance(g, Exception) else f"{type(g).__name__}: {g}" for g in got]

    async def nested(self, n):  # gathers of gathers
        return await asyncio.gather(*(self._pair(k) for k in range(n)))

    async def _pair(self, k):
        return await asyncio.gather(self.fetch(f"n{k}a", k), self.fetch(f"n{k}b", k))

    async def shared(self):  # one task awaited from two others
        task = asyncio.create_task(self._seq("s", 3))
        first, second = await asyncio.gather(self._await(task), self._await(task))
        return first, second, await self.fetch("after", len(first))

    async def _await(self, task):
        return await task

    async def _seq(self, tag, n):
        return [(await self.fetch(f"{tag}{i}", i))["label"] for i in range(n)]

    async def cancelled(self):  # a step's task cancelled while it runs
        slow = asyncio.create_task(self.linger("cancel"))
        await self.fetch("meanwhile", 0)
        slow.cancel()
        try:
            await slow
            outcome = "finished"
        except asyncio.CancelledError:
            outcome = "cancelled"
        return outcome, await self.fetch("then", 1)

    async def deadline(self):  # asyncio.timeout (3.11+) expiring around a step
        try:
            async with asyncio.timeout(0.05):
                await self.linger("timeout")
            outcome = "finished"
        except TimeoutError:
            outcome = "timed out"
        return outcome, await self.fetch("then", 2)

    async def fetch(self, label, x):
        await asyncio.sleep(delay(label))
        effect(label)
        return {"label": label, "x": x}

    async def maybe(self, i):
        await asyncio.sleep(delay(f"m{i}"))
        effect(f"m{i}")
        if i % 2:
            raise ValueError(f"odd {i}")
        return i

    async def linger(self, why):
        await asyncio.sleep(5)  # in a step body: a plain sleep, cut short by the cancellation
        effect(f"linger {why}")
        return why
"""


@pytest.fixture
def shapes(flow_module: Any, tmp_path: Path) -> Any:
    return agent_module(flow_module, tmp_path, SHAPES)


def lineages(journal: list[tuple[int, str, str, str | None]]) -> dict[str | None, str]:
    return {label: lineage for _, _, lineage, label in journal}


def test_await_in_expressions_and_comprehensions(shapes: Any, engine: Any, tmp_path: Path) -> None:
    result, _, journal = differential(shapes, tmp_path, engine.database, "expressions", 4, fid="expr")
    assert result == [9, ["c0", "c1", "c2"], {"k1": 1, "k2": 1}, "9!"]
    assert [lin for _, _, lin, _ in journal] == [f"0:{i}" for i in range(1, 9)]


def test_async_for_over_an_async_generator_inside_async_with(shapes: Any, engine: Any, tmp_path: Path) -> None:
    result, _, journal = differential(shapes, tmp_path, engine.database, "iterate", 3, fid="iter")
    assert result == ["enter", "y0", "y1", "y2", "exit"]
    assert lineages(journal) == {"y0": "0:1", "y1": "0:2", "y2": "0:3"}  # the generator runs in its caller's task


def test_gather_with_return_exceptions(shapes: Any, engine: Any, tmp_path: Path) -> None:
    result, (plain_fx, live_fx), journal = differential(shapes, tmp_path, engine.database, "partial", 6, fid="rx")
    assert result == [0, "ValueError: odd 1", 2, "ValueError: odd 3", 4, "ValueError: odd 5"]
    assert plain_fx != live_fx
    assert [(m, lin) for _, m, lin, _ in journal] == [("maybe", f"0:{i}") for i in range(1, 7)]


def test_nested_gathers(shapes: Any, engine: Any, tmp_path: Path) -> None:
    result, (plain_fx, live_fx), journal = differential(shapes, tmp_path, engine.database, "nested", 4, fid="nest")
    assert result == [[{"label": f"n{k}{s}", "x": k} for s in "ab"] for k in range(4)]
    assert plain_fx != live_fx
    # The pairs run in tasks 0.1..0.4; each pair's two steps take that task's slots 1 and 2.
    assert lineages(journal) == {f"n{k}{s}": f"0.{k + 1}:{1 if s == 'a' else 2}" for k in range(4) for s in "ab"}


def test_a_task_awaited_from_two_tasks(shapes: Any, engine: Any, tmp_path: Path) -> None:
    result, _, journal = differential(shapes, tmp_path, engine.database, "shared", fid="shared")
    assert result == [["s0", "s1", "s2"], ["s0", "s1", "s2"], {"label": "after", "x": 3}]
    assert lineages(journal) == {"s0": "0.1:1", "s1": "0.1:2", "s2": "0.1:3", "after": "0:1"}


def test_a_step_task_cancelled_while_it_runs(shapes: Any, engine: Any, tmp_path: Path) -> None:
    result, (plain_fx, _), journal = differential(shapes, tmp_path, engine.database, "cancelled", fid="cx")
    assert result == ["cancelled", {"label": "then", "x": 1}]
    assert "linger cancel" not in plain_fx
    (status,) = [m for _, m, _, label in journal if label == "cancel"]
    assert status == "linger"


@pytest.mark.skipif(not HAS_TASKGROUP, reason="asyncio.timeout is 3.11+")
def test_asyncio_timeout_around_a_step(shapes: Any, engine: Any, tmp_path: Path) -> None:
    result, _, _ = differential(shapes, tmp_path, engine.database, "deadline", fid="tmo")
    assert result == ["timed out", {"label": "then", "x": 2}]



RETRYING = """
import asyncio

ATTEMPTS = []


class Retrying:
    __flow__ = {"entries": "run", "retries": 2, "backoff": 0.001, "retry_on": (ConnectionError,)}

    async def run(self):
        return await asyncio.gather(self.slow("a"), self.flaky("f"), self.slow("b"))

    async def slow(self, label):
        await asyncio.sleep(0.01)
        return label

    async def flaky(self, label):
        ATTEMPTS.append(label)
        await asyncio.sleep(0.001)
        if len(ATTEMPTS) < 2:
            raise ConnectionError("try again")
        return label
"""


def test_dbos_740_a_retried_step_keeps_its_slot_and_shifts_no_other(flow_module: Any, engine: Any) -> None:
    from helpers import query

    import transparent_de

    m = flow_module(RETRYING, name="retrying")
    assert transparent_de.run(m.Retrying().run, flow_id="r740") == ["a", "f", "b"]
    sql = "SELECT step, method_name, lineage, status, attempts FROM execution_log WHERE flow_id='r740' AND step>0"
    journal = sorted(query(engine, sql), key=lambda r: r[2])
    assert [(r[1], r[2], r[3], r[4]) for r in journal] == [
        ("slow", "0:1", "COMPLETE", 1), ("flaky", "0:2", "COMPLETE", 2), ("slow", "0:3", "COMPLETE", 1),
    ]  # fmt: skip
    assert sorted(r[0] for r in journal) == [1, 2, 3]  # the retry took no number of its own
    query(engine, "UPDATE flows SET status='PENDING', owner=NULL, lease_until=NULL WHERE flow_id='r740'")
    query(engine, "UPDATE execution_log SET status='PENDING', return_value=NULL WHERE flow_id='r740' AND step=0")
    m.ATTEMPTS.clear()
    assert transparent_de.run(m.Retrying().run, flow_id="r740") == ["a", "f", "b"]
    assert m.ATTEMPTS == []  # replayed, attempts and all
    assert sorted(query(engine, sql), key=lambda r: r[2]) == journal
