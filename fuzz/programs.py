"""Hypothesis strategies that generate random flow programs as Python source.

Every step appends one line to the effects file (``EFFECTS``, set by the harness) with
``O_APPEND``, so executions are counted across forked processes. Step results are
deterministic functions of the arguments, so a plain-Python run is the oracle.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import strategies as st

#: Generated flows record every execution of a step as one line appended to ``EFFECTS`` (an
#: ``O_APPEND`` write that a kill cannot lose), so executions are counted across processes.
EFFECT_HELPER = """
def _effect(line):
    fd = os.open(EFFECTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)
"""

PRELUDE = (
    """
import os
import random
import time

EFFECTS = None
SIGNAL = None  # set by the harness: engine.signal in a durable run, a queue in the oracle
from transparent_de import wait_for


"""
    + EFFECT_HELPER
    + """


def _flaky_due(key):
    try:
        with open(EFFECTS) as f:
            return not any(ln.startswith("flaky|" + key + "|") for ln in f)
    except FileNotFoundError:
        return True


class Flow:
    __flow__ = "run"

    def s0(self, sid, *a, **kw):
        _effect("s0|%s|%r" % (sid, a))
        return (sid, a, sorted(kw.items()))

    def s1(self, sid, *a, **kw):
        _effect("s1|%s|%r" % (sid, a))
        return {"sid": sid, "n": len(a), "kw": sorted(kw)}

    def s2(self, sid, *a, **kw):
        _effect("s2|%s|%r" % (sid, a))
        return str(sid) + ":" + repr(a)

    def boom(self, sid, *a):
        _effect("boom|%s|%r" % (sid, a))
        raise ValueError("boom %s" % sid)

    def cap(self, sid, value):
        _effect("cap|%s|()" % sid)
        return sid

    def ask(self, sid):
        _effect("ask|%s|()" % sid)
        SIGNAL("fuzz-flow", "answer", sid)
        return sid

    def answer(self, sid):
        _effect("answer|%s|()" % sid)
        return sid * 2

    def flaky(self, sid):
        due = _flaky_due(str(sid))
        _effect("flaky|%s|()" % sid)
        if due:
            raise RuntimeError("flaky %s" % sid)
        return sid
"""
)

STEPS = ("s0", "s1", "s2")

scalars = st.one_of(
    st.integers(-1000, 1000),
    st.text(alphabet="abcxyz _-é", max_size=6),
)
values = st.one_of(
    scalars,
    st.tuples(scalars, scalars),
    st.dictionaries(st.text(alphabet="abc", min_size=1, max_size=3), st.integers(0, 9), max_size=3),
)


def _ind(lines: list[str], n: int) -> list[str]:
    return ["    " * n + ln for ln in lines]


@st.composite
def statement(draw: Any, sid: Any, depth: int = 0, once: set[str] | None = None) -> list[str]:
    """One statement of flow code (several lines); ``r`` is the result list.

    A signal round trip (a step sends the signal, ``wait_for`` takes it) appears at most once
    per program and never in a loop: a crash inside ``ask`` sends its signal again (steps are
    at-least-once), and a second wait would take the duplicate.
    """
    once = set() if once is None else once
    kinds = ["call", "call", "kw", "alias", "try", "capture", "helper", "comp", "sleep"]
    if depth == 0:
        kinds += ["loop", "if"]
        if "signal" not in once:
            kinds.append("signal")
    kind = draw(st.sampled_from(kinds))
    step = draw(st.sampled_from(STEPS))
    n = next(sid)
    if kind == "call":
        args = draw(st.lists(values, max_size=3))
        return [f"r.append(self.{step}({n}{''.join(', ' + repr(a) for a in args)}))"]
    if kind == "kw":
        v = draw(values)
        return [f"r.append(self.{step}({n}, k={v!r}))"]
    if kind == "alias":
        return [f"f = self.{step}", f"r.append(f({n}, {draw(values)!r}))"]
    if kind == "try":
        return [
            "try:",
            f"    self.boom({n}, {draw(values)!r})",
            "except ValueError as e:",
            "    r.append(str(e))",
        ]
    if kind == "capture":
        fn = draw(st.sampled_from(["random.random()", "time.time()"]))
        return [f"t = {fn}", f"r.append(self.cap({n}, t))"]
    if kind == "sleep":
        return [f"time.sleep({draw(st.sampled_from([0, 0.001, 0.01]))})", f"r.append(self.s0({n}))"]
    if kind == "signal":
        once.add("signal")
        return [f"self.ask({n})", "r.append(wait_for(self.answer, timeout=30))"]
    if kind == "helper":
        return [f"r.append(self._h({n}, {draw(values)!r}))"]
    if kind == "comp":
        k = draw(st.integers(0, 3))
        return [f"r.extend([self.{step}({n}, j) for j in range({k})])"]
    if kind == "loop":
        k = draw(st.integers(0, 3))
        body = draw(statement(sid, depth + 1, once))
        return [f"for i{n} in range({k}):", f"    r.append(self.{step}({n}, i{n}))", *_ind(body, 1)]
    # if-branch on an earlier result
    mod = draw(st.integers(2, 3))
    then = draw(statement(sid, depth + 1, once))
    other = draw(statement(sid, depth + 1, once))
    return [f"if len(repr(r)) % {mod} == 0:", *_ind(then, 1), "else:", *_ind(other, 1)]


@st.composite
def flow_programs(draw: Any, max_statements: int = 6) -> str:
    """Source of a module with class ``Flow`` whose ``run()`` is the flow entry."""
    sid = itertools.count(1)
    once: set[str] = set()
    body: list[str] = []
    for _ in range(draw(st.integers(1, max_statements))):
        body += draw(statement(sid, 0, once))
    helper_step = draw(st.sampled_from(STEPS))
    lines = [
        PRELUDE,
        "    def _h(self, sid, x):",
        f"        return [self.{helper_step}(sid, x), self.s2(sid + 10000, x)]",
        "",
        "    def run(self):",
        "        r = []",
        *_ind(body, 2),
        "        return r",
        "",
    ]
    return "\n".join(lines)


#: Fixed flows for the exhaustive sweep (every crash point, one crash each).
FIXED: dict[str, str] = {
    "linear": "\n".join(
        [
            PRELUDE,
            "    def run(self):",
            "        r = [self.s0(1, 'a'), self.s1(2, (1, 2)), self.s2(3, k=4)]",
            "        t = time.time()",
            "        r.append(self.cap(4, t))",
            "        return r",
            "",
        ]
    ),
    "branchy": "\n".join(
        [
            PRELUDE,
            "    def _h(self, sid, x):",
            "        return self.s2(sid, x)",
            "",
            "    def run(self):",
            "        r = []",
            "        for i in range(2):",
            "            r.append(self.s0(1, i))",
            "        try:",
            "            self.boom(2)",
            "        except ValueError as e:",
            "            r.append(str(e))",
            "        f = self.s1",
            "        if len(repr(r)) % 2 == 0:",
            "            r.append(f(3, {'x': 1}))",
            "        else:",
            "            r.append(self._h(4, 'y'))",
            "        r.extend([self.s0(5, j) for j in range(2)])",
            "        t = random.random()",
            "        r.append(self.cap(6, t))",
            "        return r",
            "",
        ]
    ),
    "timers": "\n".join(
        [
            PRELUDE,
            "    def run(self):",
            "        r = [self.s0(1)]",
            "        time.sleep(0.01)",
            "        r.append(self.ask(2))",
            "        r.append(wait_for(self.answer, timeout=30))",
            "        r.append(self.cap(3, time.time()))",
            "        try:",
            "            self.boom(4)",
            "        except ValueError as e:",
            "            r.append(str(e))",
            "        time.sleep(0)",
            "        return r + [self.s2(5, k=r[-1])]",
            "",
        ]
    ),
    # The flow's retry policy: flaky() fails once and is retried at once, in the same run.
    "retry": "\n".join(
        [
            PRELUDE.replace(
                '__flow__ = "run"', '__flow__ = {"entries": ("run",), "retries": 2, "backoff": 0.0}'
            ),
            "    def run(self):",
            "        return [self.s0(1), self.flaky(2), self.s1(3, 'x')]",
            "",
        ]
    ),
    "flaky": "\n".join(
        [
            PRELUDE,
            "    def run(self):",
            "        r = [self.s0(1, 'a')]",
            "        r.append(self.flaky(2))",
            "        r.append(self.s1(3))",
            "        return r",
            "",
        ]
    ),
}
