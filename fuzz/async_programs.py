"""Hypothesis strategies that generate random *async* flow programs as Python source (issue #16).

The programs are the async twins of :mod:`fuzz.programs`: the same effect lines (``method|sid|args``
appended with ``O_APPEND``, so executions are counted across forked processes), step results that
are functions of their arguments only (so plain asyncio is the oracle), and the same properties
checked by :mod:`fuzz.harness`. What is new is concurrency: every async step body first awaits
0-2 ms drawn from ``os.urandom`` (each forked run draws its own), so the steps of a ``gather``,
of interleaved sequences, of tasks and task groups finish in another order in every run, live
and on recovery.

A program stays deterministic however its steps interleave: only the flow's own task touches
the result list ``r``; tasks and gathered helpers return their values. No two steps that can
run at once share an effect line (method, sid and arguments): the harness allows each line one
extra execution per interrupted run, which is right when a crash interrupts at most one step
per line (with two such steps in flight, one crash re-runs both). Races
(``asyncio.wait(FIRST_COMPLETED)``, ``as_completed``) are observed by a sync step whose
arguments are the winners, in the order they won: a recovery that decided a race otherwise
than the journal recorded is refused by the fingerprint check; the program's result keeps only
what does not depend on timing (the sorted values), so the plain run stays its oracle.

Statement kinds are a table (:data:`KINDS`): a kind is a function drawing the lines of one
statement, registered with the depths it may appear at. A signal is the next entry (with the
oracle's queue, as :mod:`fuzz.programs` has for sync flows).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from fuzz.programs import EFFECT_HELPER, _ind, values

PRELUDE = (
    """
import asyncio
import os
import random
import time

EFFECTS = None
SIGNAL = None  # (set by the harness; no async program waits for a signal yet)


"""
    + EFFECT_HELPER
    + """


def _flaky_due(key):
    try:
        with open(EFFECTS) as f:
            return not any(ln.startswith("flaky|" + key + "|") for ln in f)
    except FileNotFoundError:
        return True


async def _jitter():
    # 0-2 ms from the OS: every forked run draws its own, so parallel steps finish in any order
    await asyncio.sleep(os.urandom(1)[0] / 255 * 0.002)


class Flow:
    __flow__ = "run"

    async def s0(self, sid, *a, **kw):
        await _jitter()
        _effect("s0|%s|%r" % (sid, a))
        return (sid, a, sorted(kw.items()))

    async def s1(self, sid, *a, **kw):
        await _jitter()
        _effect("s1|%s|%r" % (sid, a))
        return {"sid": sid, "n": len(a), "kw": sorted(kw)}

    async def s2(self, sid, *a, **kw):
        await _jitter()
        _effect("s2|%s|%r" % (sid, a))
        return str(sid) + ":" + repr(a)

    async def boom(self, sid, *a):
        await _jitter()
        _effect("boom|%s|%r" % (sid, a))
        raise ValueError("boom %s" % sid)

    async def flaky(self, sid):  # fails the first time it runs for a sid (see _flaky_due)
        await _jitter()
        due = _flaky_due(str(sid))
        _effect("flaky|%s|()" % sid)
        if due:
            raise RuntimeError("flaky %s" % sid)
        return sid

    def cap(self, sid, value):  # a sync step called from async flow code
        _effect("cap|%s|()" % sid)
        return sid

    async def _seq(self, sid, k, nap):  # steps in sequence in one task (interleaved under gather)
        out = []
        for j in range(k):
            if nap:
                await asyncio.sleep(nap)  # a durable timer inside a task of the flow
            out.append(await self.s1(sid, j))
        return out

    async def _mix(self, sid, k):  # sync steps with captured values, timers, async steps in one task
        out = []
        for j in range(k):
            out.append(self.cap("%s.%s" % (sid, j), time.time()))
            await asyncio.sleep(0.001)
            out.append(await self.s0(sid, j))
        return out

    async def _fan(self, sid, k):  # a gather inside a gathered task: nested gathers
        return list(await asyncio.gather(*(self.s2(sid, j) for j in range(k))))

    async def _h(self, sid, x):  # a helper awaited directly: it runs in its caller's task
        return [await self.s0(sid, x), await self.s2(sid + 10000, x)]
"""
)

STEPS = ("s0", "s1", "s2")
NAPS = (0, 0.001, 0.003)  # asyncio.sleep(0) is not journaled; the others are durable timers

Draw = Callable[..., Any]


@dataclass(frozen=True)
class Ctx:
    """What a statement kind may use: the sid counter, its depth, the statement strategy."""

    sid: itertools.count[int]
    depth: int
    nested: Callable[[int], Any]  # depth -> a strategy of one statement's lines

    def next(self) -> int:
        return next(self.sid)


def _args(draw: Draw, max_size: int = 2) -> str:
    return "".join(", " + repr(a) for a in draw(st.lists(values, max_size=max_size)))


def k_call(draw: Draw, c: Ctx) -> list[str]:
    step = draw(st.sampled_from(STEPS))
    return [f"r.append(await self.{step}({c.next()}{_args(draw, 3)}))"]


def k_kw(draw: Draw, c: Ctx) -> list[str]:
    step = draw(st.sampled_from(STEPS))
    return [f"r.append(await self.{step}({c.next()}, k={draw(values)!r}))"]


def k_alias(draw: Draw, c: Ctx) -> list[str]:
    step = draw(st.sampled_from(STEPS))
    return [f"f = self.{step}", f"r.append(await f({c.next()}, {draw(values)!r}))"]


def k_try(draw: Draw, c: Ctx) -> list[str]:
    return [
        "try:",
        f"    await self.boom({c.next()}, {draw(values)!r})",
        "except ValueError as e:",
        "    r.append(str(e))",
    ]


def k_capture(draw: Draw, c: Ctx) -> list[str]:
    fn = draw(st.sampled_from(["random.random()", "time.time()"]))
    return [f"t = {fn}", f"r.append(self.cap({c.next()}, t))"]


def k_sleep(draw: Draw, c: Ctx) -> list[str]:
    return [f"await asyncio.sleep({draw(st.sampled_from(NAPS))})", f"r.append(await self.s0({c.next()}))"]


def k_helper(draw: Draw, c: Ctx) -> list[str]:
    return [f"r.append(await self._h({c.next()}, {draw(values)!r}))"]


def k_comp(draw: Draw, c: Ctx) -> list[str]:  # an async comprehension: one step after another
    step, k = draw(st.sampled_from(STEPS)), draw(st.integers(0, 3))
    return [f"r.extend([await self.{step}({c.next()}, j) for j in range({k})])"]


def k_gather(draw: Draw, c: Ctx) -> list[str]:
    step, k = draw(st.sampled_from(STEPS)), draw(st.integers(0, 4))
    return [f"r.append(await asyncio.gather(*(self.{step}({c.next()}, j) for j in range({k}))))"]


def k_gather_exc(draw: Draw, c: Ctx) -> list[str]:  # a failing step beside others, return_exceptions
    step, n = draw(st.sampled_from(STEPS)), c.next()
    return [
        f"g = await asyncio.gather(self.{step}({n}, 0), self.boom({n}), self.{step}({n}, 1), "
        "return_exceptions=True)",
        "r.append([repr(x) for x in g])",
    ]


def _sequence(draw: Draw, c: Ctx) -> str:
    """A call of a helper that awaits several steps in turn (run as a task under gather)."""
    if draw(st.booleans()):
        return f"self._mix({c.next()}, {draw(st.integers(1, 2))})"
    return f"self._seq({c.next()}, {draw(st.integers(1, 3))}, {draw(st.sampled_from(NAPS))})"


def k_interleaved(draw: Draw, c: Ctx) -> list[str]:  # sequences of steps interleaved under gather
    seqs = [_sequence(draw, c) for _ in range(draw(st.integers(2, 3)))]
    return [f"r.append(await asyncio.gather({', '.join(seqs)}))"]


def k_nested(draw: Draw, c: Ctx) -> list[str]:  # gathers inside a gather, beside a sequence
    parts = [
        f"self._fan({c.next()}, {draw(st.integers(1, 3))})",
        f"self._seq({c.next()}, {draw(st.integers(1, 2))}, 0)",
        f"self._fan({c.next()}, {draw(st.integers(0, 2))})",
    ]
    return [f"r.append(await asyncio.gather({', '.join(draw(st.permutations(parts)))}))"]


def k_task(draw: Draw, c: Ctx) -> list[str]:  # create_task, flow code runs meanwhile, then await
    n = c.next()
    inner = draw(c.nested(c.depth + 1))
    nap = draw(st.sampled_from(NAPS))
    return [
        f"t{n} = asyncio.create_task(self._seq({n}, {draw(st.integers(1, 3))}, {nap}))",
        *inner,
        f"r.append(await t{n})",
    ]


def k_group(draw: Draw, c: Ctx) -> list[str]:  # TaskGroup on 3.11+, the same values by gather on 3.10
    step, k, n, m = draw(st.sampled_from(STEPS)), draw(st.integers(1, 3)), c.next(), c.next()
    return [
        "if hasattr(asyncio, 'TaskGroup'):",
        "    async with asyncio.TaskGroup() as tg:",
        f"        g{n} = [tg.create_task(self.{step}({n}, j)) for j in range({k})]",
        f"        h{n} = tg.create_task(self._seq({m}, 2, 0))",
        f"    r.append([x.result() for x in g{n}] + [h{n}.result()])",
        "else:",
        f"    g = list(await asyncio.gather(*(self.{step}({n}, j) for j in range({k}))))",
        f"    r.append(g + [await self._seq({m}, 2, 0)])",
    ]


def k_race(draw: Draw, c: Ctx) -> list[str]:  # asyncio.wait(FIRST_COMPLETED): the winner is timing
    step, n, m = draw(st.sampled_from(STEPS)), c.next(), c.next()
    return [
        f"t{n} = [asyncio.create_task(self.{step}({n}, j)) for j in range(2)]",
        f"d{n}, p{n} = await asyncio.wait(t{n}, return_when=asyncio.FIRST_COMPLETED)",
        # a step whose arguments follow the winner: a replay that decided otherwise is refused
        f"self.cap({m}, sorted(repr(x.result()) for x in d{n}))",
        f"r.append(sorted([repr(x.result()) for x in d{n}] + [repr(await x) for x in p{n}]))",
    ]


def k_completed(draw: Draw, c: Ctx) -> list[str]:  # as_completed: the order is timing
    step, n, m = draw(st.sampled_from(STEPS)), c.next(), c.next()
    return [
        f"o{n} = [await x for x in asyncio.as_completed("
        f"[asyncio.create_task(self.{step}({n}, j)) for j in range(3)])]",
        f"self.cap({m}, [repr(x) for x in o{n}])",  # arguments in the order they finished
        f"r.append(sorted(repr(x) for x in o{n}))",
    ]


def k_loop(draw: Draw, c: Ctx) -> list[str]:
    step, k, n = draw(st.sampled_from(STEPS)), draw(st.integers(0, 3)), c.next()
    body = draw(c.nested(c.depth + 1))
    return [f"for i{n} in range({k}):", f"    r.append(await self.{step}({n}, i{n}))", *_ind(body, 1)]


def k_if(draw: Draw, c: Ctx) -> list[str]:  # a branch on earlier results
    mod = draw(st.integers(2, 3))
    then, other = draw(c.nested(c.depth + 1)), draw(c.nested(c.depth + 1))
    return [f"if len(repr(r)) % {mod} == 0:", *_ind(then, 1), "else:", *_ind(other, 1)]


#: kind -> (how to draw it, the deepest level it may appear at); weights by repetition below.
KINDS: dict[str, tuple[Callable[[Draw, Ctx], list[str]], int]] = {
    "call": (k_call, 1),
    "kw": (k_kw, 1),
    "alias": (k_alias, 1),
    "try": (k_try, 1),
    "capture": (k_capture, 1),
    "sleep": (k_sleep, 1),
    "helper": (k_helper, 1),
    "comp": (k_comp, 1),
    "gather": (k_gather, 1),
    "gather_exc": (k_gather_exc, 1),
    "interleaved": (k_interleaved, 1),
    "nested": (k_nested, 1),
    "group": (k_group, 1),
    "race": (k_race, 1),
    "completed": (k_completed, 1),
    "task": (k_task, 0),
    "loop": (k_loop, 0),
    "if": (k_if, 0),
}
#: the concurrent shapes drawn twice as often as the others
WEIGHTS = {"gather": 2, "interleaved": 2, "nested": 2, "task": 2}


@st.composite
def statement(draw: Draw, sid: itertools.count[int], depth: int = 0) -> list[str]:
    """The lines of one statement of async flow code (``r`` is the result list)."""
    names = [n for n, (_, deepest) in KINDS.items() if depth <= deepest for _ in range(WEIGHTS.get(n, 1))]
    kind = draw(st.sampled_from(names))
    ctx = Ctx(sid, depth, lambda d: statement(sid, d))
    return KINDS[kind][0](draw, ctx)


@st.composite
def async_flow_programs(draw: Draw, max_statements: int = 5) -> str:
    """Source of a module with class ``Flow`` whose ``async def run()`` is the flow entry."""
    sid = itertools.count(1)
    body: list[str] = []
    for _ in range(draw(st.integers(1, max_statements))):
        body += draw(statement(sid, 0))
    return "\n".join(
        [PRELUDE, "    async def run(self):", "        r = []", *_ind(body, 2), "        return r", ""]
    )


def _program(*body: str) -> str:
    return "\n".join(
        [PRELUDE, "    async def run(self):", "        r = []", *_ind(list(body), 2), "        return r", ""]
    )


def _retrying(*body: str) -> str:
    return _program(*body).replace(
        '__flow__ = "run"', '__flow__ = {"entries": ("run",), "retries": 2, "backoff": 0.001}'
    )


#: Fixed async flows for the exhaustive sweep (every crash point, one crash each).
FIXED: dict[str, str] = {
    # a gather of steps with a failure beside them, a sync step, a captured value
    "fanout": _program(
        "r.append(await self.s0(1, 'a'))",
        "r.append(await asyncio.gather(*(self.s2(2, j) for j in range(3))))",
        "g = await asyncio.gather(self.s1(3, 0), self.boom(3), return_exceptions=True)",
        "r.append([repr(x) for x in g])",
        "r.append(self.cap(4, time.time()))",
    ),
    # sequences interleaved under gather (one with durable timers), a nested gather
    "interleaved": _program(
        "r.append(await asyncio.gather(self._seq(1, 3, 0), self._seq(2, 2, 0.001)))",
        "r.append(await asyncio.gather(self._fan(3, 2), self._seq(4, 1, 0), self._mix(5, 2)))",
    ),
    # tasks created before flow code goes on, a durable timer meanwhile, a task group (3.11+)
    "tasks": _program(
        "t = asyncio.create_task(self._seq(1, 2, 0))",
        "await asyncio.sleep(0.002)",
        "r.append(await self.s0(2))",
        "r.append(await t)",
        "if hasattr(asyncio, 'TaskGroup'):",
        "    async with asyncio.TaskGroup() as tg:",
        "        a = tg.create_task(self.s1(3, 0))",
        "        b = tg.create_task(self._h(4, 'x'))",
        "    r.append([a.result(), b.result()])",
        "else:",
        "    r.append(list(await asyncio.gather(self.s1(3, 0), self._h(4, 'x'))))",
    ),
    # the flow's retry policy: two flaky steps fail once each, in parallel, and are retried
    "retry": _retrying(
        "r.append(await asyncio.gather(self.flaky(1), self.s0(2), self.flaky(3)))",
        "r.append(await self.s1(4))",
    ),
}
