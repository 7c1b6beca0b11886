"""A journaled flow behaves like plain Python, or refuses loudly: caught exceptions replay as they
were caught, steps called from other threads are refused, captured names stay captured."""

from __future__ import annotations

import pytest

import transparent_de

SOURCE = """
import threading, time, random
import transparent_de

SEEN = []          # what flow code saw, on every run (flow-level code runs again on a replay)
FAIL_LATER = [True]


class Coded(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class HttpError(Exception):
    def __init__(self, status):
        super().__init__(f"status {status}")
        self.status = status
        self.lock = threading.Lock()  # an attribute that cannot be pickled


class Gone(BaseException):
    pass


def describe(e):
    chain = []
    c = e
    while c is not None:
        chain.append((type(c).__name__, c.args))
        c = c.__cause__ or c.__context__
    return (type(e).__name__, str(e), e.args, sorted(k for k in vars(e) if k != "lock"),
            getattr(e, "__notes__", None), chain, e.__suppress_context__)


class Catcher:
    __flow__ = "run"

    def run(self):
        out = []
        for step in (self.coded, self.chained, self.noted, self.http, self.gone):
            try:
                step()
            except HttpError as e:  # the type must survive, or this clause would not match
                SEEN.append(describe(e))
                out.append(self.echo(_serialization_fp(e)))
            except BaseException as e:
                SEEN.append(describe(e))
                out.append(self.echo(_serialization_fp(e)))
        self.later()
        return out

    def coded(self):
        raise Coded(404, "not found")

    def chained(self):
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise ValueError("outer") from inner

    def noted(self):
        e = RuntimeError("with a note")
        e.add_note("look here") if hasattr(e, "add_note") else None
        raise e

    def http(self):
        raise HttpError(503)

    def gone(self):
        raise Gone("a BaseException the flow catches")

    def echo(self, fp):
        return fp

    def later(self):
        if FAIL_LATER[0]:
            raise OSError("the first run fails here, after catching everything")
        return None


def _serialization_fp(e):
    from transparent_de._serialization import fingerprint
    return fingerprint(e)


class Clocky:
    __flow__ = "run"

    def run(self):
        return [self.time(), time.time(), self.sleep(), random.random()]

    def time(self):          # a step named like a captured function
        return "step-time"

    def sleep(self):
        return "step-sleep"


class Threaded:
    __flow__ = "run"

    def run(self, how):
        if how == "executor":
            with __import__("concurrent.futures").futures.ThreadPoolExecutor(1) as pool:
                return pool.submit(lambda: self.work(1)).result()
        if how == "thread":
            box = []
            t = threading.Thread(target=lambda: box.append(self._helper()))
            t.start(); t.join()
            return self.work(2)
        return self.work(3)

    def _helper(self):
        try:
            return self.work(9)
        except Exception as e:
            return repr(e)

    def work(self, x):
        return x * 10


class Keyword:
    __flow__ = "run"

    def run(self):
        return self.step(obj=1, self_=2)

    def step(self, obj, self_):
        return obj + self_
"""


def test_a_caught_step_exception_replays_exactly_as_it_was_caught(engine, flow_module):
    m = flow_module(SOURCE)
    with pytest.raises(OSError):
        transparent_de.run(m.Catcher().run, flow_id="catch")
    live = list(m.SEEN)
    m.SEEN.clear()
    m.FAIL_LATER[0] = False
    replayed_result = transparent_de.run(m.Catcher().run, flow_id="catch")
    assert live == m.SEEN  # type, message, args, attributes, notes, chain: identical
    assert live[0][0] == "Coded" and live[0][3] == ["code"]  # __init__ with other args: rebuilt
    assert live[3][0] == "HttpError"  # an unpicklable attribute: the type still matches
    assert live[4][0] == "Gone"  # a BaseException the flow caught is an outcome too
    assert live[1][5] == [("ValueError", ("outer",)), ("KeyError", ("inner",))]
    # The fingerprints the flow passed to echo() are the same, so the replay matched its steps.
    steps = [s for s in engine.steps("catch") if s.method_name == "echo"]
    assert len(steps) == 5 and all(s.attempts == 1 for s in steps)
    assert len(replayed_result) == 5


def test_captured_functions_stay_captured_next_to_steps_with_their_names(engine, flow_module):
    m = flow_module(SOURCE)
    first = transparent_de.run(m.Clocky().run, flow_id="clk")
    assert first[0] == "step-time" and first[2] == "step-sleep" and isinstance(first[1], float)
    kinds = [(s.kind, s.method_name) for s in engine.steps("clk")][1:]
    assert kinds == [("step", "time"), ("capture", "time"), ("step", "sleep"), ("capture", "random")]


@pytest.mark.parametrize("how", ["executor", "thread"])
def test_a_step_called_from_another_thread_fails_the_flow(engine, flow_module, how):
    m = flow_module(SOURCE)
    with pytest.raises(transparent_de.TransparentDEError, match="another thread"):
        transparent_de.run(m.Threaded().run, how, flow_id=f"th-{how}")
    status = engine.store.status(f"th-{how}")
    assert status == "PENDING"  # not COMPLETE without the step
    assert transparent_de.run(m.Threaded().run, "inline", flow_id="th-ok") == 30


def test_a_keyword_named_obj_reaches_the_step(engine, flow_module):
    m = flow_module(SOURCE)
    assert transparent_de.run(m.Keyword().run, flow_id="kw") == 3
    assert m.Keyword().step(obj=1, self_=2) == 3  # and outside a flow


PARKING = """
import time
import transparent_de

EVENTS = []


class Guard:
    def __enter__(self):
        EVENTS.append("enter")
        return self

    def __exit__(self, *exc):
        EVENTS.append("exit")
        return False


class Booking:
    __flow__ = "run"

    def run(self, how):
        self.reserve()
        if how == "finally":
            try:
                time.sleep(0.6)
            finally:
                EVENTS.append("release")  # plain Python runs this once, after the sleep
        elif how == "with":
            with Guard():
                time.sleep(0.6)
        elif how == "except-valueerror":
            try:
                time.sleep(0.6)
            except ValueError:
                EVENTS.append("never")
        else:
            time.sleep(0.6)
        return self.charge()

    def reserve(self):
        return "r"

    def confirm(self, x):
        return x

    def charge(self):
        EVENTS.append("charge")
        return "c"
"""


@pytest.mark.parametrize(
    ("how", "parks", "events"),
    [
        ("finally", False, ["release", "charge"]),
        ("with", False, ["enter", "exit", "charge"]),
        ("except-valueerror", True, ["charge"]),
        ("plain", True, ["charge"]),
    ],
)
def test_parking_never_runs_the_flows_cleanup_code(engine, flow_module, how, parks, events):
    """A background flow parks (unwinds, releasing its thread) only where unwinding would run no
    code of the flow; around a finally or a with it waits in its thread, as plain Python would."""
    m = flow_module(PARKING)
    handle = transparent_de.start(m.Booking().run, how, flow_id=f"park-{how}")
    assert handle.result(timeout=20) == "c"
    assert events == m.EVENTS  # each cleanup ran once, where the plain program runs it
    claims = engine.steps(f"park-{how}")[0].attempts  # start() + the run's claim: 2; a resume: 3
    assert claims == (3 if parks else 2)


STATE = """
import random, threading, time

class Setup:
    __flow__ = "run"

    def __init__(self):
        self.lock = threading.Lock()  # this object cannot be pickled

    def run(self, how):
        if how == "self":
            return self.configure().finish()
        if how == "mutate":
            items = []
            self.fill(items)
            return items
        if how == "entropy":
            return [random.gammavariate(2.0, 1.0), random.betavariate(2, 3), time.process_time()]
        if how == "system":
            return random.SystemRandom().random()
        if how == "sleep-neg":
            time.sleep(-1)
        if how == "sleep-str":
            time.sleep("1")
        return None

    def configure(self):
        return self

    def finish(self):
        return "done"

    def fill(self, items):
        items.append(1)
        return len(items)
"""


def test_replay_losses_are_refused_or_said(engine, flow_module, caplog):
    import logging

    m = flow_module(STATE)
    caplog.set_level(logging.WARNING, logger="transparent_de")
    with pytest.raises(transparent_de.TransparentDEError, match="returned the flow object itself"):
        transparent_de.run(m.Setup().run, "self", flow_id="st-self")
    assert transparent_de.run(m.Setup().run, "mutate", flow_id="st-mut") == [1]
    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot be pickled" in t and "Setup()" in t for t in messages)  # rebuilt with cls() on recover
    assert any("changed its arguments" in t and "fill" in t for t in messages)
    with pytest.raises(transparent_de.TransparentDEError, match="SystemRandom"):
        transparent_de.run(m.Setup().run, "system", flow_id="st-sys")


def test_more_entropy_is_captured_and_sleep_arguments_are_checked(engine, flow_module):
    m = flow_module(STATE)
    first = transparent_de.run(m.Setup().run, "entropy", flow_id="st-ent")
    kinds = [(s.kind, s.method_name) for s in engine.steps("st-ent")][1:]
    assert kinds == [("capture", "gammavariate"), ("capture", "betavariate"), ("capture", "process_time")]
    assert transparent_de.run(m.Setup().run, "entropy", flow_id="st-ent") == first
    with pytest.raises(ValueError, match="non-negative"):
        transparent_de.run(m.Setup().run, "sleep-neg", flow_id="st-neg")
    with pytest.raises(TypeError, match="'str' object cannot be interpreted"):
        transparent_de.run(m.Setup().run, "sleep-str", flow_id="st-str")


BOUND = """
import inspect

class Hooks:
    __flow__ = "run"

    def run(self, x):
        handlers = [self.double, self.square]
        handlers.remove(self.double)  # equality of `self.step` values, as for bound methods
        seen = {
            "eq": self.double == self.double and self.double != self.square,
            "set": len({self.double, self.double, self.square}),
            "hash": hash(self.double) == hash(self.double),
            "signature": str(inspect.signature(self.double)),
            "in": self.square in handlers,
        }
        return [seen, [h(x) for h in handlers], self.double(x)]

    def double(self, v, times=2):
        return v * times

    def square(self, v):
        return v * v
"""


def test_a_step_as_a_value_compares_hashes_and_introspects_like_a_bound_method(engine, flow_module):
    m = flow_module(BOUND)
    plain = {"eq": True, "set": 2, "hash": True, "signature": "(v, times=2)", "in": True}
    assert engine.run(m.Hooks().run, 3, flow_id="b") == [plain, [9], 6]
    names = [s.method_name for s in engine.steps("b")]
    assert names.count("square") == 1 and names.count("double") == 1, names  # both journaled


SETS = """
PLAIN = list({10, 1, 100_000, 33})  # int hashes are the same in every process: left alone

class Sets:
    __flow__ = "run"

    def run(self, words):
        seen = [w for w in words]
        ints = [i for i in {10, 1, 100_000, 33}]
        return [seen, ints == PLAIN, self.inside(words)]

    def inside(self, words):
        return sorted(words) == [w for w in sorted(words)]  # a step body iterates as plain Python does
"""


def test_sets_iterate_in_one_canonical_order_in_flow_code(engine, flow_module):
    from transparent_de._trampoline import canonical_iteration

    m = flow_module(SETS)
    words = {"pear", "apple", "fig", "kiwi"}
    assert engine.run(m.Sets().run, words, flow_id="s") == [["apple", "fig", "kiwi", "pear"], True, True]
    assert canonical_iteration(words) is words  # outside a flow: untouched
    assert canonical_iteration([3, 1]) == [3, 1]  # not a set: untouched everywhere


BASE = """
class Base:
    def _names(self, words):
        return [w for w in words]
"""

DERIVED = """
from {pkg}.base import Base

class Derived(Base):
    __flow__ = "run"

    def run(self, words):
        return [self._names(words), [w for w in words]]
"""


def test_code_inherited_from_another_module_is_not_rewritten_for_its_loops(engine, flow_module):
    base = flow_module(BASE, name="base")
    before = base.Base._names.__code__
    m = flow_module(DERIVED.format(pkg=base.__name__.rsplit(".", 1)[0]))
    words = {"pear", "apple", "fig"}
    names, own = engine.run(m.Derived().run, words, flow_id="inh")
    assert own == ["apple", "fig", "pear"]  # the flow's own module: canonical order
    assert sorted(names) == own and base.Base._names.__code__ is before  # the other module: untouched
