"""What async flow code awaits besides steps: durable timers, signals and races (issue #16).

The async twins of :mod:`._waits`. Each takes its lineage slot where flow code *calls* it,
before anything is awaited, and returns a coroutine, so its identity does not depend on
timing (see :mod:`._lineage`):

* ``await asyncio.sleep(s)``: a journaled timer; after a restart only the rest is awaited;
* ``await transparent_de.wait_for(self.step, timeout=...)``: a durable signal wait, then the
  step runs with the signal's arguments (an async or a sync step);
* ``asyncio.wait`` (``FIRST_COMPLETED``, ``FIRST_EXCEPTION`` or a timeout),
  ``asyncio.wait_for(aw, timeout)`` and ``asyncio.as_completed``: which tasks finished first
  is a :class:`~._decisions.Decisions` outcome, journaled as a row of class ``asyncio`` and
  replayed, so a race decided one way before a crash is decided the same way after it.

Parking. A flow run in the background (``start``, ``recover``, the worker) that waits long
is parked as a sync flow is: unwound with :class:`~._unwind.Park`, its event loop and pool
thread released, resumed by the scheduler from the journal. That is only done where the
unwinding runs none of the flow's code, which for async flows also means: the wait is
awaited in the flow's own task and no other task of the flow is alive (a sibling would be
cancelled, running its handlers). Elsewhere the flow waits in place, a suspended coroutine.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from . import _clock, _faults, _lineage
from ._entries import declaring_class
from ._serialization import fingerprint
from ._store.base import Captured, Complete, Intent, StepRow, Waiting
from ._trampoline import CAPTURED, LAZY_CAPTURED
from ._unwind import Park
from ._waits import _take_signal, _time_left, begin_wait, frames_allow_park
from .errors import TransparentDEError, WaitTimeoutError

if TYPE_CHECKING:
    from ._async_run import AsyncRun

_real_sleep = asyncio.sleep
_real_wait = asyncio.wait
_real_wait_for = asyncio.wait_for
_real_as_completed = asyncio.as_completed
_RACES = frozenset({"wait", "wait_for", "as_completed"})  # the methods of decision rows
_RETURN_WHEN = (asyncio.FIRST_COMPLETED, asyncio.FIRST_EXCEPTION, asyncio.ALL_COMPLETED)
for _name in LAZY_CAPTURED["asyncio"]:  # in flow code these are journaled (see capture below)
    CAPTURED[getattr(asyncio, _name)] = f"asyncio.{_name}"


def parkable(run: AsyncRun, frame: Any) -> bool:
    """May this async flow park at ``frame`` (the engine's coroutine flow code awaits)?"""
    if not run.background or _lineage.current() is not run.lineage.root or run.lineage.unfinished():
        return False
    return frames_allow_park(run, frame)


def capture(run: AsyncRun, what: str, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """``asyncio.<what>(...)`` called in async flow code."""
    if what == "asyncio.sleep":
        return sleep(run, *args, **kwargs)
    if what == "asyncio.wait":
        return wait(run, *args, **kwargs)
    if what == "asyncio.wait_for":
        return wait_for(run, *args, **kwargs)
    if what == "asyncio.as_completed":
        return as_completed(run, *args, **kwargs)
    return fn(*args, **kwargs)  # pragma: no cover - every asyncio name captured is handled above


# --------------------------------------------------------------------------- durable timers


def sleep(run: AsyncRun, delay: float, result: Any = None) -> Coroutine[Any, Any, Any]:
    """``asyncio.sleep(delay)`` in flow code: a journaled timer, its slot taken at the call.

    A delay of 0 (or less) is the idiom for "let other tasks run": it takes no slot and
    writes nothing (whether a delay is 0 depends on flow state only, so ids stay stable).
    """
    if isinstance(delay, bool) or not isinstance(delay, (int, float)):
        raise TypeError(f"asyncio.sleep() delay must be a number, not {type(delay).__name__}")
    if delay <= 0:
        return _real_sleep(0, result)
    ms = max(1, round(delay * 1000))
    step = run._next()
    fp = fingerprint(ms)
    row = run.rows.get(step)
    if row is not None:
        run._check(step, row, "asyncio", "sleep", fp)
    coro = _timer(run, step, ms, fp, row, result)
    run.unawaited[step] = ("asyncio.sleep", coro)
    return coro


async def _timer(run: AsyncRun, step: int, ms: int, fp: str, row: StepRow | None, result: Any) -> Any:
    run.unawaited.pop(step, None)
    if row is not None and row.status == "COMPLETE":
        await _real_sleep(0)
        return result
    if row is not None:
        deadline = row.timestamp + (row.delay or 0)
    else:
        ts = _clock.now_ms()
        await run.commit_durably("sleep.start.mid_txn", Intent(step, ts, "asyncio", "sleep", "sleep", None, fp, None, ms))
        _faults.point("sleep.after_deadline_written")
        deadline = ts + ms
    left = _time_left(run, deadline, ms)
    if left * 1000 > run.engine.park_after_ms and parkable(run, sys._getframe()):
        raise Park(wake_at=deadline, waiting_for=None, after=left)
    await _real_sleep(left)
    _faults.point("sleep.wake.before_commit")
    run.carry(Complete(step, None, _clock.now_ms()))
    return result


# --------------------------------------------------------------------------- signals


def wait_signal(run: AsyncRun, obj: Any, name: str, timeout: float | None) -> Coroutine[Any, Any, Any]:
    """``await wait_for(self.step)`` in async flow code: the slot now, the wait when awaited."""
    step = run._next()
    cls_name = declaring_class(obj, name)
    row = run.rows.get(step)
    if row is not None:
        run._check(step, row, cls_name, name, None)
    coro = _signal(run, step, obj, name, cls_name, row, timeout)
    run.unawaited[step] = (name, coro)
    return coro


async def _signal(
    run: AsyncRun, step: int, obj: Any, name: str, cls_name: str, row: StepRow | None, timeout: float | None
) -> Any:
    """WAITING_FOR_SIGNAL until ``signal(...)`` brings the arguments, then the step (_waits.wait_signal)."""
    run.unawaited.pop(step, None)
    if row is not None:
        if row.status == "COMPLETE":
            return run._decode(row.return_value, step, b"r")
        if row.status == "FAILED":
            raise run._replay_failure(step, row)
        if row.status == "PENDING" and row.parameters is not None:
            # The signal was taken but the step did not finish: run it again with its arguments.
            args, kwargs = run._decode(row.parameters, step, b"p")
            return await run.deliver_signal(step, obj, name, cls_name, row, args, kwargs)
    started = begin_wait(run, step, cls_name, name, row, timeout)
    if row is None:
        row = StepRow(step, cls_name, name, "PENDING", 1, None, None, None, None, started, None, "signal")
    length = None if timeout is None else int(timeout * 1000)
    ends = None if length is None else _clock.mono() + _time_left(run, started + length, length)
    shown_waiting = False
    while True:
        taken = _take_signal(run, step, name)
        if taken is not None:
            if shown_waiting:
                run.carry(Waiting(None, _clock.now_ms()))  # rides with the step's intent
            return await run.deliver_signal(step, obj, name, cls_name, row, *taken)
        left = None if ends is None else ends - _clock.mono()
        if left is not None and left <= 0:
            exc = WaitTimeoutError(flow_id=run.flow_id, step=name, timeout=timeout or 0.0)
            run._record_failure(step, name, exc)
            raise exc
        if (left is None or left * 1000 > run.engine.park_after_ms) and parkable(run, sys._getframe()):
            raise Park(None if length is None else started + length, name, left)
        if not shown_waiting:  # a caller awaits here: say so in the journal (list, --status)
            run.commit("signal.wait.mid_txn", Waiting(name, _clock.now_ms()))
            shown_waiting = True
        poll = run.engine.poll_interval
        await _real_sleep(poll if left is None else min(poll, left))


# --------------------------------------------------------------------------- races


def recorded_races(run: AsyncRun) -> dict[str, tuple[str, ...]]:
    """The journal's race outcomes of this flow, ``{slot ident: task keys}`` (replayed)."""
    found: dict[str, tuple[str, ...]] = {}
    for row in run.rows.values():
        race = row.class_name == "asyncio" and row.method_name in _RACES
        if race and row.lineage and row.status == "COMPLETE":
            found[row.lineage] = tuple(run._decode(row.return_value, row.step, b"r"))
    return found


def race_slot(run: AsyncRun, what: str) -> _lineage.Slot:
    """A decision's slot, checked against the journal's row there (the Decisions' ``reserve``)."""
    step = run._next()
    row = run.rows.get(step)
    if row is not None:
        run._check(step, row, "asyncio", what, None)
    run.races[step] = what
    return _lineage.Slot(*_lineage.parse_ident(run.idents[step]), step)


def record_race(run: AsyncRun, slot: _lineage.Slot, outcome: tuple[str, ...]) -> None:
    """A live decision: carried with the flow's next write, like a captured value. Whatever
    flow code does with the outcome that is journaled is written in a later transaction."""
    what = run.races.get(slot.step, "wait")
    blob = run._encode(outcome, slot.step, f"asyncio.{what}", "the race's outcome", b"r")
    run.carry(Captured(slot.step, _clock.now_ms(), "asyncio", what, blob, None, slot.ident))


def _refused(run: AsyncRun, call: str, why: str) -> TransparentDEError:
    return TransparentDEError(
        f"flow {run.spec.class_name} (id {run.flow_id}): {call} in async flow code {why}, so a "
        "replay could decide it another way"
    )


def wait(
    run: AsyncRun,
    fs: Iterable[Any],
    *,
    timeout: float | None = None,
    return_when: str = asyncio.ALL_COMPLETED,
) -> Any:
    """``asyncio.wait``: recorded when its outcome depends on timing (first done, a timeout)."""
    fs = list(fs) if not isinstance(fs, (set, frozenset)) else fs
    invalid = not fs or return_when not in _RETURN_WHEN
    if sys.version_info >= (3, 11) and any(inspect.iscoroutine(f) for f in fs):
        invalid = True  # asyncio.wait refuses coroutines from 3.11: let it say so
    if invalid or (timeout is None and return_when == asyncio.ALL_COMPLETED):
        return _real_wait(fs, timeout=timeout, return_when=return_when)
    if isinstance(fs, (set, frozenset)) and any(inspect.iscoroutine(f) for f in fs):
        raise _refused(run, "asyncio.wait() of a set of coroutines", "makes tasks in the set's order")
    return run.decisions.wait(fs, timeout=timeout, return_when=return_when)


def wait_for(run: AsyncRun, fut: Any, timeout: float | None = None) -> Any:
    """``asyncio.wait_for(aw, timeout)``: whether it timed out is recorded.

    The awaitable becomes a task of the flow on every Python version (the plain function
    makes one on 3.10/3.11 only), so its task key does not depend on the interpreter.
    """
    if timeout is None:
        return _real_wait_for(fut, None)
    task = asyncio.ensure_future(fut)
    return _wait_for(run, task, run.decisions.wait([task], timeout=max(0.0, timeout), what="wait_for"))


async def _wait_for(run: AsyncRun, task: asyncio.Future[Any], decided: Any) -> Any:
    try:
        done, _ = await decided
    except asyncio.CancelledError:
        task.cancel()  # as asyncio.wait_for: cancelling the wait cancels what it waits for
        raise
    if task in done:
        return task.result()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    else:  # it finished as it was cancelled: its result stands, as with asyncio.wait_for
        return task.result()
    raise asyncio.TimeoutError


def as_completed(run: AsyncRun, fs: Iterable[Any], *, timeout: float | None = None) -> Any:
    """``asyncio.as_completed``: the order tasks finish in is recorded, one decision per next()."""
    if timeout is not None:
        raise _refused(run, "asyncio.as_completed(..., timeout=...)", "is not recorded yet; use asyncio.wait")
    if isinstance(fs, (set, frozenset)) and any(inspect.iscoroutine(f) for f in fs):
        raise _refused(run, "asyncio.as_completed() of a set of coroutines", "makes tasks in the set's order")
    return run.decisions.as_completed(list(fs))
