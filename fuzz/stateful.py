"""Several flows, several worker processes, crashes, signals and a clock, as a state machine.

Each rule forks real processes over one journal file: ``start`` a flow, run two ``worker``
processes at once (each may be killed at a random crash point), ``signal`` a waiting flow,
``advance`` the clock past the flows' durable sleeps. After every rule the parent (holding
no connection while it forks) checks that the journal passes ``integrity_check``, that no
started flow is lost and that no step ran more often than the crashes allow; at the end every
flow is driven to completion and its result compared with plain Python's.
"""

from __future__ import annotations

import collections
import os
import pickle
import shutil
import sqlite3
import tempfile
import time
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import transparent_de
from fuzz import harness, programs
from fuzz.harness import STATS, PropertyFailure
from transparent_de import _faults

SOURCE = (
    """
import os
import time

from transparent_de import wait_for

EFFECTS = None
HOLD = None  # a path: reserve() waits while it exists (to hold a flow inside a step)


"""
    + programs.EFFECT_HELPER
    + """


class Order:
    __flow__ = "run"

    def __init__(self, n):
        self.n = n

    def run(self):
        stock = self.reserve(self.n)
        time.sleep(0.05)
        approved = wait_for(self.approve, timeout=600)
        paid = self.charge(stock, approved)
        return [stock, approved, paid, self.ship(paid)]

    def reserve(self, n):
        _effect("reserve|%d" % n)
        while HOLD is not None and os.path.exists(HOLD):
            time.sleep(0.005)
        return n * 10

    def approve(self, value):
        _effect("approve|%d" % self.n)
        return value

    def charge(self, stock, approved):
        _effect("charge|%d" % self.n)
        return stock + approved

    def ship(self, paid):
        _effect("ship|%d" % self.n)
        return "shipped %d" % paid
"""
)

STEPS = ("reserve", "approve", "charge", "ship")


def expected(n: int, value: int) -> list[Any]:
    """The flow as plain Python: the oracle."""
    stock = n * 10
    paid = stock + value
    return [stock, value, paid, f"shipped {paid}"]


def _engine(db: str) -> transparent_de.Engine:
    return transparent_de.Engine(database=db, durability="process", park_after=0.0, poll_interval=0.01)


def _fork(fn: Any, crash_at: int | None = None) -> int:
    """Run ``fn()`` in a child, killed (``os._exit``) at hit ``crash_at`` of the crash points."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            plan = _faults.FaultPlan(at=crash_at)
            _faults.install(plan)
            fn()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _wait(pids: list[int]) -> list[int]:
    codes = []
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        codes.append(os.waitstatus_to_exitcode(status))
    return codes


class Flows(RuleBasedStateMachine):
    """The model: which flows were started, which got their signal, how many kills there were."""

    def __init__(self) -> None:
        super().__init__()
        self.workdir = tempfile.mkdtemp(prefix="tdestate-")
        self.db = os.path.join(self.workdir, "journal.db")
        self.module = harness.load_module(SOURCE, self.workdir)
        self.effects = os.path.join(self.workdir, "effects")
        self.module.EFFECTS = self.effects  # type: ignore[attr-defined]
        self.started: set[int] = set()
        self.signalled: dict[int, int] = {}
        self.kills = 0

    # -------------------------------------------------------------- rules

    @rule(n=st.integers(0, 5))
    def start(self, n: int) -> None:
        if n in self.started:
            return
        module, db = self.module, self.db

        def go() -> None:
            with _engine(db) as engine:
                engine.start(module.Order(n).run, flow_id=f"order-{n}")
                engine.worker(until_idle=True)

        if _wait([_fork(go)]) != [0]:
            raise PropertyFailure(f"starting order-{n} failed")
        self.started.add(n)
        STATS.flows += 1

    @precondition(lambda self: self.started)
    @rule(crash1=st.none() | st.integers(1, 12), crash2=st.none() | st.integers(1, 12))
    def workers(self, crash1: int | None, crash2: int | None) -> None:
        """Two worker processes at once; each may be killed at a crash point."""
        db = self.db

        def work() -> None:
            with _engine(db) as engine:
                engine.worker(until_idle=True)

        codes = _wait([_fork(work, crash1), _fork(work, crash2)])
        for code in codes:
            if code == _faults.CRASH_EXIT_CODE:
                self.kills += 1
                STATS.crashes += 1
            elif code != 0:
                raise PropertyFailure(f"a worker died unexpectedly (exit {code})")

    @precondition(lambda self: self.started - set(self.signalled))
    @rule(data=st.data(), value=st.integers(0, 99))
    def signal(self, data: Any, value: int) -> None:
        n = data.draw(st.sampled_from(sorted(self.started - set(self.signalled))))
        db = self.db

        def send() -> None:
            with _engine(db) as engine:
                engine.signal(f"order-{n}", "approve", value)

        if _wait([_fork(send)]) != [0]:
            raise PropertyFailure(f"signalling order-{n} failed")
        self.signalled[n] = value

    @rule()
    def advance(self) -> None:
        """Let the clock pass the flows' durable sleeps."""
        time.sleep(0.06)

    # -------------------------------------------------------------- invariants

    @invariant()
    def journal_is_sound(self) -> None:
        if not os.path.exists(self.db):
            return
        con = sqlite3.connect(self.db)
        try:
            ok = con.execute("PRAGMA integrity_check").fetchone()[0]
            flows = {f for (f,) in con.execute("SELECT flow_id FROM flows")}
        finally:
            con.close()
        if ok != "ok":
            STATS.corrupt_journals += 1
            raise PropertyFailure(f"integrity_check: {ok}")
        lost = {f"order-{n}" for n in self.started} - flows
        if lost:
            STATS.lost_flows += len(lost)
            raise PropertyFailure(f"started flows missing from the journal: {sorted(lost)}")
        counts = collections.Counter(harness._effects(self.effects))
        for key, c in counts.items():
            if c > 1 + self.kills:
                STATS.duplicate_effects += 1
                raise PropertyFailure(f"step {key} ran {c} times with only {self.kills} kills")

    def teardown(self) -> None:
        try:
            if self.started:
                self._finish()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _finish(self) -> None:
        """Signal the rest, run workers until every flow is done, compare with the oracle."""
        db, module = self.db, self.module
        values = dict(self.signalled)
        pending = sorted(self.started - set(values))
        out = os.path.join(self.workdir, "results.pickle")

        def finish() -> None:
            with _engine(db) as engine:
                for n in pending:
                    engine.signal(f"order-{n}", "approve", 7)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    engine.worker(until_idle=True)
                    if all(f.status == "COMPLETE" for f in engine.flows()):
                        break
                    time.sleep(0.02)
                results = {
                    f.flow_id: (
                        f.status,
                        engine.run(module.Order(int(f.flow_id[6:])).run, flow_id=f.flow_id)
                        if f.status == "COMPLETE"
                        else None,
                    )
                    for f in engine.flows()
                }
            with open(out, "wb") as fh:
                pickle.dump(results, fh)

        if _wait([_fork(finish)]) != [0]:
            raise PropertyFailure("finishing the flows failed")
        for n in pending:
            values[n] = 7
        with open(out, "rb") as fh:
            results = pickle.load(fh)
        for n in self.started:
            status, value = results.get(f"order-{n}", ("missing", None))
            if status != "COMPLETE":
                STATS.lost_flows += 1
                raise PropertyFailure(f"order-{n} ended {status}, not COMPLETE")
            if value != expected(n, values[n]):
                STATS.divergences += 1
                raise PropertyFailure(f"order-{n}: result {value!r}, oracle {expected(n, values[n])!r}")
        counts = collections.Counter(harness._effects(self.effects))
        for n in self.started:
            for step in STEPS:
                c = counts[f"{step}|{n}"]
                if not 1 <= c <= 1 + self.kills:
                    STATS.duplicate_effects += c > 1 + self.kills
                    raise PropertyFailure(f"step {step} of order-{n} ran {c} times ({self.kills} kills)")


def live_owner_check() -> None:
    """A second worker must leave alone a flow that a live process is running a step of."""
    workdir = tempfile.mkdtemp(prefix="tdeowner-")
    try:
        module = harness.load_module(SOURCE, workdir)
        db = os.path.join(workdir, "journal.db")
        effects = os.path.join(workdir, "effects")
        hold = os.path.join(workdir, "hold")
        module.EFFECTS, module.HOLD = effects, hold  # type: ignore[attr-defined]
        open(hold, "w").close()

        def owner() -> None:
            with _engine(db) as engine:
                engine.start(module.Order(9).run, flow_id="order-9")
                engine.signal("order-9", "approve", 1)
                engine.worker(until_idle=True)

        def other() -> None:
            with _engine(db) as engine:
                engine.worker(until_idle=True)

        a = _fork(owner)
        deadline = time.monotonic() + 30
        while "reserve|9" not in harness._effects(effects) and time.monotonic() < deadline:
            time.sleep(0.005)
        b = _fork(other)
        # A correct engine leaves the flow alone and this worker exits at once; a broken one
        # steals it and blocks in the held step too, so release the hold after a while.
        b_code: list[int] | None = None
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            pid, status = os.waitpid(b, os.WNOHANG)
            if pid:
                b_code = [os.waitstatus_to_exitcode(status)]
                break
            time.sleep(0.01)
        os.unlink(hold)
        if b_code is None:
            b_code = _wait([b])
        a_code = _wait([a])
        if a_code + b_code != [0, 0]:
            raise PropertyFailure(f"owner/other workers exited {a_code + b_code}")
        runs = collections.Counter(harness._effects(effects))["reserve|9"]
        if runs != 1:
            STATS.duplicate_effects += 1
            raise PropertyFailure(f"a step of a flow owned by a live process ran {runs} times")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
