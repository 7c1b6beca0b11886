"""Failing flows stay visible and bounded: backoff, the dead letter, retry; engine errors are not
step outcomes; signals are checked before they are stored; a flow id names one call."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from helpers import query

import transparent_de
from transparent_de import Engine
from transparent_de.errors import (
    FlowFailedError,
    JournalIOError,
    NonDeterminismError,
    SerializationError,
    SignalError,
)

SOURCE = """
import threading
import time
import transparent_de

EFFECTS = []
BROKEN = {"on": True}


class Flaky:
    __flow__ = {"entries": ("run",), "max_recovery_attempts": 3, "backoff": 0.05, "max_backoff": 0.2}

    def run(self, x):
        self.prepare(x)
        return self.charge(x)

    def prepare(self, x):
        EFFECTS.append("prepare")
        return x

    def charge(self, x):
        EFFECTS.append("charge")
        if BROKEN["on"]:
            raise RuntimeError("gateway down")
        return x * 10


class Unpicklable:
    __flow__ = {"entries": ("run",), "max_recovery_attempts": 2, "backoff": 0.01}

    def run(self):
        return self.lock()

    def lock(self):
        EFFECTS.append("lock")
        return threading.Lock()


class Careless:
    __flow__ = {"entries": ("run",), "failure": "final"}

    def run(self, n):
        try:
            return self.big(n)
        except Exception as exc:  # flow code must not be able to swallow a journal error
            return ("caught", type(exc).__name__)

    def big(self, n):
        EFFECTS.append("big")
        return "x" * n


class Approve:
    __flow__ = "run"

    def run(self):
        try:
            first = transparent_de.wait_for(self.confirm)
        except ValueError as exc:
            first = f"refused {exc}"
        return first, transparent_de.wait_for(self.confirm)

    def confirm(self, answer, note=""):
        EFFECTS.append(("confirm", answer))
        if answer == "bad":
            raise ValueError("bad answer")
        return answer + note


class Nap:
    __flow__ = "run"

    def run(self):
        time.sleep(2.0)
        return self.wake()

    def wake(self):
        EFFECTS.append("wake")
        return "awake"


class Stubborn:
    __flow__ = {"entries": ("run",), "max_recovery_attempts": 2, "backoff": 0.01}

    def run(self):
        return transparent_de.wait_for(self.confirm)

    def confirm(self, answer):
        EFFECTS.append(("confirm", answer))
        if answer == "bad":
            raise ValueError("bad answer")
        return answer
"""


# --------------------------------------------------------------------------- backoff and the dead letter


def test_a_failing_background_flow_backs_off_then_ends_failed(engine, flow_module, caplog):
    m = flow_module(SOURCE)
    caplog.set_level(logging.INFO, logger="transparent_de")
    handle = transparent_de.start(m.Flaky().run, 2, flow_id="fl1")
    started = time.monotonic()
    deadline = started + 20
    while not handle.done():
        assert time.monotonic() < deadline, "the flow never ended"
        time.sleep(0.02)
    assert handle.status() == "FAILED"
    with pytest.raises(FlowFailedError) as ei:
        handle.result(timeout=1)
    assert isinstance(ei.value.__cause__, RuntimeError) and "gateway down" in str(ei.value)
    assert m.EFFECTS.count("charge") == 3 and m.EFFECTS.count("prepare") == 1  # 3 runs, not a hot loop
    assert time.monotonic() - started >= 0.05 + 0.1  # it waited between the runs
    assert query(engine, "SELECT failures FROM flows WHERE flow_id='fl1'") == [(3,)]
    lines = [r.getMessage() for r in caplog.records if r.name == "transparent_de"]
    assert sum("failed (run" in line for line in lines) == 2 and any("FAILED after 3" in line for line in lines)
    # Re-running a dead-lettered flow does not run anything: it is FAILED until retried.
    with pytest.raises(FlowFailedError):
        transparent_de.run(m.Flaky().run, 2, flow_id="fl1")
    assert m.EFFECTS.count("charge") == 3


def test_retry_rearms_the_dead_letter_and_replays_completed_steps(engine, flow_module):
    m = flow_module(SOURCE)
    handle = transparent_de.start(m.Flaky().run, 2, flow_id="fl2")
    deadline = time.monotonic() + 20
    while handle.status() != "FAILED":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    m.BROKEN["on"] = False
    assert transparent_de.retry("fl2").result(timeout=10) == 20
    assert m.EFFECTS.count("prepare") == 1  # replayed, not run again
    assert query(engine, "SELECT status, failures FROM flows WHERE flow_id='fl2'") == [("COMPLETE", 0)]
    with pytest.raises(transparent_de.TransparentDEError, match="COMPLETE"):
        transparent_de.retry("fl2")


class _OnLog(logging.Handler):
    """Calls ``act`` (in the logging thread) for the first record whose message holds ``text``."""

    def __init__(self, text: str, act) -> None:
        super().__init__(logging.DEBUG)
        self.text, self.act, self.fired = text, act, False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.fired and self.text in record.getMessage():
            self.fired = True
            self.act()


def test_retry_while_the_failed_run_is_still_unwinding_runs_the_flow_again(engine, flow_module):
    """The window that made the test above flaky, held open: the dead letter is committed (the
    journal says FAILED) but its run has not let go of the flow here yet when retry() comes.
    The retry is kept until the run is over, and the run's ending does not mark it stopped."""
    m = flow_module(SOURCE)
    reached, proceed = threading.Event(), threading.Event()

    def hold() -> None:  # in the failing run's thread, after the commit, before it unwinds
        reached.set()
        proceed.wait(20)

    hook = _OnLog("FAILED after", hold)
    logging.getLogger("transparent_de").addHandler(hook)
    try:
        transparent_de.start(m.Flaky().run, 2, flow_id="fl3")
        assert reached.wait(20), "the flow never failed"
        assert query(engine, "SELECT status FROM flows WHERE flow_id='fl3'") == [("FAILED",)]
        assert engine.is_active("fl3")  # the window: its run still holds it
        m.BROKEN["on"] = False
        handle = transparent_de.retry("fl3")
    finally:
        proceed.set()
        logging.getLogger("transparent_de").removeHandler(hook)
    assert handle.result(timeout=10) == 20
    assert m.EFFECTS.count("prepare") == 1 and m.EFFECTS.count("charge") == 4
    assert "fl3" not in engine.refused


@pytest.mark.parametrize("wake", ["signal", "timer"])
def test_a_wake_up_due_while_the_flow_is_busy_here_runs_it_once_that_run_is_over(engine, flow_module, wake):
    """A parked flow's signal or timer that falls due while a run of it still holds it here (a
    run that parked and has not let go of its reservation yet; held here by the test, as the
    unwinding run holds it) is kept and resumes the flow when the reservation goes."""
    m = flow_module(SOURCE)
    fid = f"busy-{wake}"
    entry = m.Stubborn().run if wake == "signal" else m.Nap().run
    handle = transparent_de.start(entry, flow_id=fid)
    parked = [("confirm", None)] if wake == "signal" else [(None, None)]
    deadline = time.monotonic() + 10
    while (
        query(engine, "SELECT waiting_for, owner FROM flows WHERE flow_id=?", (fid,)) != parked
        or engine.scheduler.busy(fid)  # its job is over too
    ):
        assert time.monotonic() < deadline, "the flow did not park"
        time.sleep(0.01)
    deferred = threading.Event()
    hook = _OnLog(f"flow {fid} is due while busy here", deferred.set)
    log = logging.getLogger("transparent_de")
    log.addHandler(hook)
    level = log.level
    log.setLevel(logging.DEBUG)
    engine.reserve(fid)  # as the run that parked holds it until it has unwound
    try:
        if wake == "signal":
            transparent_de.signal(fid, "confirm", "yes")
        assert deferred.wait(10), "the wake-up was not kept for after the busy run"
        assert not handle.done()
    finally:
        engine.unreserve(fid)
        log.setLevel(level)
        log.removeHandler(hook)
    assert handle.result(timeout=10) == ("yes" if wake == "signal" else "awake")


def test_an_unpicklable_result_is_bounded_too(engine, flow_module):
    m = flow_module(SOURCE)
    handle = transparent_de.start(m.Unpicklable().run, flow_id="up")
    with pytest.raises(FlowFailedError) as ei:
        handle.result(timeout=20)
    assert isinstance(ei.value.__cause__, SerializationError)
    assert m.EFFECTS.count("lock") == 2


def test_progress_ends_a_streak_of_failures(engine, flow_module):
    """A run that completes a step before failing starts the count again (a flow that makes
    progress is not a dead letter)."""
    m = flow_module(SOURCE)
    for _ in range(2):  # foreground runs count too; each fails at charge() without progress after
        with pytest.raises(RuntimeError):
            transparent_de.run(m.Flaky().run, 5, flow_id="streak")
    assert query(engine, "SELECT failures, status FROM flows WHERE flow_id='streak'") == [(2, "PENDING")]
    with pytest.raises(RuntimeError):
        transparent_de.run(m.Flaky().run, 5, flow_id="streak")
    assert query(engine, "SELECT status FROM flows WHERE flow_id='streak'") == [("FAILED",)]
    assert query(engine, "SELECT failures FROM flows WHERE flow_id='streak'") == [(3,)]


def test_worker_until_idle_reports_failures(engine, flow_module):
    m = flow_module(SOURCE)
    with pytest.raises(RuntimeError):
        transparent_de.run(m.Flaky().run, 1, flow_id="w1")
    report = transparent_de.worker(until_idle=True)
    # max_recovery_attempts=3: the foreground run was the first; the worker makes two more, the
    # second of which ends the flow FAILED. Each failed run counts, a retried one too.
    assert (report.failed_runs, report.failed, report.ok) == (2, ["w1"], False)


# --------------------------------------------------------------------------- journal errors are engine errors


@pytest.mark.sqlite_only
def test_a_full_disk_after_the_body_is_an_engine_error_not_a_step_outcome(tmp_path, flow_module):
    m = flow_module(SOURCE)
    eng = Engine(tmp_path / "j.db", durability="process", hmac_key=None)
    try:
        con = eng.store.file.conn()
        pages = con.execute("PRAGMA page_count").fetchone()[0]
        con.execute(f"PRAGMA max_page_count = {pages + 3}")
        with pytest.raises(JournalIOError) as ei:
            eng.run(m.Careless().run, 400_000, flow_id="full")
        err = ei.value
        assert err.flow_id == "full" and err.step == 1 and "Careless" in str(err) and "resume" in str(err)
        assert m.EFFECTS == ["big"]
        con.execute("PRAGMA max_page_count = 1073741823")
        # Not FAILED although failure="final", not held: resumable at once, and the step runs again.
        assert query(eng, "SELECT status, owner FROM flows WHERE flow_id='full'") == [("PENDING", None)]
        assert eng.run(m.Careless().run, 400_000, flow_id="full") == "x" * 400_000
        assert m.EFFECTS == ["big", "big"]
    finally:
        eng.close()


# --------------------------------------------------------------------------- signals


def _waiting(engine: Engine, fid: str) -> None:
    deadline = time.monotonic() + 10
    while query(engine, "SELECT waiting_for FROM flows WHERE flow_id=?", (fid,)) != [("confirm",)]:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_signal_the_step_cannot_take_is_refused_before_it_is_stored(engine, flow_module):
    m = flow_module(SOURCE)
    transparent_de.start(m.Approve().run, flow_id="sg1")
    _waiting(engine, "sg1")
    with pytest.raises(SignalError, match="cannot take") as ei:
        transparent_de.signal("sg1", "confirm")  # the answer is missing
    assert "confirm(answer, note='')" in str(ei.value) and ei.value.flow_id == "sg1"
    with pytest.raises(SignalError, match="cannot take"):
        transparent_de.signal("sg1", "confirm", "yes", colour="red")
    with pytest.raises(SignalError, match="entry"):
        transparent_de.signal("sg1", "run")
    for bad in ("not a name", "", 7):  # not a step name at all
        with pytest.raises(SignalError, match="identifier"):
            transparent_de.signal("sg1", bad)  # type: ignore[arg-type]
    assert query(engine, "SELECT count(*) FROM signals") == [(0,)]


def test_cancel_ends_the_flow_and_its_step_0(engine, flow_module):
    m = flow_module(SOURCE)
    transparent_de.start(m.Approve().run, flow_id="cx")
    _waiting(engine, "cx")
    transparent_de.cancel("cx")
    assert query(engine, "SELECT status FROM flows WHERE flow_id='cx'") == [("CANCELLED",)]
    assert query(engine, "SELECT status FROM execution_log WHERE flow_id='cx' AND step=0") == [("CANCELLED",)]


def test_a_signalled_step_that_raises_is_a_step_like_any_other(engine, flow_module):
    m = flow_module(SOURCE)
    handle = transparent_de.start(m.Approve().run, flow_id="sg2")
    _waiting(engine, "sg2")
    transparent_de.signal("sg2", "confirm", "bad")
    transparent_de.signal("sg2", "confirm", "good", note="!")
    assert handle.result(timeout=10) == ("refused bad answer", "good!")
    assert m.EFFECTS == [("confirm", "bad"), ("confirm", "good")]


def test_a_failing_signalled_step_does_not_eat_later_signals(engine, flow_module):
    m = flow_module(SOURCE)
    handle = transparent_de.start(m.Stubborn().run, flow_id="sg3")
    _waiting(engine, "sg3")
    transparent_de.signal("sg3", "confirm", "bad")
    with pytest.raises(FlowFailedError):
        handle.result(timeout=20)
    with pytest.raises(SignalError, match="FAILED"):
        transparent_de.signal("sg3", "confirm", "good")  # nothing waits for it any more
    assert m.EFFECTS == [("confirm", "bad")] * 2  # retried with its own signal, per the policy
    assert query(engine, "SELECT consumed_step FROM signals WHERE flow_id='sg3'") == [(1,)]


def test_cli_signal_arguments_are_checked(tde):
    proc = tde.popen("run", "clitestflows.flows:Order.approval", '"bob"', "--flow-id", "w1")
    try:
        deadline = time.monotonic() + 30
        while True:
            listed = tde.json("list", "--status", "waiting_for_signal") if tde.db.exists() else []
            if any(f["flow_id"] == "w1" for f in listed):
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        missing = tde("signal", "w1", "confirm")
        assert missing.returncode == 2 and "cannot take" in missing.stderr, missing.stderr
        garbled = tde("signal", "w1", "confirm", '{"ok": tru')
        assert garbled.returncode == 2 and "looks like JSON" in garbled.stderr
        assert tde("signal", "w1", "confirm", "true").returncode == 0
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0 and '"ok": true' in out
    finally:
        proc.kill()


# --------------------------------------------------------------------------- a flow id names one call


def test_a_finished_flow_id_reused_with_other_arguments_is_refused(engine, flow_module):
    m = flow_module(SOURCE)
    m.BROKEN["on"] = False
    assert transparent_de.run(m.Flaky().run, 3, flow_id="once") == 30
    assert transparent_de.run(m.Flaky().run, 3, flow_id="once") == 30  # the same call: its result
    with pytest.raises(NonDeterminismError) as ei:
        transparent_de.run(m.Flaky().run, 4, flow_id="once")
    text = str(ei.value)
    assert "finished" in text and "run(3)" in text and "run(4)" in text
