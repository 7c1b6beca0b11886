"""One commit per step: a step's result rides with the flow's next write (docs/concepts.md,
"What a crash re-runs"), is written before anything can observe it, and is written by the
flusher when flow-level code runs long after the step."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import query

import transparent_de
from transparent_de import Engine, _writes

SOURCE = """
import threading
import transparent_de

EFFECTS = []
GATE = threading.Event()
HELD = threading.Event()


def hold():
    # Flow-level code that takes a while (a plain function: not journaled, not a step).
    HELD.set()
    GATE.wait(20)


class Steps:
    __flow__ = "run"

    def run(self, n):
        return sum(self.step(i) for i in range(n))

    def step(self, i):
        return i + 1


class Held:
    __flow__ = "run"

    def run(self, tell=None):
        a = self.first()
        if tell:
            transparent_de.signal(tell, "confirm", a)
        hold()
        return [a, self.second()]

    def first(self):
        EFFECTS.append("first")
        return 1

    def second(self):
        EFFECTS.append("second")
        return 2


class Waiter:
    __flow__ = "run"

    def run(self):
        return transparent_de.wait_for(self.confirm)

    def confirm(self, a):
        return a
"""


def _status(engine: Engine, fid: str, step: int) -> str | None:
    rows = query(engine, "SELECT status FROM execution_log WHERE flow_id=? AND step=?", (fid, step))
    return rows[0][0] if rows else None


def _until(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.mark.sqlite_only  # counts SQLite's COMMIT statements (PostgreSQL: one round trip per commit)
def test_a_step_costs_one_commit(engine: Engine, flow_module: Any) -> None:
    """The flow's start, one commit per step (its intent, carrying the previous step's
    result) and the flow's end: N + 2 commits for N steps (it was 2N + 2)."""
    m = flow_module(SOURCE)
    engine.run(m.Steps().run, 1, flow_id="warm")  # the flow thread's connection exists now
    commits: list[str] = []
    con = engine.store.file.conn()  # type: ignore[attr-defined]
    con.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    try:
        assert engine.run(m.Steps().run, 20, flow_id="twenty") == sum(range(1, 21))
    finally:
        con.set_trace_callback(None)
    assert len(commits) == 20 + 2
    rows = query(engine, "SELECT step, status FROM execution_log WHERE flow_id='twenty' ORDER BY step")
    assert rows == [(i, "COMPLETE") for i in range(21)]


def _held(m: Any, engine: Engine, fid: str, tell: str | None = None) -> tuple[threading.Thread, list[Any]]:
    m.GATE.clear()
    m.HELD.clear()
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(engine.run(m.Held().run, tell, flow_id=fid)))
    thread.start()
    assert m.HELD.wait(10)
    return thread, out


def test_a_result_is_carried_until_the_next_write(
    engine: Engine, flow_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_writes, "FLUSH_AFTER", 60.0)  # no timed flush in this test
    m = flow_module(SOURCE)
    thread, out = _held(m, engine, "carried")
    try:
        time.sleep(0.1)
        assert _status(engine, "carried", 1) == "PENDING"  # ran, its result not written yet
    finally:
        m.GATE.set()
        thread.join(10)
    assert out == [[1, 2]] and m.EFFECTS == ["first", "second"]
    assert [_status(engine, "carried", s) for s in (0, 1, 2)] == ["COMPLETE"] * 3


def test_long_flow_code_after_a_step_gets_the_result_written_by_the_flusher(
    engine: Engine, flow_module: Any
) -> None:
    m = flow_module(SOURCE)
    thread, out = _held(m, engine, "flushed")
    try:
        _until(lambda: _status(engine, "flushed", 1) == "COMPLETE", timeout=5)
        assert thread.is_alive() and _status(engine, "flushed", 2) is None  # still in flow code
    finally:
        m.GATE.set()
        thread.join(10)
    assert out == [[1, 2]]


def test_the_flusher_leaves_a_flow_whose_commit_is_queued(engine: Engine, flow_module: Any) -> None:
    """An async flow's commit waiting in a writer thread takes the carried rows with it; the
    flusher must not write them meanwhile (a second commit, and fsync, for nothing)."""
    from transparent_de._trampoline import ACTIVE

    m = flow_module(SOURCE)
    thread, out = _held(m, engine, "queued")
    try:
        (run,) = [r for r in ACTIVE.values() if r.flow_id == "queued"]
        run.writer.queued += 1  # as AsyncRun.commit_durably does while its commit waits
        time.sleep(_writes.FLUSH_AFTER * 40)
        assert _status(engine, "queued", 1) == "PENDING"  # left alone
        run.writer.queued -= 1
        _until(lambda: _status(engine, "queued", 1) == "COMPLETE", timeout=5)  # then flushed
    finally:
        m.GATE.set()
        thread.join(10)
    assert out == [[1, 2]]


def test_a_signal_sent_from_flow_code_writes_the_carried_result_first(
    engine: Engine, flow_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the flow does to other flows may depend on its completed steps: they are written
    before (here with no timed flush at all)."""
    monkeypatch.setattr(_writes, "FLUSH_AFTER", 60.0)
    m = flow_module(SOURCE)
    waiter = transparent_de.start(m.Waiter().run, flow_id="waiter")
    thread, out = _held(m, engine, "teller", tell="waiter")
    try:
        assert _status(engine, "teller", 1) == "COMPLETE"
    finally:
        m.GATE.set()
        thread.join(10)
    assert out == [[1, 2]] and waiter.result(timeout=10) == 1


def test_full_durability_costs_one_fsync_per_step(
    tmp_path: Path, flow_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fsync after a step's intent covers the previous step's result too."""
    m = flow_module(SOURCE)
    eng = Engine(tmp_path / "full.db", durability="full", hmac_key=None)
    try:
        eng.run(m.Steps().run, 1, flow_id="warm")
        calls: list[int] = []
        real = os.fsync

        def fsync(fd: int) -> None:
            calls.append(fd)
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        eng.run(m.Steps().run, 20, flow_id="twenty")
        monkeypatch.setattr(os, "fsync", real)
    finally:
        eng.close()
    assert len(calls) == 20 + 1  # one per step, and the flow's end


CRASHY = """
import os, sys, threading
import transparent_de

class Held:
    __flow__ = "run"

    def run(self):
        a = self.first()
        if os.environ.get("HOLD"):
            threading.Event().wait(60)  # flow-level code that runs long: killed in here
        return [a, self.second()]

    def first(self):
        with open(os.environ["EFFECTS"], "a") as f:
            f.write("first\\n")
        return 1

    def second(self):
        return 2
"""


def _step1(db: Path) -> str | None:
    if not db.exists():
        return None
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = con.execute("SELECT status FROM execution_log WHERE flow_id='held' AND step=1").fetchone()
    except sqlite3.OperationalError:  # not initialised yet
        return None
    finally:
        con.close()
    return row[0] if row else None


def test_a_kill_in_long_flow_code_after_the_flush_does_not_rerun_the_step(tmp_path: Path) -> None:
    pkg = tmp_path / "src" / "heldpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "flows.py").write_text(CRASHY)
    effects = tmp_path / "effects"
    db = tmp_path / "j.db"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env |= {"EFFECTS": str(effects), "TRANSPARENT_DE_DB": str(db), "TRANSPARENT_DE_HMAC_KEY": "k" * 32}
    code = (
        "import transparent_de; transparent_de.install('heldpkg'); import heldpkg.flows as m; "
        "transparent_de.configure(durability='process'); "
        "print(transparent_de.run(m.Held().run, flow_id='held'))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env={**env, "HOLD": "1"}, stdout=subprocess.PIPE)
    try:
        _until(lambda: _step1(db) == "COMPLETE")
        assert proc.poll() is None  # still inside the long flow-level code
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[1, 2]"
    assert effects.read_text().splitlines() == ["first"]  # replayed, not re-run


@pytest.mark.sqlite_only  # the WAL file's checkpoints
def test_checkpoints_run_on_their_own_thread(engine: Engine, flow_module: Any) -> None:
    """No step's COMMIT copies the WAL into the database (SQLite's autocheckpoint is off on our
    connections); the checkpointer's thread does, so the WAL stays bounded."""
    m = flow_module(SOURCE)
    file = engine.store.file  # type: ignore[attr-defined]
    assert file.conn().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    engine.run(m.Steps().run, 2_000, flow_id="long")
    _until(lambda: file.checkpointer.done >= 2)
    engine.run(m.Steps().run, 600, flow_id="more")  # a writer restarts the WAL after a full checkpoint
    assert os.path.getsize(file.path + "-wal") < 8 * 1024 * 1024
