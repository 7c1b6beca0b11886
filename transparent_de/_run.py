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

import inspect
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _clock, _faults, _waits
from . import _preview as preview
from ._entries import canonical_call, declaring_class
from ._exceptions import ExceptionRecord, record
from ._marking import FlowSpec
from ._serialization import EncodeError, fingerprint, is_flat, step_context
from ._store.base import (
    Complete,
    Fence,
    Intent,
    LeaseLost,
    Op,
    Retry,
    StepFailed,
    StepRow,
    Store,
)
from ._unwind import EngineUnwind, Park, RemoteError
from ._writes import FlowWriter
from .errors import (
    JournalError,
    JournalIOError,
    NonDeterminismError,
    SerializationError,
    TransparentDEError,
    UnsupportedPythonError,
)

if TYPE_CHECKING:
    from ._engine import Engine

_real_sleep = time.sleep


_MUTATION_WARNED: set[tuple[str, str]] = set()
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
        self.entry = ""  # the name of the entry this run executes (set by the runner)
        self.poisoned: TransparentDEError | None = None  # set by a step called from another thread
        # The write path: fenced commits that take the carried rows first (_writes).
        self.writer = FlowWriter(
            self.store, self.fence, engine.scheduler.flusher, engine.durability == "full"
        )
        # carry(op): keep a step's result or a captured value for the flow's next write instead
        # of committing it now (one commit per step; FlowWriter.carry says why that is safe).
        self.carry = self.writer.carry
        self.failures: dict[int, BaseException] = {}  # step -> exception raised into flow code
        self.codec = engine.codec
        self.thread = threading.get_ident()

    # ------------------------------------------------------------------ helpers

    def _ctx(self, step: int, kind: bytes) -> bytes:
        """The row identity a signed blob is bound to (unused, so not built, without a key)."""
        if not self.codec.signing:
            return b""
        return step_context(self.flow_id, step, kind)

    def _where(self, step: int) -> Callable[[], dict[str, Any]]:
        return lambda: {"path": self.store.path, "flow_id": self.flow_id, "step": step}

    def _encode(self, value: Any, step: int, method: str, what: str, kind: bytes) -> bytes:
        try:
            return self.codec.seal(value, self._ctx(step, kind))
        except EncodeError as exc:
            detail = str(exc)
            if inspect.iscoroutine(value):  # an async def step called from sync flow code
                value.close()
                detail = (
                    "it is a coroutine: an async def step must be awaited in async def flow code "
                    "(make the entry async def), or made a plain def step"
                )
            raise SerializationError(
                flow_id=self.flow_id,
                flow_class=self.spec.class_name,
                step=step,
                method=method,
                what=what,
                detail=detail,
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

    def identity(self, step: int) -> int:
        """A number for the journaled call at ``step`` that is the same in every run of the flow
        (for sweeps comparing runs, see testing.deterministic_capture): its position."""
        return step

    def _check(self, *args: Any) -> None:
        check_call(self, *args)

    def commit(self, label: str, *ops: Op) -> None:
        """One fenced transaction of this flow: the carried rows, then ``ops``. ``label`` names
        the crash point before its COMMIT.

        A journal error is an engine error, not a step's outcome: it unwinds the flow.
        """
        if self.poisoned is not None:
            raise EngineUnwind(self.poisoned)
        try:
            self.writer.commit(label, ops)
        except JournalError as exc:
            raise EngineUnwind(self._at_step(exc)) from None

    def flush(self) -> None:
        """Write the carried rows now (before flow code acts on other flows), power-loss
        durably under ``durability="full"``."""
        if self.writer.pending:
            self.commit("flow.flush.mid_txn")
            if self.writer.full:
                self.sync()

    def end(self) -> None:
        """The run is over (however it ended): nothing more is written for it."""
        self.active = False
        self.writer.close()

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

    def call_step(
        self,
        obj: Any,
        name: str,
        site: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        fn: Callable[..., Any] | None = None,
        owner: str | None = None,
    ) -> Any:
        """A step call from flow-level code: replay it, or journal and execute it.

        ``fn``/``owner``: the exact function called and the class declaring it, when the call
        came through a step guard (``super().step()``, ``getattr(self, "step")`` ...) rather
        than the rewritten call site (which calls ``obj.name``).
        """
        __tracebackhide__ = True
        if threading.get_ident() != self.thread:  # a context copied into another thread
            self.foreign_thread_call(name)
        step = self._next()
        _faults.point("step.enter")
        cls_name = owner or declaring_class(obj, name)
        fp = fingerprint(canonical_call(fn or getattr(type(obj), name), obj, args, kwargs))
        row = self.rows.get(step)
        if row is not None:
            check_call(self, step, row, cls_name, name, fp, (args, kwargs))
            if row.status == "COMPLETE":
                if self.engine._debug:
                    _debug_replay(self, step, name, "replayed")
                return self._decode(row.return_value, step, b"r")
            if row.status == "FAILED":
                if self.engine._debug:
                    _debug_replay(self, step, name, "replayed failure")
                raise self._replay_failure(step, row)
        if fn is None:
            return self._execute(
                step, cls_name, name, site, args, kwargs, fp, row, lambda: getattr(obj, name)(*args, **kwargs)
            )
        call = lambda: fn(obj, *args, **kwargs)  # noqa: E731 - the closure is the step's body
        return self._execute(step, cls_name, name, site, args, kwargs, fp, row, call, "step", (obj, fn))

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
        subject: tuple[Any, Callable[..., Any]] | None = None,
    ) -> Any:
        """Journal and execute a step; ``subject`` as for :func:`warn_if_mutated`.

        Its parts (:meth:`_intent`, :meth:`_write_intent`, :meth:`_retry_delay`,
        :meth:`_finish`) are the async step's too (_async_run); only the waiting differs.
        """
        __tracebackhide__ = True
        params = self._encode((args, kwargs), step, name, "the arguments", b"p")
        tries = 0
        while True:
            tries += 1
            _faults.point("step.intent.before_write")
            # _intent and _write_intent inlined: the sync step path is the hot one (~0.5 % of a
            # step's instructions for the two calls, callgrind).
            ts = _clock.now_ms()
            if row is None and tries == 1:
                intent: Op = Intent(step, ts, cls_name, name, kind, params, fp, site)
            else:
                intent = Retry(step, ts)
            self.commit("step.intent.mid_txn", intent)  # with the previous step's result
            if self.writer.full:
                self.sync()  # covers that result too: one fsync per step
            _faults.point("step.intent.after_commit")
            if self.engine._debug:
                _debug_replay(self, step, name, "executing")
            self.in_step = True
            try:
                result = call()
            except _INTERRUPTIONS:
                raise  # not the step's outcome: the run is being interrupted
            except BaseException as exc:
                self.in_step = False
                delay = self._retry_delay(step, name, exc, tries)
                if delay is None:
                    raise
                _real_sleep(delay)
                continue
            finally:
                self.in_step = False
            self._finish(step, name, result, fp, args, kwargs, subject)
            return result

    def _intent(
        self,
        step: int,
        row: StepRow | None,
        tries: int,
        cls_name: str,
        name: str,
        kind: str,
        params: bytes,
        fp: str | None,
        site: str,
    ) -> Op:
        """The row written before a step's body runs: its intent, or a retry of a known row."""
        ts = _clock.now_ms()
        if row is None and tries == 1:
            return Intent(step, ts, cls_name, name, kind, params, fp, site)
        return Retry(step, ts)

    def _write_intent(self, intent: Op) -> None:
        self.commit("step.intent.mid_txn", intent)  # with the previous step's result
        if self.writer.full:
            self.sync()  # covers that result too: one fsync per step

    def _retry_delay(self, step: int, name: str, exc: BaseException, tries: int) -> float | None:
        """A step's body raised: the seconds to wait before its next try (the flow's retry
        policy), or None once its failure is journaled (the caller re-raises)."""
        spec = self.spec
        if tries <= spec.retries and isinstance(exc, spec.retry_on):
            _faults.point("step.retry.before_backoff")
            return float(min(spec.backoff * (2 ** (tries - 1)), spec.max_backoff))
        self._record_failure(step, name, exc)
        return None

    def _finish(
        self,
        step: int,
        name: str,
        result: Any,
        fp: str | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        subject: tuple[Any, Callable[..., Any]] | None,
    ) -> None:
        """A step's body returned: carry its result to the flow's next write."""
        _faults.point("step.result.before_write")
        if result is self.flow:
            raise TransparentDEError(
                f"flow {self.spec.class_name} (id {self.flow_id}), step {step} ({name}): the step returned "
                "the flow object itself. A replay returns a copy, so code after it (self.setup().go()) "
                "would run on the copy, unjournaled. Return None or a value, and call the next step on self."
            )
        if fp is not None and not is_flat(args, kwargs):
            warn_if_mutated(self, name, fp, args, kwargs, subject)
        blob = self._encode(result, step, name, "the result", b"r")
        self.carry(Complete(step, blob, _clock.now_ms()))  # rides with the next write
        self.progressed = True
        _faults.point("step.result.carried")

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
        """A captured call in flow code (see :func:`._waits.capture`)."""
        return _waits.capture(self, what, fn, args, kwargs)

    # ------------------------------------------------------------------ time, signals, child flows

    def sleep(self, seconds: float) -> None:
        """``time.sleep`` in flow code (see :func:`._waits.sleep`)."""
        _waits.sleep(self, seconds)

    def wait_signal(self, obj: Any, name: str, timeout: float | None) -> Any:
        """``wait_for(self.step)`` (see :func:`._waits.wait_signal`)."""
        return _waits.wait_signal(self, obj, name, timeout)

    def child_flow(
        self, obj: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], fn: Callable[..., Any]
    ) -> Any:
        """An entry of another flow called from flow code (see :func:`._waits.child_flow`)."""
        return _waits.child_flow(self, obj, name, args, kwargs, fn)


def _debug_replay(run: Run, step: int, name: str, what: str) -> None:
    """``TDE_DEBUG=replay`` output; callers test ``engine._debug`` first (it is the step path)."""
    print(f"[tde replay] {run.flow_id} step {step} {name}: {what}", file=sys.stderr)


def check_call(
    run: Run,
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
                flow_id=run.flow_id,
                flow_class=run.spec.class_name,
                step=step,
                recorded=f"{row.class_name}.{row.method_name}(...)",
                current=f"{cls_name}.{method}(...)",
                reason="a different call at this position",
            )
        )
    if fp is not None and row.fingerprint is not None and row.fingerprint != fp:
        if call is not None and row.fingerprint == fingerprint(call):
            return
        recorded = preview.call_args(row.parameters, 80) if row.parameters else f"<args {row.fingerprint}>"
        current = preview.live_call_args(*call) if call is not None else f"<args {fp}>"
        raise EngineUnwind(
            NonDeterminismError(
                flow_id=run.flow_id,
                flow_class=run.spec.class_name,
                step=step,
                recorded=f"{method}({recorded})",
                current=f"{method}({current})",
                reason="the same call with different arguments",
            )
        )


def warn_if_mutated(
    run: Run,
    name: str,
    fp: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    subject: tuple[Any, Callable[..., Any]] | None = None,
) -> None:
    """Say once per step name when a step changed its arguments: a replay does not run the
    step, so the change would be missing after a crash (the plain program has it).

    ``subject``: the object and function the call's fingerprint was taken with, where that is
    not the flow's own method ``name`` (a base class's through ``super()``, a child flow's entry).
    """
    key = (run.spec.class_name, name)
    if key in _MUTATION_WARNED:
        return
    obj, fn = subject if subject is not None else (run.flow, getattr(type(run.flow), name))
    if fingerprint(canonical_call(fn, obj, args, kwargs)) != fp:
        _MUTATION_WARNED.add(key)
        log.warning(
            "flow %s, step %s changed its arguments (e.g. appended to a list it was given): a replay "
            "returns the step's result without running it, so that change is lost after a crash. "
            "Return the new value instead.",
            run.spec.class_name, name,
        )  # fmt: skip
