"""Time and ownership under skew and long steps: monotonic durations, leases every owner renews.

Two kinds of clock trouble are tested: a clock moved inside this process (``_clock`` patched:
the simulated clock), and real processes whose wall clock is shifted by a small LD_PRELOAD
library (``tests/clockshift/clockshift.c``, compiled here) while their monotonic clock and
sleeps stay real.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import query

import transparent_de
from transparent_de import Engine, _clock

HOUR_MS = 3_600_000

SOURCE = """
import os, time

EFFECTS = []


def effect(name):
    EFFECTS.append(name)
    path = os.environ.get("TDE_TEST_EFFECTS")
    if path:
        with open(path, "a") as f:
            f.write(name + "\\n")


class Long:
    __flow__ = "run"

    def run(self, seconds):
        self.before()
        return self.slow(seconds)

    def before(self):
        effect("before")
        return 1

    def slow(self, seconds):
        effect("slow")
        time.sleep(seconds)  # inside a step: a plain sleep
        return "done"


class Nap:
    __flow__ = "run"

    def run(self, seconds):
        self.before()
        time.sleep(seconds)  # flow level: a durable timer
        return self.after()

    def before(self):
        effect("before")
        return 1

    def after(self):
        effect("after")
        return "woke"


class Ask:
    __flow__ = "run"

    def run(self):
        import transparent_de
        return transparent_de.wait_for(self.answer)

    def answer(self, x):
        return x
"""


def _shift_now(monkeypatch: pytest.MonkeyPatch, ms: int) -> None:
    real = time.time_ns
    monkeypatch.setattr(_clock, "now_ms", lambda: real() // 1_000_000 + ms)


# --------------------------------------------------------------------------- every owner renews


def test_a_direct_run_keeps_its_flow_through_a_step_longer_than_the_lease(engine, flow_module, tmp_path):
    """`Flow().run()` and `run()` renew the lease too: another engine never takes the flow over."""
    m = flow_module(SOURCE)
    db = engine.store.path
    owner = Engine(db, durability="process", lease_seconds=0.5, poll_interval=0.02, hmac_key=None)
    other = Engine(db, durability="process", lease_seconds=0.5, poll_interval=0.02, hmac_key=None)
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(owner.run(m.Long().run, 2.0, flow_id="long")))
    t.start()
    try:
        deadline = time.monotonic() + 10
        while query(owner, "SELECT count(*) FROM execution_log WHERE flow_id='long' AND step=2") != [(1,)]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        while t.is_alive():  # a competitor watching it all along
            other.recover()
            time.sleep(0.05)
        t.join()
        assert result == ["done"]
        assert m.EFFECTS.count("slow") == 1
        assert query(owner, "SELECT attempts FROM execution_log WHERE flow_id='long' AND step=2") == [(1,)]
    finally:
        owner.close()
        other.close()


def test_takeover_is_measured_on_the_takers_monotonic_clock(engine, monkeypatch):
    """A lease from another host is taken only after a lease length of *our* clock without renewal."""
    mono = [1000.0]
    monkeypatch.setattr(_clock, "mono", lambda: mono[0])
    runner = engine.runner
    owner = "otherhost:4242:abcdef"
    lease_ms = engine.lease_ms
    assert runner.owned_elsewhere("f", owner, 5, 3)  # first sight: assume alive
    _shift_now(monkeypatch, 10 * HOUR_MS)  # our wall clock says the lease is long expired: irrelevant
    mono[0] += lease_ms / 1000 - 0.01
    assert runner.owned_elsewhere("f", owner, 5, 3)
    assert runner.owned_elsewhere("f", owner, 6, 3)  # renewed: watch again from now
    mono[0] += lease_ms / 1000 - 0.01
    assert runner.owned_elsewhere("f", owner, 6, 3)
    mono[0] += 0.02
    assert not runner.owned_elsewhere("f", owner, 6, 3)  # unrenewed for a lease length: abandoned
    assert not runner.owned_elsewhere("g", f"{transparent_de._ownership.HOST}:999999999:x", 1, 1)  # dead pid


# --------------------------------------------------------------------------- clocks stepped back


def test_a_parked_sleep_wakes_on_time_when_the_clock_steps_back(engine, flow_module, monkeypatch):
    m = flow_module(SOURCE)
    handle = transparent_de.start(m.Nap().run, 1.0, flow_id="nap")
    deadline = time.monotonic() + 10
    while query(engine, "SELECT wake_at FROM flows WHERE flow_id='nap'") in ([], [(None,)]):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started = time.monotonic()
    _shift_now(monkeypatch, -HOUR_MS)
    assert handle.result(timeout=20) == "woke"
    assert time.monotonic() - started < 5


def test_a_recovered_sleep_never_outlasts_its_length_after_a_clock_step(engine, flow_module, monkeypatch):
    m = flow_module(SOURCE)
    root = os.path.dirname(os.path.dirname(m.__file__))
    code = (
        f"import sys, os; sys.path.insert(0, {root!r}); import transparent_de; "
        f"transparent_de.install({m.__name__.split('.')[0]!r}); from {m.__name__} import Nap; "
        "e = transparent_de.Engine(os.environ['TRANSPARENT_DE_DB'], durability='process', hmac_key=None); "
        "h = e.start(Nap().run, 2.0, flow_id='rnap'); import time; time.sleep(0.6); os._exit(3)"
    )
    env = dict(os.environ, TRANSPARENT_DE_DB=engine.store.path)
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=60).returncode == 3
    _shift_now(monkeypatch, -HOUR_MS)
    started = time.monotonic()
    (handle,) = transparent_de.recover()
    assert handle.result(timeout=20) == "woke"
    assert time.monotonic() - started < 5


def test_handle_timeouts_are_durations(engine, flow_module, monkeypatch):
    m = flow_module(SOURCE)
    handle = transparent_de.start(m.Ask().run, flow_id="ask")
    started = time.monotonic()
    _shift_now(monkeypatch, -HOUR_MS)
    with pytest.raises(TimeoutError):
        handle.result(timeout=1.0)
    assert time.monotonic() - started < 4


# --------------------------------------------------------------------------- real processes, shifted clocks


@pytest.fixture(scope="session")
def clockshift(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The LD_PRELOAD library that shifts a process's wall clock (compiled once per session)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found: cannot build the clock-shifting library")
    out = tmp_path_factory.mktemp("clockshift") / "libclockshift.so"
    src = Path(__file__).parent / "clockshift" / "clockshift.c"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(out), str(src), "-ldl"], check=True)
    return out


def test_a_worker_an_hour_ahead_never_takes_a_live_owners_flow(flow_module, tmp_path, clockshift):
    m = flow_module(SOURCE)
    root = os.path.dirname(os.path.dirname(m.__file__))
    db, effects, shift = tmp_path / "j.db", tmp_path / "effects", tmp_path / "shift"
    shift.write_text("3600")
    prelude = (
        f"import sys, os; sys.path.insert(0, {root!r}); import transparent_de; "
        f"transparent_de.install({m.__name__.split('.')[0]!r}); from {m.__name__} import Long; "
        f"e = transparent_de.Engine({str(db)!r}, durability='process', lease_seconds=1.0, "
        "poll_interval=0.05, hmac_key=None); "
    )
    env = dict(os.environ, TDE_TEST_EFFECTS=str(effects))
    owner = subprocess.Popen(
        [sys.executable, "-c", prelude + "print(e.run(Long().run, 3.0, flow_id='skew'))"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while "slow" not in (effects.read_text() if effects.exists() else ""):
            assert time.monotonic() < deadline and owner.poll() is None
            time.sleep(0.02)
        ahead = dict(env, LD_PRELOAD=str(clockshift), CLOCKSHIFT_FILE=str(shift))
        worker = subprocess.run(
            [sys.executable, "-c", prelude + "import threading; s = threading.Event(); "
             "threading.Timer(3.0, s.set).start(); e.worker(s); print('ok')"],
            env=ahead, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert worker.returncode == 0, worker.stderr
        out, _ = owner.communicate(timeout=30)
    finally:
        owner.kill()
    assert out.strip() == "done"
    assert effects.read_text().split().count("slow") == 1  # the step ran once


def test_a_process_whose_clock_steps_back_still_wakes_on_time(flow_module, tmp_path, clockshift):
    m = flow_module(SOURCE)
    root = os.path.dirname(os.path.dirname(m.__file__))
    db, shift = tmp_path / "j.db", tmp_path / "shift"
    shift.write_text("0")
    code = (
        f"import sys, os, time; sys.path.insert(0, {root!r}); import transparent_de; "
        f"transparent_de.install({m.__name__.split('.')[0]!r}); from {m.__name__} import Nap; "
        f"e = transparent_de.Engine({str(db)!r}, durability='process', park_after=0.1, poll_interval=0.05, "
        "hmac_key=None); h = e.start(Nap().run, 1.5, flow_id='step-back'); time.sleep(0.5); "
        f"open({str(shift)!r}, 'w').write('-3600'); t = time.monotonic(); "
        "print(h.result(timeout=30), round(time.monotonic() - t, 1)); e.close()"
    )
    env = dict(os.environ, LD_PRELOAD=str(clockshift), CLOCKSHIFT_FILE=str(shift))
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    word, seconds = p.stdout.split()
    assert word == "woke" and float(seconds) < 4
