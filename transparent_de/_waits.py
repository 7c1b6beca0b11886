"""What flow-level code calls besides steps: captured values, durable sleep, ``wait_for``
signals, child flows.

Captured calls (``time.time()``, ``random.random()`` ...) are recorded once and replayed.
The others are the parts of a run that wait: a durable ``time.sleep``, ``wait_for(self.step)`` for
a signal, and an entry of another flow called as one step. A background flow that waits long
is parked (:class:`~._unwind.Park`), but only where unwinding would run none of the flow's own
code (:func:`_may_park`). Times follow :mod:`._clock`: journaled deadlines are wall-clock,
waiting is monotonic, and a resumed wait never lasts longer than its own length.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _clock, _faults
from . import _versions as V
from ._entries import canonical_call, declaring_class
from ._serialization import fingerprint, signal_context
from ._store.base import Captured, Complete, ConsumeSignal, Intent, Retry, StepRow, Waiting
from ._trampoline import current_run
from ._unwind import EngineUnwind, Park
from .errors import JournalError, TransparentDEError, UnsupportedPythonError, WaitTimeoutError

if TYPE_CHECKING:
    from ._run import Run

log = logging.getLogger("transparent_de")
_real_sleep = time.sleep
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
#: The engine's frames that drive an entry (Runner._drive, the async _drive): flow code's
#: frames end there. Set by the modules defining them.
DRIVES: set[Any] = set()


def _may_park(run: Run) -> bool:
    """May this flow unwind to park here? Not if that would run code of the flow that the
    plain program would not run at this point (a ``finally``, a ``with`` exit, an ``except``
    that catches everything, in any frame of flow code): then the flow waits in its thread
    instead, as plain Python would (it keeps a pool thread while it waits)."""
    if run._parkable is not None and run._parkable[0] == run.counter:
        return run._parkable[1]
    ok = frames_allow_park(run, sys._getframe(1))
    run._parkable = (run.counter, ok)
    return ok


def frames_allow_park(run: Run, frame: Any) -> bool:
    """Would unwinding from ``frame`` up to the engine's driver run none of the flow's code?

    In async flows the walk goes up the chain of awaiting coroutines (each awaited
    coroutine's frame links back to the one awaiting it), to the async driver.
    """
    while frame is not None and frame.f_code not in DRIVES:
        if not frame.f_code.co_filename.startswith(_PACKAGE) and V.unwinding_runs_code(frame, Park):
            log.info(
                "flow %s waits in place at %s:%d: a handler there would run if it parked",
                run.flow_id, frame.f_code.co_filename, frame.f_lineno,
            )  # fmt: skip
            return False
        frame = frame.f_back
    return True


def _time_left(run: Run, deadline: int, length: int) -> float:
    """Seconds until a journaled wall-clock deadline of a sleep or wait ``length`` ms long.

    None left if the scheduler woke this run for it (it timed the wait on its monotonic
    clock); never more than ``length``, so a wall clock stepped back since the deadline
    was written cannot make the sleep or wait last longer than asked (docs: _clock).
    """
    if run.woken and deadline <= run.woken:
        return 0.0
    return max(0, min(deadline - _clock.now_ms(), length)) / 1000


# --------------------------------------------------------------------------- durable sleep


def sleep(run: Run, seconds: float) -> None:
    """``time.sleep`` in flow code: a journaled timer; after a restart only the rest is slept."""
    step = run._next()
    delay = max(0, round(seconds * 1000))
    fp = fingerprint(delay)
    row = run.rows.get(step)
    if row is not None:
        run._check(step, row, "time", "sleep", fp)
        if row.status == "COMPLETE":
            return
        deadline = row.timestamp + (row.delay or 0)
    else:
        ts = _clock.now_ms()
        run.commit("sleep.start.mid_txn", Intent(step, ts, "time", "sleep", "sleep", None, fp, None, delay))
        run.sync()
        _faults.point("sleep.after_deadline_written")
        deadline = ts + delay
        run.rows[step] = StepRow(
            step, "time", "sleep", "PENDING", 1, None, None, fp, None, ts, delay, "sleep"
        )
    remaining = _time_left(run, deadline, delay)
    if remaining > 0:
        if run.background and remaining * 1000 > run.engine.park_after_ms and _may_park(run):
            raise Park(wake_at=deadline, waiting_for=None, after=remaining)
        _real_sleep(remaining)
    _faults.point("sleep.wake.before_commit")
    run.carry(Complete(step, None, _clock.now_ms()))  # rides with the next write, as a step's result


# --------------------------------------------------------------------------- signals


def wait_signal(run: Run, obj: Any, name: str, timeout: float | None) -> Any:
    """``wait_for(run.step)``: WAITING_FOR_SIGNAL until ``signal(...)`` brings the arguments."""
    step = run._next()
    cls_name = declaring_class(obj, name)
    row = run.rows.get(step)
    if row is not None:
        run._check(step, row, cls_name, name, None)
        if row.status == "COMPLETE":
            return run._decode(row.return_value, step, b"r")
        if row.status == "FAILED":
            raise run._replay_failure(step, row)
        if row.status == "PENDING" and row.parameters is not None:
            # The signal was taken but the step did not finish: run it again with its arguments.
            args, kwargs = run._decode(row.parameters, step, b"p")
            return run._execute(
                step,
                cls_name,
                name,
                "",
                args,
                kwargs,
                None,
                row,
                lambda: getattr(obj, name)(*args, **kwargs),
                kind="signal",
            )
    started = begin_wait(run, step, cls_name, name, row, timeout)
    length = None if timeout is None else int(timeout * 1000)
    ends = None if length is None else _clock.mono() + _time_left(run, started + length, length)
    shown_waiting = False
    while True:
        taken = _take_signal(run, step, name)
        if taken is not None:
            if shown_waiting:
                run.carry(Waiting(None, _clock.now_ms()))  # rides with the step's intent
            args, kwargs = taken
            return run._execute(
                step,
                cls_name,
                name,
                "",
                args,
                kwargs,
                None,
                row
                or StepRow(
                    step, cls_name, name, "PENDING", 1, None, None, None, None, started, None, "signal"
                ),
                functools.partial(getattr(obj, name), *args, **kwargs),
                kind="signal",
            )
        left = None if ends is None else ends - _clock.mono()
        if left is not None and left <= 0:
            exc = WaitTimeoutError(flow_id=run.flow_id, step=name, timeout=timeout or 0.0)
            run._record_failure(step, name, exc)
            raise exc
        if run.background and (left is None or left * 1000 > run.engine.park_after_ms) and _may_park(run):
            raise Park(None if length is None else started + length, name, left)
        if not shown_waiting:  # a caller blocked here: say so in the journal (list, --status)
            run.commit("signal.wait.mid_txn", Waiting(name, _clock.now_ms()))
            shown_waiting = True
        run.engine._wait_for_signal_event(
            run.engine.poll_interval if left is None else min(run.engine.poll_interval, left)
        )


def begin_wait(run: Run, step: int, cls_name: str, name: str, row: StepRow | None, timeout: float | None) -> int:
    """Journal that the flow waits at ``step`` for a signal to ``name`` (again, for a known row);
    the wait's start (wall ms), which its timeout counts from. Shared by sync and async waits."""
    if row is not None:
        run.commit("signal.wait.mid_txn", Retry(step, _clock.now_ms(), status=None))
        return row.timestamp
    started = _clock.now_ms()
    delay = None if timeout is None else int(timeout * 1000)
    wait = Intent(step, started, cls_name, name, "signal", None, None, None, delay, "WAITING_FOR_SIGNAL")
    run.commit("signal.wait.mid_txn", wait)
    run.sync()
    _faults.point("signal.wait.after_write")
    return started


def _take_signal(run: Run, step: int, name: str) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """Consume the oldest pending signal for ``name`` into this step's row, in one transaction.

    The payload is verified against its ``signals`` row and re-signed for the step row
    (same bytes, new MAC) before anything is unpickled, and both rows change in the same
    commit: no crash can leave a consumed signal or a half-moved payload behind.
    """
    try:
        found = run.store.next_signal(run.flow_id, name)
        if found is None:
            return None
        seq, payload = found
        where = run._where(step)
        old = signal_context(run.flow_id, name, seq)
        params = run.codec.reseal(payload, old, run._ctx(step, b"p"), where)
        args, kwargs = run.codec.open(params, run._ctx(step, b"p"), where)
    except (JournalError, UnsupportedPythonError) as exc:
        raise EngineUnwind(run._at_step(exc)) from None
    # Conditional on the signal being unconsumed; only this flow's owner (fenced) consumes it.
    run.commit("signal.deliver.mid_txn", ConsumeSignal(seq, step, params, _clock.now_ms()))
    return args, kwargs


# --------------------------------------------------------------------------- child flows


def child_id(parent: str, step: int) -> str:
    """A child flow's id: ``<parent id>.<step>``, so a re-run of the parent resumes the same child."""
    return f"{parent}.{step}"


def parent_id(flow_id: str) -> str | None:
    """The parent's id of a child flow's id (see :func:`child_id`); None for other ids."""
    parent, dot, step = flow_id.rpartition(".")
    return parent if dot and step.isdigit() else None


def child_flow(
    run: Run, obj: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], fn: Callable[..., Any]
) -> Any:
    """An entry of another flow called from flow-level code: a child flow, journaled as one step.

    The child's id is :func:`child_id`, so a re-run of the parent resumes the same child.
    """
    step = run._next()
    cls_name = declaring_class(obj, name)
    fp = fingerprint(canonical_call(fn, obj, args, kwargs))
    row = run.rows.get(step)
    if row is not None:
        run._check(step, row, cls_name, name, fp, (args, kwargs))
        if row.status == "COMPLETE":
            return run._decode(row.return_value, step, b"r")
        if row.status == "FAILED":
            raise run._replay_failure(step, row)
    child = child_id(run.flow_id, step)

    def call() -> Any:
        token = current_run.set(None)
        try:
            return run.engine.runner.run_entry(obj, name, args, kwargs, child, background=False, fn=fn)
        finally:
            current_run.reset(token)

    return run._execute(step, cls_name, name, "", args, kwargs, fp, row, call, "step", (obj, fn))


def capture(
    run: Run, what: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``time.time()``, ``random.randint(...)`` ... in flow code: recorded once, replayed after."""
    if what == "time.sleep":
        if len(args) != 1 or kwargs:
            raise TypeError(f"time.sleep() takes exactly one argument ({len(args) + len(kwargs)} given)")
        secs = args[0]
        if not isinstance(secs, (int, float)):
            raise TypeError(f"'{type(secs).__name__}' object cannot be interpreted as an integer")
        if secs < 0:
            raise ValueError("sleep length must be non-negative")
        return run.sleep(float(secs))
    if what.startswith("asyncio."):  # in sync flow code: the coroutine, as plain Python (never awaited there)
        return fn(*args, **kwargs)
    if what == "random.SystemRandom":
        raise TransparentDEError(
            f"flow {run.spec.class_name} (id {run.flow_id}): random.SystemRandom() in flow code cannot "
            "be replayed (it reads the OS's entropy on every call and has no state to record). Use the "
            "secrets module or random.* functions (both recorded and replayed), or draw inside a step."
        )
    step = run._next()
    module, _, method = what.rpartition(".")
    fp = fingerprint((args, kwargs)) if what != "random.shuffle" else None
    row = run.rows.get(step)
    if row is not None:
        run._check(step, row, module, method, fp)
        if row.status == "COMPLETE":
            value = run._decode(row.return_value, step, b"r")
            if what == "random.shuffle":
                args[0][:] = value
                return None
            return value
    override = _faults.capture_override
    result = fn(*args, **kwargs) if override is None else override(what, run.identity(step), fn, args, kwargs)
    value = list(args[0]) if what == "random.shuffle" else result
    blob = run._encode(value, step, what, "the captured value", b"r")
    run.carry(Captured(step, _clock.now_ms(), module, method, blob, fp))
    return result
