"""The crash sweep (:func:`transparent_de.testing.crash_sweep`) over async flows (issue #16).

Every engine crash point of each program is crashed (a forked child dies there), recovered in a
second child, and compared with the uncrashed run: the same outcome, the flow COMPLETE, the
journal intact. Step bodies await a random 0-3 ms (drawn from ``os.urandom``, so every forked
child draws its own), so parallel steps finish in another order in every run.

The stock sweep matches steps across runs by identity (an async flow's lineage slot) and lets
each step in flight at a crash run once more (several may be in flight in an async flow); the
harness here (:func:`async_sweep`) adds what only a test that owns the flow's effects can check:

* the crashed journal is read before recovery (``testing._recover`` is wrapped), and a step may
  run again only if its row was PENDING there (intent committed, result not), and then its
  ``attempts`` is 2; every other step has 1;
* the effects of every run are counted (``pid|label`` lines appended to a file): after each
  recovery no step whose row was COMPLETE or FAILED at the crash ran again, and every step ran
  as often as in the uncrashed run, at most once more.

Also checked per crash point: the recovered journal has the same rows as the uncrashed one by
slot (lineage, class, method, kind, status), whatever step numbers they got.
"""

from __future__ import annotations

import collections
import hashlib
import os
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import is_postgres

from transparent_de import _faults, testing
from transparent_de._serialization import decode
from transparent_de._store import exists, open_store

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX only (fork)")

HAS_TASKGROUP = sys.version_info >= (3, 11)

FLOWS = """
import asyncio
import os
import random
import time

from transparent_de import wait_for

EFFECTS = [None]  # the effects file, set by the test (forked children inherit it)


def effect(label):
    fd = os.open(EFFECTS[0], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{os.getpid()}|{label}\\n".encode())
    finally:
        os.close(fd)


async def jitter():
    # 0-3 ms from the OS: every forked child draws its own, so steps finish in another order
    await asyncio.sleep(os.urandom(1)[0] / 255 * 0.003)


class Sweep:
    __flow__ = ("gathered", "interleaved", "group", "tasks", "timers", "reordered", "raced", "approved")

    async def raced(self):  # FIRST_COMPLETED and as_completed, won by timing (the same task each run)
        fast = asyncio.create_task(self.timed("fast", 0))
        slow = asyncio.create_task(self.timed("slow", 0.03))
        done, _ = await asyncio.wait([fast, slow], return_when=asyncio.FIRST_COMPLETED)
        first = sorted(t.result() for t in done)
        racers = [asyncio.create_task(self.timed(f"o{i}", 0.03 * (2 - i))) for i in range(3)]
        order = [await c for c in asyncio.as_completed(racers)]
        return first, await slow, order

    async def approved(self):  # a durable signal wait in async flow code
        prepared = await self.step("prepare", 1)
        answer = await wait_for(self.approve, timeout=30)
        return prepared, answer, await self.step("after", answer)

    async def timed(self, label, seconds):
        await asyncio.sleep(seconds)  # in the body: a plain sleep
        effect(label)
        return label

    async def approve(self, answer):
        effect("approve")
        return answer

    async def gathered(self, n):  # gather of distinct steps, one failing (return_exceptions)
        first = await self.step("first", n)
        xs = await asyncio.gather(*(self.step(f"g{i}", i) for i in range(n)))
        mixed = await asyncio.gather(self.explode("boom"), self.step("beside", 0), return_exceptions=True)
        return first, xs, [repr(m) for m in mixed], self.total("total", [x["x"] for x in xs])

    async def interleaved(self, n):  # sequences interleaved under gather, captures in their tasks
        return await asyncio.gather(self._seq("a", n), self._seq("b", n), self._seq("c", 1))

    async def _seq(self, tag, n):
        out = []
        for i in range(n):
            out.append((await self.step(f"{tag}{i}", len(out)))["label"])
        out.append(random.random())
        return out

    async def group(self, n):  # TaskGroup (3.11+): steps, a helper with its own steps, a failure
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self.step(f"t{i}", i)) for i in range(n)]
            helper = tg.create_task(self._seq("h", 2))
        try:
            async with asyncio.TaskGroup() as tg:
                done = tg.create_task(self.step("member", 0))
                tg.create_task(self._fail_after(done))
        except Exception as eg:
            errors = sorted(repr(e) for e in getattr(eg, "exceptions", [eg]))
        return [t.result() for t in tasks], helper.result(), done.result(), errors

    async def _fail_after(self, task):
        await task  # the failure comes after the other member finished: no race in the outcome
        await self.explode("in the group")

    async def tasks(self, n):  # create_task after awaits, awaited in reverse order
        first = await self.step("first", n)
        tasks = []
        for i in range(n):
            tasks.append(asyncio.create_task(self._later(i, first["x"])))
            await asyncio.sleep(0)
        return [await t for t in reversed(tasks)]

    async def _later(self, i, base):
        a = await self.step(f"pre{i}", i)
        return (await self.step(f"post{i}", base + a["x"]))["label"]

    async def timers(self, n):  # durable asyncio.sleep of a few ms, in the flow and in its tasks
        t0 = time.time()
        await asyncio.sleep(0.003)
        naps = await asyncio.gather(*(self._nap(i) for i in range(n)))
        return t0, naps, await self.step("after", len(naps)), time.time()

    async def _nap(self, i):
        await asyncio.sleep(0.002 * (i + 1))
        return await self.step(f"nap{i}", i)

    async def reordered(self):  # slots reserved x, y; intents written y, x (gather's order)
        x = self.step("x", 1)
        y = self.step("y", 2)
        a, b = await asyncio.gather(y, x)
        return a, b, time.time()

    async def step(self, label, x):
        await jitter()
        effect(label)
        return {"label": label, "x": x}

    async def explode(self, label):
        await jitter()
        effect(label)
        raise ValueError(label)

    def total(self, label, xs):  # a sync step called from async flow code
        effect(label)
        return sum(xs)
"""


# --------------------------------------------------------------------------- the harness side


@dataclass(frozen=True)
class Row:
    lineage: str | None
    class_name: str
    method: str
    kind: str
    status: str
    attempts: int
    label: str | None  # a step's first argument


def journal_rows(db: str) -> list[Row]:
    """The flow's rows after step 0 (empty if the journal was never created)."""
    if not exists(db):
        return []
    store = open_store(db, readonly=True)
    try:
        steps = store.load_steps("sweep")
    finally:
        store.close()
    out = []
    for r in sorted(steps.values(), key=lambda r: r.step):
        label = None
        if r.kind == "step" and r.parameters is not None:
            args, _ = decode(r.parameters)
            label = args[0] if args else None
        out.append(Row(r.lineage, r.class_name, r.method_name, r.kind, r.status, r.attempts, label))
    return out


def shape(rows: list[Row]) -> collections.Counter[tuple[Any, ...]]:
    return collections.Counter((r.lineage, r.class_name, r.method, r.kind, r.status) for r in rows)


def read_effects(path: Path) -> list[tuple[int, str]]:
    if not path.exists():
        return []
    return [
        (int(pid), label) for pid, _, label in (ln.partition("|") for ln in path.read_text().splitlines())
    ]


@dataclass
class Sweep:
    report: testing.SweepReport
    failures: list[str] = field(default_factory=list)
    reruns: int = 0  # steps run again by a recovery (each in flight at its crash)
    most_in_flight: int = 0  # the most steps PENDING in one crashed journal


def async_sweep(
    entry: Any, *args: Any, flows: Any, workdir: Path, database: str, monkeypatch: pytest.MonkeyPatch
) -> Sweep:
    """:func:`crash_sweep` with the substitutions of the module docstring; ``failures`` holds its
    divergences and ours."""
    effects = workdir / "effects"
    snaps = workdir / "snapshots"
    snaps.mkdir(parents=True)
    flows.EFFECTS[0] = str(effects)  # (a module of its own per test)
    pg = is_postgres(database)

    def snap_path(db: str) -> Path:
        return snaps / hashlib.sha1(db.encode()).hexdigest()

    # The uncrashed journal's rows and effects (on the test's own journal; the sweep makes others).
    ref_db = database if pg else str(workdir / "shape.db")

    def reference() -> list[Row]:
        _faults.capture_override = testing.deterministic_capture
        from transparent_de._engine import Engine

        engine = Engine(ref_db, durability="process", poll_interval=0.01, hmac_key=None)
        try:
            engine.run(entry, *args, flow_id="sweep")
        finally:
            engine.close()
        return journal_rows(ref_db)

    status, sent = testing._in_child(reference)
    assert status == 0 and sent is not None and sent[0] == "ok", sent
    ref_rows: list[Row] = sent[1]
    ref_effects = collections.Counter(label for _, label in read_effects(effects))
    assert ref_effects and all(n == 1 for n in ref_effects.values()), ref_effects  # labels are unique
    effects.unlink()

    real_recover, real_check = testing._recover, testing._check_journal

    def recover(run_on: Any, db: str) -> Any:  # in the recovery child: the crashed journal, then recover
        with open(snap_path(db), "wb") as f:
            pickle.dump((os.getpid(), journal_rows(db)), f)
        return real_recover(run_on, db)

    out = Sweep(testing.SweepReport())
    seen = [0]  # effect lines already looked at

    def check_journal(db: str, completed: bool, at_crash_rows: Any, reference: Any) -> list[str]:
        found = real_check(db, completed, at_crash_rows, reference)
        k = int(db.rsplit("crash_", 1)[1].split(".")[0])
        with open(snap_path(db), "rb") as f:
            recovery_pid, crashed = pickle.load(f)
        final = journal_rows(db)
        if shape(final) != shape(ref_rows):
            found.append(f"journal by slot {sorted(shape(final))} != uncrashed {sorted(shape(ref_rows))}")
        at_crash = {r.label: r.status for r in crashed if r.kind == "step"}
        pending = {label for label, s in at_crash.items() if s == "PENDING"}
        out.most_in_flight = max(out.most_in_flight, len(pending))
        for r in final:
            if r.kind == "step" and r.attempts != (2 if r.label in pending else 1):
                found.append(f"step {r.label} attempts {r.attempts}, at the crash {at_crash.get(r.label)}")
        # Effects of this crash point: the crashed run's, then the recovery's (by pid); the first
        # crash point also sees the sweep's own uncrashed run, the first pid in the file.
        lines = read_effects(effects)
        new, seen[0] = lines[seen[0] :], len(lines)
        if k == 1 and new:
            new = [(pid, label) for pid, label in new if pid != new[0][0]]
        crashed_fx = collections.Counter(label for pid, label in new if pid != recovery_pid)
        recovery_fx = collections.Counter(label for pid, label in new if pid == recovery_pid)
        for label in set(ref_effects) | set(crashed_fx) | set(recovery_fx):
            ran, again = crashed_fx[label] + recovery_fx[label], crashed_fx[label] and recovery_fx[label]
            if at_crash.get(label) in ("COMPLETE", "FAILED") and recovery_fx[label]:
                found.append(f"step {label} ran again after its outcome was committed")
            elif again and label not in pending:
                found.append(f"step {label} ran again but was not in flight at the crash")
            elif not ref_effects[label] <= ran <= ref_effects[label] + 1:
                found.append(f"step {label} ran {ran} times, uncrashed {ref_effects[label]}")
            out.reruns += bool(again)
        return found

    monkeypatch.setattr(testing, "_recover", recover)
    monkeypatch.setattr(testing, "_check_journal", check_journal)
    out.report = testing.crash_sweep(
        entry, *args, workdir=str(workdir / "sweep"), database=database if pg else None
    )
    out.failures = out.report.failures
    return out


# --------------------------------------------------------------------------- the programs

PROGRAMS = [
    ("gathered", (3,)),
    ("interleaved", (3,)),
    pytest.param("group", (2,), marks=pytest.mark.skipif(not HAS_TASKGROUP, reason="TaskGroup is 3.11+")),
    ("tasks", (2,)),
    ("timers", (2,)),
    ("reordered", ()),
]


#: Swept on PostgreSQL too (each sweep there takes ~10 s): parallel steps in flight, and timers.
#: The others exercise the engine's numbering, the same on both backends; swept on SQLite.
ON_POSTGRES = ("gathered", "timers")


@pytest.fixture
def flows(flow_module: Any) -> Any:
    return flow_module(FLOWS)


@pytest.mark.parametrize(("entry", "args"), PROGRAMS)
def test_async_flow_recovers_at_every_crash_point(
    flows: Any,
    entry: str,
    args: tuple[Any, ...],
    database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if is_postgres(database) and entry not in ON_POSTGRES:
        pytest.skip(f"{entry}: swept on SQLite (on PostgreSQL: {', '.join(ON_POSTGRES)})")
    swept = async_sweep(
        getattr(flows.Sweep(), entry),
        *args,
        flows=flows,
        workdir=tmp_path,
        database=database,
        monkeypatch=monkeypatch,
    )
    report = swept.report
    assert not swept.failures, f"{report.summary()}:\n" + "\n".join(swept.failures[:10])
    assert report.crash_points >= 15 and report.crashes_injected == report.crash_points
    assert report.recoveries == report.crash_points
    assert {"step.intent.after_commit", "step.result.carried", "flow.complete.mid_txn"} <= set(report.labels)
    if entry in ("gathered", "interleaved", "group"):  # their parallel intents precede any result
        assert swept.most_in_flight >= 2, "no crash point had parallel steps in flight"
        assert swept.reruns > 0, "no crash fell between a step's body and its committed result"
    if entry == "timers":
        assert "sleep.after_deadline_written" in report.labels


def test_the_async_sweep_catches_a_broken_engine(
    flows: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PENDING rows read back as COMPLETE: a step in flight at the crash is never re-run."""
    from transparent_de._store.sqlite_sql import Q

    broken = Q["load_steps"].replace(
        "status,", "CASE status WHEN 'PENDING' THEN 'COMPLETE' ELSE status END,", 1
    )
    monkeypatch.setitem(Q, "load_steps", broken)
    swept = async_sweep(
        flows.Sweep().gathered,
        2,
        flows=flows,
        workdir=tmp_path,
        database=str(tmp_path / "j.db"),
        monkeypatch=monkeypatch,
    )
    assert swept.failures, swept.report.summary()


# --------------------------------------------------------------------------- the stock sweep on async flows


def test_stock_sweep_of_parallel_steps(flows: Any, tmp_path: Path) -> None:
    """Several steps in flight at a crash: each may run again, matched by slot (no more)."""
    flows.EFFECTS[0] = str(tmp_path / "effects")
    testing.assert_recovers(flows.Sweep().gathered, 3, workdir=str(tmp_path))


def test_stock_sweep_of_captured_time_after_reordered_intents(flows: Any, tmp_path: Path) -> None:
    """Captured values are a function of the call's slot, not of its timing-dependent step number."""
    flows.EFFECTS[0] = str(tmp_path / "effects")
    testing.assert_recovers(flows.Sweep().reordered, workdir=str(tmp_path))


def test_stock_sweep_of_recorded_races(flows: Any, tmp_path: Path) -> None:
    """asyncio.wait(FIRST_COMPLETED) and as_completed, crashed at every point: each recovery
    returns the uncrashed outcome (a decision is durable before anything that depends on it)."""
    flows.EFFECTS[0] = str(tmp_path / "effects")
    report = testing.assert_recovers(flows.Sweep().raced, workdir=str(tmp_path))
    assert report.crash_points >= 15


def test_stock_sweep_of_a_signal_wait(flows: Any, tmp_path: Path) -> None:
    flows.EFFECTS[0] = str(tmp_path / "effects")
    report = testing.assert_recovers(flows.Sweep().approved, workdir=str(tmp_path), signals=[("approve", "yes")])
    assert "signal.wait.after_write" in report.labels and "signal.deliver.mid_txn" in report.labels
