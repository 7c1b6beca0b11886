"""End-to-end basics: journaled steps, replay, memoized results, retries like the seed."""

from __future__ import annotations

import pytest
from helpers import query

import transparent_de
from transparent_de.errors import FlowNotRewrittenError, NonDeterminismError

SOURCE = """
CALLS = []
FAIL = {}

class Hello:
    __flow__ = "say_hello"

    def say_hello(self, n=5):
        total = 0
        for i in range(n):
            total += self.say("World", i)
        return total

    def say(self, who, i):
        CALLS.append(i)
        if FAIL.get(i, 0) > 0:
            FAIL[i] -= 1
            raise RuntimeError(f"Uh oh {i}")
        return i
"""


def rows(engine, flow_id):
    return query(
        engine,
        "SELECT step, method_name, status, attempts FROM execution_log WHERE flow_id=? ORDER BY step",
        (flow_id,),
    )


def test_steps_are_journaled_and_replayed(engine, flow_module):
    m = flow_module(SOURCE)
    assert transparent_de.run(m.Hello().say_hello, flow_id="f1") == 10
    assert m.CALLS == [0, 1, 2, 3, 4]
    assert [r[:3] for r in rows(engine, "f1")] == [(0, "say_hello", "COMPLETE")] + [
        (i + 1, "say", "COMPLETE") for i in range(5)
    ]
    m.CALLS.clear()
    assert transparent_de.run(m.Hello().say_hello, flow_id="f1") == 10  # memoized
    assert m.CALLS == []


def test_failed_step_is_retried_on_rerun_with_exact_attempts(engine, flow_module):
    """The seed's test: a step failing on three runs then succeeding ends with attempts = 4."""
    m = flow_module(SOURCE)
    m.FAIL[2] = 3
    for _ in range(3):
        with pytest.raises(RuntimeError, match="Uh oh 2"):
            transparent_de.run(m.Hello().say_hello, flow_id="f2")
    m.CALLS.clear()
    assert transparent_de.run(m.Hello().say_hello, flow_id="f2") == 10
    assert m.CALLS == [2, 3, 4]  # 0 and 1 replayed, 2 retried, then the rest
    attempts = {step: a for step, _, _, a in rows(engine, "f2")}
    assert attempts[3] == 4 and attempts[1] == attempts[2] == attempts[4] == 1


def test_direct_call_is_a_durable_flow(engine, flow_module):
    m = flow_module(SOURCE)
    assert m.Hello().say_hello(3) == 3
    (flow,) = engine.flows()
    assert flow.status == "COMPLETE" and flow.steps == 3


def test_steps_called_from_outside_run_plainly(engine, flow_module):
    m = flow_module(SOURCE)
    assert m.Hello().say("x", 7) == 7  # say is not an entry: a plain call
    assert engine.flows() == []


def test_changed_flow_code_is_detected(engine, flow_module):
    m = flow_module(SOURCE)
    m.FAIL[1] = 1
    with pytest.raises(RuntimeError):
        transparent_de.run(m.Hello().say_hello, 3, flow_id="f3")
    with pytest.raises(NonDeterminismError, match="step 0"):
        transparent_de.run(m.Hello().say_hello, 4, flow_id="f3")


def test_unrewritten_flow_class_is_refused(engine):
    class NotRewritten:
        __flow__ = True

        def run(self):
            return 1

    with pytest.raises(FlowNotRewrittenError, match="NotRewritten"):
        transparent_de.run(NotRewritten().run)


def test_a_child_flow_given_a_list_is_checked_against_its_own_entry(engine, flow_module, caplog):
    """Regression: the argument-mutation check of a child flow's step looked the child's entry
    up on the parent's class (AttributeError when the parent has no such method)."""
    m = flow_module(
        """
        class Parent:
            __flow__ = "run"

            def run(self, items):
                return Child().total(items), Child().grow(items)

        class Child:
            __flow__ = ("total", "grow")

            def total(self, items):
                return self.add(items)

            def add(self, items):
                return sum(items)

            def grow(self, items):
                items.append(99)  # flow-level code changing its argument: the check sees it
                return len(items)
        """
    )
    with caplog.at_level("WARNING", logger="transparent_de"):
        assert transparent_de.run(m.Parent().run, [1, 2], flow_id="kids") == (3, 3)
    warned = [r.getMessage() for r in caplog.records if "changed its arguments" in r.getMessage()]
    assert len(warned) == 1 and "step grow" in warned[0], warned
