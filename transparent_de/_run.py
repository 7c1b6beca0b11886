"""One execution (or replay) of a flow: numbering, replay, journaling of steps and captures.

A :class:`Run` lives while the flow's entry method runs on one thread. The trampolines call
into it for every step call, captured value, durable sleep and signal wait in flow-level
code. Step numbers are positions in call order: 1, 2, 3 ... (0 is the flow itself), shared
by steps, captured values (``time.time()`` ...), timers and waits, so the log reads in the
order things happened.

Replay rule (the seed's): a row that is COMPLETE is not executed, its recorded value is
returned; a FAILED row re-raises its recorded exception; anything else (PENDING, waiting)
is executed again with ``attempts + 1``. At every position the recorded class, method and
argument fingerprint must match the call, or :class:`NonDeterminismError` is raised before
anything runs.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _clock, _faults
from . import _preview as preview
from . import _versions as V
from ._entries import canonical_call
from ._exceptions import ExceptionRecord, record
from ._marking import FlowSpec
from ._serialization import EncodeError, fingerprint, signal_context, step_context
from ._store.base import (
    Captured,
    Complete,
    ConsumeSignal,
    Fence,
    Intent,
    LeaseLost,
    Op,
    Retry,
    StepFailed,
    StepRow,
    Store,
    Waiting,
)
from ._trampoline import current_run
from .errors import (
    JournalError,
    JournalIOError,
    NonDeterminismError,
    SerializationError,
    TransparentDEError,
    UnsupportedPythonError,
    WaitTimeoutError,
)

if TYPE_CHECKING:
    from ._engine import Engine

_real_sleep = time.sleep


class Park(BaseException):
    """Unwinds a background flow that waits long: its thread is released, the scheduler resumes it.

    A ``BaseException`` so that ``except Exception`` in flow code cannot swallow it.
    ``wake_at`` is the journaled wall-clock deadline, ``after`` the seconds left as this
    process measured them (the scheduler times the wake-up on its monotonic clock).
    """

    def __init__(self, wake_at: int | None, waiting_for: str | None, after: float | None = None) -> None:
        super().__init__(f"flow parked (wake_at={wake_at}, waiting_for={waiting_for})")
        self.wake_at = wake_at
        self.waiting_for = waiting_for
        self.after = after


class EngineUnwind(BaseException):
    """An engine error met inside flow code (journal I/O, a damaged or unverifiable journal,
    non-determinism): it unwinds the flow past the flow's own ``except`` clauses, which must
    not take it for a step's outcome, and the runner hands ``error`` to the caller."""

    def __init__(self, error: TransparentDEError) -> None:
        super().__init__(str(error))
        self.error = error


class RemoteError(Exception):
    """Stands in for a step exception that could not be pickled (type name and message kept)."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteError, (self.type_name, self.message))


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_DRIVE: Any = None  # Runner._drive's code: where flow code's frames end (set by _runner)
log = logging.getLogger("transparent_de")

#: Exceptions that interrupt a step rather than being its outcome: never journaled as a result.
_INTERRUPTIONS = (
    KeyboardInterrupt,
    SystemExit,
    GeneratorExit,
    EngineUnwind,
    Park,
    LeaseLost,
    _faults.InjectedCrash,
)

_declaring: dict[tuple[type, str], str] = {}


def declaring_class(obj: Any, name: str) -> str:
    """``module.Qualname`` of the class in ``obj``'s MRO that defines ``name`` (cached: hot path)."""
    key = (type(obj), name)
    found = _declaring.get(key)
    if found is None:
        found = _declaring[key] = _find_declaring(type(obj), name)
    return found


def _find_declaring(cls: type, name: str) -> str:
    for klass in cls.__mro__:
        if name in vars(klass):
            return f"{klass.__module__}.{klass.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


class Run:
    """The state of one flow execution on one thread."""

    def __init__(
        self,
        engine: Engine,
        flow_id: str,
        flow: Any,
        spec: FlowSpec,
        fence: int,
        rows: dict[int, StepRow],
        background: bool,
        woken: int = 0,
        failures: int = 0,
    ) -> None:
        self.engine = engine
        self.store: Store = engine.store
        self.flow_id = flow_id
        self.flow = flow
        self.spec = spec
        self.steps = spec.steps
        self.fence = Fence(flow_id, engine.owner, fence, engine.lease_ms)
        self.rows = rows
        self.background = background
        self.woken = woken  # a journaled deadline the scheduler found due (see _time_left)
        self.failures_before = failures  # failed runs in a row before this one
        self._parkable: tuple[int, bool] | None = None  # (step, may park there), see _may_park
        self.progressed = False  # a step completed in this run (which ends a streak of failures)
        self.counter = 0
        self.in_step = False
        self.active = True
        self.poisoned: TransparentDEError | None = None  # set by a step called from another thread
        self.pending: list[Op] = []  # captured values not yet written: they ride with the next write
        self.failures: dict[int, BaseException] = {}  # step -> exception raised into flow code
        self.codec = engine.codec
        self.thread = threading.get_ident()

    # ------------------------------------------------------------------ helpers

    def _ctx(self, step: int, kind: bytes) -> bytes:
        """The row identity a signed blob is bound to (unused, so not built, without a key)."""
        if not self.codec.signing:
            return b""
        return step_context(self.flow_id, step, kind)

    def _may_park(self) -> bool:
        """May this flow unwind to park here? Not if that would run code of the flow that the
        plain program would not run at this point (a ``finally``, a ``with`` exit, an ``except``
        that catches everything, in any frame of flow code): then the flow waits in its thread
        instead, as plain Python would (it keeps a pool thread while it waits)."""
        if self._parkable is not None and self._parkable[0] == self.counter:
            return self._parkable[1]
        frame = sys._getframe(1)
        ok = True
        while frame is not None and frame.f_code is not _DRIVE:
            if not frame.f_code.co_filename.startswith(_PACKAGE) and V.unwinding_runs_code(frame, Park):
                ok = False
                log.info(
                    "flow %s waits in its thread at %s:%d: a handler there would run if it parked",
                    self.flow_id, frame.f_code.co_filename, frame.f_lineno,
                )  # fmt: skip
                break
            frame = frame.f_back  # type: ignore[assignment]
        self._parkable = (self.counter, ok)
        return ok

    def _time_left(self, deadline: int, length: int) -> float:
        """Seconds until a journaled wall-clock deadline of a sleep or wait ``length`` ms long.

        None left if the scheduler woke this run for it (it timed the wait on its monotonic
        clock); never more than ``length``, so a wall clock stepped back since the deadline
        was written cannot make the sleep or wait last longer than asked (docs: _clock).
        """
        if self.woken and deadline <= self.woken:
            return 0.0
        return max(0, min(deadline - _clock.now_ms(), length)) / 1000

    def _where(self, step: int) -> Callable[[], dict[str, Any]]:
        return lambda: {"path": self.store.path, "flow_id": self.flow_id, "step": step}

    def _encode(self, value: Any, step: int, method: str, what: str, kind: bytes) -> bytes:
        try:
            return self.codec.seal(value, self._ctx(step, kind))
        except EncodeError as exc:
            raise SerializationError(
                flow_id=self.flow_id,
                flow_class=self.spec.class_name,
                step=step,
                method=method,
                what=what,
                detail=str(exc),
            ) from None

    def _decode(self, blob: bytes | None, step: int, kind: bytes) -> Any:
        if blob is None:
            return None
        try:
            return self.codec.open(blob, self._ctx(step, kind), self._where(step))
        except (JournalError, UnsupportedPythonError) as exc:  # not an outcome of the flow's code
            raise EngineUnwind(exc) from None

    def _next(self) -> int:
        self.counter += 1
        return self.counter

    def _check(
        self,
        step: int,
        row: StepRow,
        cls_name: str,
        method: str,
        fp: str | None,
        call: tuple[tuple[Any, ...], dict[str, Any]] | None = None,
    ) -> None:
        """The determinism check: the journal's class, method and argument fingerprint at this
        position must be the call's. ``call`` (the arguments as called) lets a journal written
        before fingerprints were taken of bound arguments still match, and shows them."""
        if row.method_name != method or row.class_name != cls_name:
            raise EngineUnwind(
                NonDeterminismError(
                    flow_id=self.flow_id,
                    flow_class=self.spec.class_name,
                    step=step,
                    recorded=f"{row.class_name}.{row.method_name}(...)",
                    current=f"{cls_name}.{method}(...)",
                    reason="a different call at this position",
                )
            )
        if fp is not None and row.fingerprint is not None and row.fingerprint != fp:
            if call is not None and row.fingerprint == fingerprint(call):
                return
            recorded = (
                preview.call_args(row.parameters, 80) if row.parameters else f"<args {row.fingerprint}>"
            )
            current = preview.live_call_args(*call) if call is not None else f"<args {fp}>"
            raise EngineUnwind(
                NonDeterminismError(
                    flow_id=self.flow_id,
                    flow_class=self.spec.class_name,
                    step=step,
                    recorded=f"{method}({recorded})",
                    current=f"{method}({current})",
                    reason="the same call with different arguments",
                )
            )

    def commit(self, label: str, *ops: Op) -> None:
        """One fenced transaction of this flow (it renews the lease): the buffered captured
        values, then ``ops``. ``label`` names the crash point before its COMMIT.

        A journal error is an engine error, not a step's outcome: it unwinds the flow.
        """
        if self.poisoned is not None:
            raise EngineUnwind(self.poisoned)
        try:
            if self.pending:
                self.store.commit(self.fence, [*self.pending, *ops], label)
                self.pending = []
            else:
                self.store.commit(self.fence, ops, label)
        except JournalError as exc:
            raise EngineUnwind(self._at_step(exc)) from None

    def sync(self) -> None:
        """Make this flow's commits power-loss durable (``durability="full"``)."""
        try:
            self.store.sync()
        except JournalError as exc:
            raise EngineUnwind(self._at_step(exc)) from None

    def _at_step(self, exc: TransparentDEError) -> TransparentDEError:
        """The error, told which flow and step it stopped (I/O errors carry them in their message)."""
        if isinstance(exc, JournalIOError) and not exc.fields.get("flow_id"):
            return JournalIOError(
                path=exc.fields.get("path", ""),
                operation=exc.fields.get("operation", ""),
                detail=exc.fields.get("detail", ""),
                flow_id=self.flow_id,
                flow_class=self.spec.class_name,
                step=self.counter,
            )
        return exc

    def foreign_thread_call(self, name: str) -> None:
        """A step of this running flow called from another thread: refused there, and the flow
        fails at its next journal write (it must not complete as if the step had not been called)."""
        error = TransparentDEError(
            f"flow {self.spec.class_name} (id {self.flow_id}): step {name!r} was called from another "
            "thread than the flow's. Steps are numbered in call order, which threads make "
            "non-deterministic, so this call cannot be journaled. Call steps from flow code "
            "itself, and run concurrent work inside one step."
        )
        if self.poisoned is None:
            self.poisoned = error
        raise error

    # ------------------------------------------------------------------ steps

    def call_step(self, obj: Any, name: str, site: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A step call from flow-level code: replay it, or journal and execute it."""
        __tracebackhide__ = True
        if threading.get_ident() != self.thread:  # a context copied into another thread
            self.foreign_thread_call(name)
        step = self._next()
        _faults.point("step.enter")
        cls_name = declaring_class(obj, name)
        fp = fingerprint(canonical_call(getattr(type(obj), name), obj, args, kwargs))
        row = self.rows.get(step)
        if row is not None:
            self._check(step, row, cls_name, name, fp, (args, kwargs))
            if row.status == "COMPLETE":
                if self.engine._debug:
                    self.engine._debug_replay(self, step, name, "replayed")
                return self._decode(row.return_value, step, b"r")
            if row.status == "FAILED":
                if self.engine._debug:
                    self.engine._debug_replay(self, step, name, "replayed failure")
                raise self._replay_failure(step, row)
        return self._execute(
            step, cls_name, name, site, args, kwargs, fp, row, lambda: getattr(obj, name)(*args, **kwargs)
        )

    def _replay_failure(self, step: int, row: StepRow) -> BaseException:
        """The exception the step raised live, rebuilt as the flow saw it (see _exceptions)."""
        exc: Any = self._decode(row.error, step, b"e")
        if isinstance(exc, ExceptionRecord):
            exc = exc.rebuild()
        elif not isinstance(exc, BaseException):
            exc = RemoteError("unknown", repr(exc))
        self.failures[step] = exc
        result: BaseException = exc
        return result

    def _execute(
        self,
        step: int,
        cls_name: str,
        name: str,
        site: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        fp: str | None,
        row: StepRow | None,
        call: Callable[[], Any],
        kind: str = "step",
    ) -> Any:
        __tracebackhide__ = True
        params = self._encode((args, kwargs), step, name, "the arguments", b"p")
        spec = self.spec
        tries = 0
        while True:
            tries += 1
            _faults.point("step.intent.before_write")
            ts = _clock.now_ms()
            if row is None and tries == 1:
                intent: Op = Intent(step, ts, cls_name, name, kind, params, fp, site)
            else:
                intent = Retry(step, ts)
            self.commit("step.intent.mid_txn", intent)
            _faults.point("step.intent.after_commit")
            if self.engine._debug:
                self.engine._debug_replay(self, step, name, "executing")
            self.in_step = True
            try:
                result = call()
            except _INTERRUPTIONS:
                raise  # not the step's outcome: the run is being interrupted
            except BaseException as exc:
                self.in_step = False
                if tries <= spec.retries and isinstance(exc, spec.retry_on):
                    _faults.point("step.retry.before_backoff")
                    _real_sleep(min(spec.backoff * (2 ** (tries - 1)), spec.max_backoff))
                    continue
                self._record_failure(step, name, exc)
                raise
            finally:
                self.in_step = False
            _faults.point("step.result.before_write")
            blob = self._encode(result, step, name, "the result", b"r")
            self.commit("step.result.mid_txn", Complete(step, blob, _clock.now_ms()))
            self.progressed = True
            self.sync()
            _faults.point("step.result.after_commit")
            return result

    def _record_failure(self, step: int, name: str, exc: BaseException) -> None:
        """Journal a step's final exception: a replay re-raises it at the same point."""
        rec = record(exc)
        try:
            blob = self.codec.seal(rec, self._ctx(step, b"e"))
        except EncodeError:  # its type itself cannot be pickled (nor by dill)
            blob = self.codec.seal(
                record(RemoteError(type(exc).__qualname__, str(exc))), self._ctx(step, b"e")
            )
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        if rec.lost:
            text += (
                f"(replays keep the repr only of attribute(s) {', '.join(rec.lost)}: they do not pickle)\n"
            )
        self.commit("step.error.mid_txn", StepFailed(step, blob, text, _clock.now_ms()))
        self.sync()
        _faults.point("step.error.after_commit")
        self.failures[step] = exc

    # ------------------------------------------------------------------ captured values

    def capture(
        self, what: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """``time.time()``, ``random.randint(...)`` ... in flow code: recorded once, replayed after."""
        if what == "time.sleep":
            secs = args[0] if args else kwargs.get("secs", kwargs.get("seconds", 0))
            return self.sleep(float(secs))
        step = self._next()
        module, _, method = what.rpartition(".")
        fp = fingerprint((args, kwargs)) if what != "random.shuffle" else None
        row = self.rows.get(step)
        if row is not None:
            self._check(step, row, module, method, fp)
            if row.status == "COMPLETE":
                value = self._decode(row.return_value, step, b"r")
                if what == "random.shuffle":
                    args[0][:] = value
                    return None
                return value
        override = _faults.capture_override
        result = fn(*args, **kwargs) if override is None else override(what, step, fn, args, kwargs)
        value = list(args[0]) if what == "random.shuffle" else result
        blob = self._encode(value, step, what, "the captured value", b"r")
        self.pending.append(Captured(step, _clock.now_ms(), module, method, blob, fp))
        return result

    # ------------------------------------------------------------------ durable sleep

    def sleep(self, seconds: float) -> None:
        """``time.sleep`` in flow code: a journaled timer; after a restart only the rest is slept."""
        step = self._next()
        delay = max(0, round(seconds * 1000))
        fp = fingerprint(delay)
        row = self.rows.get(step)
        if row is not None:
            self._check(step, row, "time", "sleep", fp)
            if row.status == "COMPLETE":
                return
            deadline = row.timestamp + (row.delay or 0)
        else:
            ts = _clock.now_ms()
            self.commit(
                "sleep.start.mid_txn", Intent(step, ts, "time", "sleep", "sleep", None, fp, None, delay)
            )
            self.sync()
            _faults.point("sleep.after_deadline_written")
            deadline = ts + delay
            self.rows[step] = StepRow(
                step, "time", "sleep", "PENDING", 1, None, None, fp, None, ts, delay, "sleep"
            )
        remaining = self._time_left(deadline, delay)
        if remaining > 0:
            if self.background and remaining * 1000 > self.engine.park_after_ms and self._may_park():
                raise Park(wake_at=deadline, waiting_for=None, after=remaining)
            _real_sleep(remaining)
        _faults.point("sleep.wake.before_commit")
        self.commit("sleep.wake.mid_txn", Complete(step, None, _clock.now_ms()))

    # ------------------------------------------------------------------ signals

    def wait_signal(self, obj: Any, name: str, timeout: float | None) -> Any:
        """``wait_for(self.step)``: WAITING_FOR_SIGNAL until ``signal(...)`` brings the arguments."""
        step = self._next()
        cls_name = declaring_class(obj, name)
        row = self.rows.get(step)
        if row is not None:
            self._check(step, row, cls_name, name, None)
            if row.status == "COMPLETE":
                return self._decode(row.return_value, step, b"r")
            if row.status == "FAILED":
                raise self._replay_failure(step, row)
            if row.status == "PENDING" and row.parameters is not None:
                # The signal was taken but the step did not finish: run it again with its arguments.
                args, kwargs = self._decode(row.parameters, step, b"p")
                return self._execute(
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
            started = row.timestamp
            self.commit("signal.wait.mid_txn", Retry(step, _clock.now_ms(), status=None))
        else:
            started = _clock.now_ms()
            delay = None if timeout is None else int(timeout * 1000)
            wait = Intent(
                step, started, cls_name, name, "signal", None, None, None, delay, "WAITING_FOR_SIGNAL"
            )
            self.commit("signal.wait.mid_txn", wait)
            self.sync()
            _faults.point("signal.wait.after_write")
        length = None if timeout is None else int(timeout * 1000)
        ends = None if length is None else _clock.mono() + self._time_left(started + length, length)
        shown_waiting = False
        while True:
            taken = self._take_signal(step, name)
            if taken is not None:
                if shown_waiting:
                    self.pending.append(Waiting(None, _clock.now_ms()))  # rides with the step's intent
                args, kwargs = taken
                return self._execute(
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
                exc = WaitTimeoutError(flow_id=self.flow_id, step=name, timeout=timeout or 0.0)
                self._record_failure(step, name, exc)
                raise exc
            if (
                self.background
                and (left is None or left * 1000 > self.engine.park_after_ms)
                and self._may_park()
            ):
                raise Park(None if length is None else started + length, name, left)
            if not shown_waiting:  # a caller blocked here: say so in the journal (list, --status)
                self.commit("signal.wait.mid_txn", Waiting(name, _clock.now_ms()))
                shown_waiting = True
            self.engine._wait_for_signal_event(
                self.engine.poll_interval if left is None else min(self.engine.poll_interval, left)
            )

    def _take_signal(self, step: int, name: str) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """Consume the oldest pending signal for ``name`` into this step's row, in one transaction.

        The payload is verified against its ``signals`` row and re-signed for the step row
        (same bytes, new MAC) before anything is unpickled, and both rows change in the same
        commit: no crash can leave a consumed signal or a half-moved payload behind.
        """
        try:
            found = self.store.next_signal(self.flow_id, name)
            if found is None:
                return None
            seq, payload = found
            where = self._where(step)
            old = signal_context(self.flow_id, name, seq)
            params = self.codec.reseal(payload, old, self._ctx(step, b"p"), where)
            args, kwargs = self.codec.open(params, self._ctx(step, b"p"), where)
        except (JournalError, UnsupportedPythonError) as exc:
            raise EngineUnwind(self._at_step(exc)) from None
        # Conditional on the signal being unconsumed; only this flow's owner (fenced) consumes it.
        self.commit("signal.deliver.mid_txn", ConsumeSignal(seq, step, params, _clock.now_ms()))
        return args, kwargs

    # ------------------------------------------------------------------ child flows

    def child_flow(
        self, obj: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], fn: Callable[..., Any]
    ) -> Any:
        """An entry of another flow called from flow-level code: a child flow, journaled as one step.

        The child's id is ``<parent id>.<step>``, so a re-run of the parent resumes the same child.
        """
        step = self._next()
        cls_name = declaring_class(obj, name)
        fp = fingerprint(canonical_call(fn, obj, args, kwargs))
        row = self.rows.get(step)
        if row is not None:
            self._check(step, row, cls_name, name, fp, (args, kwargs))
            if row.status == "COMPLETE":
                return self._decode(row.return_value, step, b"r")
            if row.status == "FAILED":
                raise self._replay_failure(step, row)
        child_id = f"{self.flow_id}.{step}"

        def call() -> Any:
            token = current_run.set(None)
            try:
                return self.engine.runner.run_entry(
                    obj, name, args, kwargs, child_id, background=False, fn=fn
                )
            finally:
                current_run.reset(token)

        return self._execute(step, cls_name, name, "", args, kwargs, fp, row, call)
