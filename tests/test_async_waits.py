"""Async flows that wait (issue #16): signals, parking, and races whose outcome is replayed.

Real event loops, real journals, replays in fresh interpreters. A replay must return what the
live run returned and execute no step, even where the live run's outcome was decided by timing
(a replay finishes every replayed step at once, so an unrecorded race goes another way).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import query

import transparent_de
from transparent_de.errors import WaitTimeoutError

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX only")

FLOWS = """
import asyncio

import transparent_de
from transparent_de import wait_for

CALLS = []


class Waits:
    __flow__ = (
        "approval", "timed", "noted", "sleeper", "busy_sleeper", "guarded", "race", "ordered", "deadline",
        "plain",
    )

    def plain(self):
        return self.note("sync")

    async def approval(self, x):
        prepared = await self.prepare(x)
        decision = await wait_for(self.approve, timeout=30)
        return prepared, decision, await self.finish(decision)

    async def timed(self, seconds):
        try:
            got = await wait_for(self.approve, timeout=seconds)
        except transparent_de.errors.WaitTimeoutError:
            got = "timed out"
        return await self.finish(got)

    async def noted(self):
        return await wait_for(self.note)  # a sync step, signalled

    async def sleeper(self, seconds):
        before = await self.prepare("sleep")
        await asyncio.sleep(seconds)
        return before, await self.finish("woke")

    async def busy_sleeper(self, seconds):  # another task of the flow is alive while it sleeps
        return await asyncio.gather(self._nap(seconds), self.prepare("side"))

    async def _nap(self, seconds):
        await asyncio.sleep(seconds)
        return await self.finish("napped")

    async def guarded(self, seconds):  # parking would run the finally: it waits in place
        try:
            await asyncio.sleep(seconds)
        finally:
            CALLS.append("finally")
        return await self.finish("guarded")

    async def race(self):
        a = asyncio.create_task(self.fetch("a", 0.01))
        b = asyncio.create_task(self.fetch("b", 0.3))
        done, pending = await asyncio.wait([a, b], return_when=asyncio.FIRST_COMPLETED)
        return sorted(t.result() for t in done), sorted([await t for t in pending])

    async def ordered(self):
        tasks = [asyncio.create_task(self.fetch(k, d)) for k, d in (("x", 0.3), ("y", 0.01), ("z", 0.15))]
        return [await c for c in asyncio.as_completed(tasks)]

    async def deadline(self):
        try:
            got = await asyncio.wait_for(self.fetch("slow", 0.5), timeout=0.05)
        except asyncio.TimeoutError:
            got = "timeout"
        return got, await asyncio.wait_for(self.fetch("fast", 0), timeout=5)

    async def fetch(self, label, seconds):
        CALLS.append(label)
        await asyncio.sleep(seconds)  # in a step body: a plain sleep
        return label

    async def prepare(self, x):
        CALLS.append(f"prepare:{x}")
        return f"prepared {x}"

    async def approve(self, decision):
        CALLS.append(f"approve:{decision}")
        return decision

    def note(self, text):
        CALLS.append(f"note:{text}")
        return text.upper()

    async def finish(self, value):
        CALLS.append(f"finish:{value}")
        return f"done {value}"
"""

DRIVER = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
import transparent_de
transparent_de.install(sys.argv[2].partition(".")[0])
m = importlib.import_module(sys.argv[2])
eng = transparent_de.configure(database=sys.argv[3], durability="process", poll_interval=0.02, park_after=0.2)
out = transparent_de.run(getattr(m.Waits(), sys.argv[4]), *json.loads(sys.argv[6]), flow_id=sys.argv[5])
print(json.dumps({"result": out, "calls": m.CALLS}))
eng.close()
"""


@pytest.fixture
def waits(flow_module: Any, tmp_path: Path) -> Any:
    m = flow_module(FLOWS)
    (tmp_path / "driver.py").write_text(textwrap.dedent(DRIVER))
    return m


def normal(value: Any) -> Any:
    return json.loads(json.dumps(value))


def replay_fresh(m: Any, tmp: Path, db: str, entry: str, fid: str, *args: Any) -> Any:
    """Reopen the finished flow (as a crash before its last commit leaves it) and run it again in
    a fresh interpreter: its JSON output."""
    query(db, "UPDATE flows SET status='PENDING', owner=NULL, lease_until=NULL WHERE flow_id=?", (fid,))
    query(db, "UPDATE execution_log SET status='PENDING', return_value=NULL WHERE flow_id=? AND step=0", (fid,))
    p = subprocess.run(
        [sys.executable, str(tmp / "driver.py"), str(tmp / "src"), m.__name__, db, entry, fid, json.dumps(args)],
        env={k: v for k, v in os.environ.items() if k != "TRANSPARENT_DE_HMAC_KEY"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def race_rows(db: str, fid: str) -> list[tuple[str, str]]:
    return [
        (str(r[0]), str(r[1]))
        for r in query(
            db,
            "SELECT method_name, lineage FROM execution_log WHERE flow_id=? AND class_name='asyncio' "
            "AND method_name != 'sleep' ORDER BY step",
            (fid,),
        )
    ]


def parked(engine: Any, fid: str) -> bool:
    (flow,) = [f for f in engine.flows() if f.flow_id == fid]
    return flow.owner is None and (flow.wake_at is not None or flow.status == "WAITING_FOR_SIGNAL")


def until(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


# --------------------------------------------------------------------------- signals


def test_wait_for_a_signal_in_an_async_flow(waits: Any, engine: Any, tmp_path: Path) -> None:
    timer = threading.Timer(0.3, transparent_de.signal, args=("ap1", "approve", "yes"))
    timer.start()
    assert transparent_de.run(waits.Waits().approval, "doc", flow_id="ap1") == (
        "prepared doc",
        "yes",
        "done yes",
    )
    assert waits.CALLS == ["prepare:doc", "approve:yes", "finish:yes"]
    out = replay_fresh(waits, tmp_path, engine.database, "approval", "ap1", "doc")
    assert out == {"result": ["prepared doc", "yes", "done yes"], "calls": []}


def test_a_signalled_sync_step_and_a_timeout_are_journaled(waits: Any, engine: Any, tmp_path: Path) -> None:
    threading.Timer(0.2, transparent_de.signal, args=("n1", "note", "hello")).start()
    assert transparent_de.run(waits.Waits().noted, flow_id="n1") == "HELLO"
    t0 = time.monotonic()
    assert transparent_de.run(waits.Waits().timed, 0.2, flow_id="t1") == "done timed out"
    assert 0.18 <= time.monotonic() - t0 < 3
    (row,) = query(engine, "SELECT status FROM execution_log WHERE flow_id='t1' AND method_name='approve'")
    assert row[0] == "FAILED"  # the timeout is the step's journaled outcome
    with pytest.raises(transparent_de.SignalError):
        transparent_de.signal("t1", "approve", "late")  # the flow is COMPLETE
    out = replay_fresh(waits, tmp_path, engine.database, "timed", "t1", 0.2)
    assert out == {"result": "done timed out", "calls": []}  # replayed: no wait, no step
    assert WaitTimeoutError.__name__ in str(
        query(engine, "SELECT error_text FROM execution_log WHERE flow_id='t1' AND method_name='approve'")
    )


# --------------------------------------------------------------------------- parking


def test_a_background_async_flow_parks_on_a_long_sleep(waits: Any, engine: Any) -> None:
    h = transparent_de.start(waits.Waits().sleeper, 1.0, flow_id="p1")
    assert until(lambda: parked(engine, "p1")), "the sleeping flow did not park"
    assert h.result(timeout=20) == ("prepared sleep", "done woke")
    assert waits.CALLS == ["prepare:sleep", "finish:woke"]  # the step before the sleep ran once


def test_a_background_async_flow_parks_on_a_signal_wait(waits: Any, engine: Any) -> None:
    h = transparent_de.start(waits.Waits().approval, "bg", flow_id="p2")
    assert until(lambda: parked(engine, "p2")), "the waiting flow did not park"
    assert h.status() == "WAITING_FOR_SIGNAL"
    transparent_de.signal("p2", "approve", "ok")
    assert h.result(timeout=20) == ("prepared bg", "ok", "done ok")
    assert waits.CALLS == ["prepare:bg", "approve:ok", "finish:ok"]


@pytest.mark.parametrize("entry", ["busy_sleeper", "guarded"])
def test_no_park_where_unwinding_would_run_flow_code(waits: Any, engine: Any, entry: str) -> None:
    """A sibling task alive (it would be cancelled) or a finally around the sleep: waits in place."""
    h = transparent_de.start(getattr(waits.Waits(), entry), 0.8, flow_id=entry)
    time.sleep(0.5)
    assert not parked(engine, entry)
    result = normal(h.result(timeout=20))
    assert result == (["done napped", "prepared side"] if entry == "busy_sleeper" else "done guarded")
    assert waits.CALLS.count("finally") == (entry == "guarded")


# --------------------------------------------------------------------------- races, replayed


def test_asyncio_wait_first_completed_replays_the_live_outcome(waits: Any, engine: Any, tmp_path: Path) -> None:
    assert transparent_de.run(waits.Waits().race, flow_id="r1") == (["a"], ["b"])
    assert race_rows(engine.database, "r1") == [("wait", "0:3")]  # after the two steps' slots
    out = replay_fresh(waits, tmp_path, engine.database, "race", "r1")
    # Replayed steps finish at once: unrecorded, the wait would see both done.
    assert out == {"result": [["a"], ["b"]], "calls": []}


def test_as_completed_replays_the_live_order(waits: Any, engine: Any, tmp_path: Path) -> None:
    assert transparent_de.run(waits.Waits().ordered, flow_id="o1") == ["y", "z", "x"]
    assert [m for m, _ in race_rows(engine.database, "o1")] == ["as_completed"] * 3
    out = replay_fresh(waits, tmp_path, engine.database, "ordered", "o1")
    assert out == {"result": ["y", "z", "x"], "calls": []}


def test_wait_for_timeout_replays_as_a_timeout(waits: Any, engine: Any, tmp_path: Path) -> None:
    assert transparent_de.run(waits.Waits().deadline, flow_id="d1") == ("timeout", "fast")
    assert [m for m, _ in race_rows(engine.database, "d1")] == ["wait_for", "wait_for"]
    out = replay_fresh(waits, tmp_path, engine.database, "deadline", "d1")
    # The slow step's row was left PENDING by the timeout's cancellation; the replay cancels it
    # before it runs, as the live run decided, instead of running it again.
    assert out == {"result": ["timeout", "fast"], "calls": []}


def test_races_behave_as_plain_asyncio(waits: Any, engine: Any) -> None:
    import asyncio

    for entry in ("race", "ordered", "deadline"):
        waits.CALLS.clear()
        expected = asyncio.run(getattr(waits.Waits, entry).__tde_entry__(waits.Waits()))
        plain_calls = sorted(waits.CALLS)
        waits.CALLS.clear()
        assert transparent_de.run(getattr(waits.Waits(), entry), flow_id=f"plain-{entry}") == expected
        assert sorted(waits.CALLS) == plain_calls


# --------------------------------------------------------------------------- start_async


def test_start_async_returns_a_handle_whose_result_is_awaited(waits: Any, engine: Any) -> None:
    import asyncio

    async def main() -> Any:
        quick = await transparent_de.start_async(waits.Waits().race, flow_id="sa1")
        assert quick.id == "sa1" and engine.store.status("sa1") is not None  # exists at once
        sleepy = await transparent_de.start_async(waits.Waits().sleeper, 0.8, flow_id="sa2")
        first = await quick.result(timeout=20)
        assert until(lambda: parked(engine, "sa2"))  # its task ended; the engine resumes it
        assert sleepy.task.done()
        second = await sleepy.result(timeout=20)
        again = await transparent_de.start_async(waits.Waits().race, flow_id="sa1")
        return first, second, await again.result(), again.task

    first, second, memo, task = asyncio.run(main())
    assert first == memo == (["a"], ["b"])
    assert second == ("prepared sleep", "done woke")
    assert task is None  # a finished flow's handle carries its journaled outcome
    assert waits.CALLS.count("prepare:sleep") == 1
    with pytest.raises(TypeError, match="not async def"):
        asyncio.run(transparent_de.start_async(waits.Waits().plain))


def test_start_async_handle_times_out_and_reports_failures(flow_module: Any, engine: Any) -> None:
    import asyncio

    m = flow_module(
        """
        import asyncio

        class Failing:
            __flow__ = {"entries": "run", "failure": "final"}

            async def run(self):
                await self.boom()

            async def boom(self):
                raise KeyError("no such thing")
        """
    )

    async def main() -> None:
        h = await transparent_de.start_async(m.Failing().run, flow_id="f1")
        with pytest.raises(KeyError, match="no such thing"):
            await h.result(timeout=20)
        assert h.done() and h.status() == "FAILED"

    asyncio.run(main())


def test_names_imported_from_asyncio_are_journaled_too(flow_module: Any, engine: Any) -> None:
    m = flow_module(
        """
        from asyncio import FIRST_COMPLETED, create_task, sleep, wait

        class Imported:
            __flow__ = "run"

            async def run(self):
                await sleep(0.01)
                fast, slow = create_task(self.work(0.01)), create_task(self.work(0.2))
                done, _ = await wait([fast, slow], return_when=FIRST_COMPLETED)
                await slow
                return [t is fast for t in done]

            async def work(self, seconds):
                await sleep(seconds)
                return seconds
        """
    )
    assert transparent_de.run(m.Imported().run, flow_id="imp") == [True]
    kinds = query(
        engine, "SELECT class_name, method_name FROM execution_log WHERE flow_id='imp' AND step>0 ORDER BY step"
    )
    assert [(c.rpartition(".")[2], n) for c, n in kinds] == [
        ("asyncio", "sleep"), ("Imported", "work"), ("Imported", "work"), ("asyncio", "wait"),
    ]  # fmt: skip


# --------------------------------------------------------------------------- writes off the loop


class _Threads:
    """A fault plan that fires nothing and notes the thread each journal commit runs in."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def hit(self, label: str) -> None:
        if label.endswith(".mid_txn"):
            self.seen.append((label, threading.current_thread().name))


@pytest.mark.parametrize("durability", ["full", "process"])
def test_async_flows_wait_for_the_journal_off_the_loop(waits: Any, database: str, durability: str) -> None:
    """On a server (a round trip per commit) a step's intent and the flow's end are committed in
    the engine's writer threads; on a SQLite file the commit runs on the loop and, under "full",
    the fsync in the engine's sync thread; under "process" nothing leaves the loop."""
    import asyncio

    from transparent_de import _api, _faults

    eng = transparent_de.configure(database=database, durability=durability, poll_interval=0.02)
    plan = _Threads()
    syncs: list[str] = []
    real_sync = eng.store.sync

    def sync() -> None:
        syncs.append(threading.current_thread().name)
        real_sync()

    eng.store.sync = sync  # type: ignore[method-assign]
    old = _faults.install(plan)  # type: ignore[arg-type]
    try:

        async def main() -> Any:
            return await asyncio.gather(*(waits.Waits().race() for _ in range(3)))

        assert asyncio.run(main()) == [(["a"], ["b"])] * 3
    finally:
        _faults.install(old)
        eng.close()
        _api._default = None
    remote = database.startswith("postgresql://")
    commits = [name for label, name in plan.seen if label in ("step.intent.mid_txn", "flow.complete.mid_txn")]
    assert len(commits) == 3 * 3  # two steps and the end of each flow
    assert {n.startswith("tde-write") for n in commits} == {remote}
    if not remote:
        waited = [n for n in syncs if n.startswith("tde-write")]
        assert len(waited) == (9 if durability == "full" else 0), syncs


# --------------------------------------------------------------------------- child flows

FAMILY = """
import asyncio
import os
import signal

def effect(label):
    fd = os.open(os.environ["TDE_EFFECTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (label + "\\n").encode())
    finally:
        os.close(fd)
    if os.environ.get("TDE_KILL") == label:
        os.kill(os.getpid(), signal.SIGKILL)


class Parent:
    __flow__ = "run"

    async def run(self, n):
        first = await self.work("p1")
        kids = await asyncio.gather(*(Child().run(i) for i in range(n)))  # async child flows
        tally = Tally().count(kids)  # a sync child flow, called from async flow code
        return first, kids, tally, await self.work("p2")

    async def work(self, label):
        effect(label)
        return label


class Child:
    __flow__ = "run"

    async def run(self, i):
        a = await self.work(f"c{i}a")
        await asyncio.sleep(0.01 * (2 - i))
        return [a, await self.work(f"c{i}b")]

    async def work(self, label):
        effect(label)
        return label


class Tally:
    __flow__ = "count"

    def count(self, kids):
        return self.total(len(kids))

    def total(self, n):
        effect("tally")
        return n
"""

FAMILY_DRIVER = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
import transparent_de
transparent_de.install(sys.argv[2].partition(".")[0])
m = importlib.import_module(sys.argv[2])
eng = transparent_de.configure(database=sys.argv[3], durability="process", poll_interval=0.02)
print(json.dumps(transparent_de.run(m.Parent().run, 2, flow_id="fam")))
eng.close()
"""


def test_async_child_flows_run_once_across_a_sigkill(flow_module: Any, engine: Any, tmp_path: Path) -> None:
    m = flow_module(FAMILY, name="family")
    (tmp_path / "family_driver.py").write_text(textwrap.dedent(FAMILY_DRIVER))
    effects = tmp_path / "effects.txt"

    def drive(kill: str | None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("TRANSPARENT_DE_HMAC_KEY", "TDE_KILL")}
        env["TDE_EFFECTS"] = str(effects)
        if kill:
            env["TDE_KILL"] = kill
        return subprocess.run(
            [sys.executable, str(tmp_path / "family_driver.py"), str(tmp_path / "src"), m.__name__,
             engine.database],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    killed = drive("c0b")  # inside the second child flow's second step
    assert killed.returncode == -9, killed.stderr
    done = drive(None)
    assert done.returncode == 0, done.stderr
    expected = ["p1", [["c0a", "c0b"], ["c1a", "c1b"]], 2, "p2"]
    assert json.loads(done.stdout) == expected
    ran = effects.read_text().split()
    # Only the step the kill interrupted ran twice; the others, in both child flows, once.
    assert sorted(ran) == sorted(["p1", "c0a", "c1a", "c1b", "c0b", "c0b", "tally", "p2"]), ran
    ids = {f.flow_id: f.status for f in engine.flows()}
    assert ids == {"fam": "COMPLETE", "fam.2": "COMPLETE", "fam.3": "COMPLETE", "fam.4": "COMPLETE"}
    effects.write_text("")
    assert drive(None).stdout and json.loads(drive(None).stdout) == expected  # memoized
    assert effects.read_text() == ""
