"""A flow runs in one place at a time: another thread or live process is refused, a dead one is not."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from helpers import is_postgres, query

import transparent_de
from transparent_de.errors import FlowBusyError

SOURCE = """
import os, time

class Slow:
    __flow__ = "run"

    def run(self, seconds):
        self.started()
        self.wait(seconds)
        return "done"

    def started(self):
        open(os.environ["TDE_TEST_MARK"], "w").close()
        return True

    def wait(self, seconds):
        time.sleep(float(os.environ.get("TDE_TEST_SLEEP", seconds)))  # inside a step: a plain sleep
        return seconds
"""


def _wait_for_file(path: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_a_flow_running_in_another_live_process_is_refused(engine, flow_module, tmp_path, monkeypatch):
    m = flow_module(SOURCE)
    mark = tmp_path / "started"
    monkeypatch.setenv("TDE_TEST_MARK", str(mark))
    root = os.path.dirname(os.path.dirname(m.__file__))
    code = (
        f"import sys; sys.path.insert(0, {root!r}); import transparent_de; "
        f"transparent_de.install({m.__name__.split('.')[0]!r}); "
        f"from {m.__name__} import Slow; "
        "print(transparent_de.run(Slow().run, 3.0, flow_id='busy'))"
    )
    env = dict(os.environ, TRANSPARENT_DE_DB=engine.store.path)
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        _wait_for_file(str(mark))
        with pytest.raises(FlowBusyError) as info:
            transparent_de.run(m.Slow().run, 3.0, flow_id="busy")
        assert info.value.flow_id == "busy" and str(child.pid) in info.value.owner
    finally:
        out, _ = child.communicate(timeout=30)
    assert child.returncode == 0 and out.strip() == "done"
    assert transparent_de.run(m.Slow().run, 3.0, flow_id="busy") == "done"  # memoized, nothing runs


def test_a_flow_running_in_another_thread_is_refused(engine, flow_module, tmp_path, monkeypatch):
    m = flow_module(SOURCE)
    mark = tmp_path / "started"
    monkeypatch.setenv("TDE_TEST_MARK", str(mark))
    results: list[object] = []
    t = threading.Thread(target=lambda: results.append(transparent_de.run(m.Slow().run, 1.0, flow_id="t")))
    t.start()
    _wait_for_file(str(mark))
    with pytest.raises(FlowBusyError, match="this process"):
        transparent_de.run(m.Slow().run, 1.0, flow_id="t")
    t.join(timeout=20)
    assert results == ["done"]


@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
def test_a_flow_whose_owner_was_killed_is_taken_over_at_once(engine, flow_module, tmp_path, monkeypatch, reaped):
    """Also while the killed owner is a zombie (its parent, here this test, has not waited for
    it yet): it still answers kill(pid, 0), but it is dead, and its flows are free."""
    m = flow_module(SOURCE)
    mark = tmp_path / "started"
    monkeypatch.setenv("TDE_TEST_MARK", str(mark))
    root = os.path.dirname(os.path.dirname(m.__file__))
    code = (
        f"import sys; sys.path.insert(0, {root!r}); import transparent_de; "
        f"transparent_de.install({m.__name__.split('.')[0]!r}); "
        f"from {m.__name__} import Slow; transparent_de.run(Slow().run, 30.0, flow_id='dead')"
    )
    env = dict(os.environ, TRANSPARENT_DE_DB=engine.store.path, TDE_TEST_SLEEP="30")
    child = subprocess.Popen([sys.executable, "-c", code], env=env)
    _wait_for_file(str(mark))
    child.kill()
    if reaped:
        child.wait(timeout=10)
    else:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead, and left unreaped
        os.kill(child.pid, 0)  # a zombie still "exists"
    # The lease is 30 s, but the owner's pid is dead on this host: no waiting for its expiry.
    monkeypatch.setenv("TDE_TEST_SLEEP", "0.1")
    started = time.monotonic()
    (handle,) = [h for h in transparent_de.recover() if h.id == "dead"]
    assert handle.result(timeout=10) == "done"
    assert time.monotonic() - started < 5
    child.wait(timeout=10)


GATED = """
import threading

GATE = threading.Event()
ENTERED = threading.Event()

class Gated:
    __flow__ = "run"

    def run(self):
        first = self.first()
        return [first, self.second()]

    def first(self):
        ENTERED.set()
        GATE.wait(20)
        return 1

    def second(self):
        return 2
"""


def test_a_process_that_lost_its_flow_cannot_commit_into_it(engine, flow_module):
    """Fencing: once another owner claimed the flow, this one's next write is refused, nothing lands."""
    from transparent_de.errors import LeaseLostError

    m = flow_module(GATED)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            transparent_de.run(m.Gated().run, flow_id="fenced")
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=run)
    t.start()
    assert m.ENTERED.wait(20)
    # What another process's claim does: a new owner, a new fencing token.
    query(engine, "UPDATE flows SET owner='elsewhere:1:x', fence=fence+1 WHERE flow_id='fenced'")
    m.GATE.set()
    t.join(20)
    assert len(outcome) == 1 and isinstance(outcome[0], LeaseLostError)  # public, not the unwinding signal
    assert outcome[0].flow_id == "fenced"
    rows = query(engine, "SELECT step, status FROM execution_log WHERE flow_id='fenced' ORDER BY step")
    assert rows == [(0, "PENDING"), (1, "PENDING")], "the result of step 1 must not have been committed"


def test_many_threads_write_one_journal_without_busy_errors(engine, flow_module):
    """24 flows on pool threads write one journal at once: every step lands, every result is right."""
    m = flow_module(
        """
class Count:
    __flow__ = "run"

    def run(self, n):
        return sum(self.step(i) for i in range(n))

    def step(self, i):
        return i
"""
    )
    handles = [transparent_de.start(m.Count().run, 30, flow_id=f"c{i}") for i in range(24)]
    assert [h.result(timeout=60) for h in handles] == [435] * 24


def test_processes_opening_a_fresh_journal_at_once_all_succeed(tmp_path, request, database):
    """A fleet started together on a journal that does not exist yet: no 'database is locked', no false 'foreign'."""
    code = (
        "import sys, time, transparent_de\n"
        "while time.time() < float(sys.argv[2]): pass\n"
        "transparent_de.Engine(sys.argv[1], durability='process').store\n"
        "print('ok')\n"
    )
    pg = is_postgres(database)
    for attempt in range(2 if pg else 4):  # (each Postgres one also races CREATE SCHEMA)
        path = request.getfixturevalue("pg_cluster").url() if pg else tmp_path / f"fresh{attempt}.db"
        start = time.time() + 0.8
        procs = [
            subprocess.Popen([sys.executable, "-c", code, str(path), str(start)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for _ in range(6)
        ]
        results = [p.communicate(timeout=60) for p in procs]
        failures = [err.strip().splitlines()[-1] for out, err in results if out.strip() != "ok"]
        assert not failures, f"attempt {attempt}: {failures}"
