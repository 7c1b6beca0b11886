"""Async flows (issue #16): ``async def`` entries and steps, journaled with scheduling-free ids.

An :class:`AsyncRun` is a :class:`~._run.Run` whose step numbers come from
:mod:`._lineage` instead of a counter: each journaled call (an async or sync step, a captured
value, a durable ``asyncio.sleep``) takes a *slot* ``(task key, n)`` synchronously where flow
code calls it, before any ``await``, and the slot maps to the journal's ``step`` number. The
slot's ident is written in ``execution_log.lineage``; on replay the journal's
``lineage -> step`` rows give every slot its recorded number again, whatever order the tasks
of ``gather`` / ``TaskGroup`` / ``create_task`` reach their calls or finish in now. Rows stay
one per step with ordered integer ``step`` numbers, so ``show`` and plain SQL read async
flows like sync ones (docs/async.md).

What an async step returns is a coroutine of the same shape whether it runs or is replayed,
so ``gather`` creates the same tasks either way, and a replayed step runs no code of its own.
Its body runs inside :func:`step_body`: plain code, where nothing is numbered or journaled.

Where the flow code is. The run is the same object in every task of the flow (tasks copy
the context holding :data:`~._trampoline.current_run`); "inside a step body" is per task,
a context variable, since one task may be in a step while another runs flow code.

Not here yet (docs/async.md, "Not supported yet"): parking (a long ``asyncio.sleep`` is
awaited in place), ``wait_for`` signals and child flows from async flow code, journal writes
off the event loop (each write blocks the loop for one commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import sys
import threading
import warnings
import zlib
from collections.abc import Callable, Coroutine, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from . import _async_waits, _faults, _lineage, _waits
from ._decisions import Decisions
from ._entries import bound_entry, canonical_call, check_flow_id, declaring_class, entry_wrapper, spec_of
from ._handle import AsyncFlowHandle
from ._run import _INTERRUPTIONS, Run, check_call
from ._serialization import fingerprint
from ._store.base import Captured, Intent, LeaseLost, Op, StepRow
from ._trampoline import ACTIVE, current_run
from ._unwind import EngineUnwind, Park
from .errors import LeaseLostError, TransparentDEError

if TYPE_CHECKING:
    from ._engine import Engine
    from ._marking import FlowSpec
    from ._runner import Runner

log = logging.getLogger("transparent_de")

#: True while the running task executes a step body (plain code: nothing in it is journaled).
_IN_STEP: ContextVar[bool] = ContextVar("transparent_de_in_step", default=False)
_real_async_sleep = asyncio.sleep


async def _body(call: Callable[[], Any]) -> Any:
    """Await an async step's body: plain code (see :func:`step_body`)."""
    token = _IN_STEP.set(True)
    try:
        with _lineage.suspended():
            return await call()
    finally:
        _IN_STEP.reset(token)


@contextlib.contextmanager
def step_body() -> Iterator[None]:
    """Run a step body: outside the lineage (tasks it makes take no number) and not journaled."""
    token = _IN_STEP.set(True)
    try:
        with _lineage.suspended():
            yield
    finally:
        _IN_STEP.reset(token)


_ASYNC: dict[Any, bool] = {}


def is_async(fn: Any) -> bool:
    """Is ``fn`` (a step guard, entry wrapper or plain function) an ``async def``? Cached."""
    found = _ASYNC.get(fn)
    if found is None:
        raw = getattr(fn, "__tde_step__", fn)
        raw = getattr(raw, "__tde_entry__", raw)
        code = getattr(raw, "__code__", None)
        found = _ASYNC[fn] = code is not None and bool(code.co_flags & inspect.CO_COROUTINE)
    return found


class AsyncRun(Run):
    """One execution (or replay) of an async flow: lineage slots instead of a step counter."""

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
        super().__init__(engine, flow_id, flow, spec, fence, rows, background, woken, failures)
        recorded = {r.lineage: r.step for r in rows.values() if r.lineage}
        self.lineage = _lineage.Lineage(
            flow_id=flow_id, recorded=recorded, next_step=max(rows, default=0) + 1
        )
        self.idents: dict[int, str] = {}  # step -> slot ident, for the rows this run writes
        self.unawaited: dict[int, tuple[str, Coroutine[Any, Any, Any]]] = {}
        self.carry = self._carry
        self.races: dict[int, str] = {}  # step -> the asyncio call a race decision stands for
        self.decisions = Decisions(
            _async_waits.recorded_races(self),
            on_record=lambda slot, outcome: _async_waits.record_race(self, slot, outcome),
            reserve=lambda what: _async_waits.race_slot(self, what),
        )

    # In flow code unless this task is in a step body (see the module docstring). The setter
    # ignores Run's own bookkeeping, which is per run, not per task.
    @property
    def in_step(self) -> bool:
        return _IN_STEP.get()

    @in_step.setter
    def in_step(self, value: bool) -> None:
        pass

    # ------------------------------------------------------------------ numbering, writes

    def _next(self) -> int:
        """The step number of a journaled call made now: its lineage slot's."""
        try:
            slot = _lineage.reserve()
        except _lineage.LineageError as exc:
            raise self._poison(exc) from None
        if slot is None:  # a thread without the flow's context, or engine code
            raise self._poison(
                TransparentDEError(
                    f"flow {self.spec.class_name} (id {self.flow_id}): a journaled call was made outside "
                    "the flow's tasks, where its identity would depend on timing. Call steps from flow code"
                )
            )
        self.idents[slot.step] = slot.ident
        self.counter = max(self.counter, slot.step)
        return slot.step

    def identity(self, step: int) -> int:
        """Live step numbers depend on timing here; the slot does not: its task key's hash, then
        its index, so values grow along one task's calls (testing.deterministic_capture)."""
        key, _, n = self.idents.get(step, f"0:{step}").partition(":")
        return zlib.crc32(key.encode()) % 100_000 * 100_000 + int(n)

    def _poison(self, error: TransparentDEError) -> TransparentDEError:
        if self.poisoned is None:
            self.poisoned = error
        return error

    def _tag(self, op: Op) -> Op:
        """An intent or captured row gets its slot ident (the ``lineage`` column)."""
        if (type(op) is Intent or type(op) is Captured) and op.lineage is None:
            ident = self.idents.get(op.step)
            if ident is not None:
                return dataclasses.replace(op, lineage=ident)
        return op

    def commit(self, label: str, *ops: Op) -> None:
        super().commit(label, *(self._tag(op) for op in ops))

    async def commit_durably(self, label: str, *ops: Op) -> None:
        """One fenced commit of this flow, power-loss durable under ``durability="full"``, with
        the waiting done off the event loop, so other flows on the loop run meanwhile:

        * on a server (PostgreSQL) the commit itself is a round trip: it runs in one of the
          engine's writer threads. The flusher leaves the flow's carried rows alone while it is
          queued there (they ride in this commit);
        * on a SQLite file the commit runs here (tens of µs, no I/O wait) and, under ``"full"``,
          the fsync in the engine's sync thread: one fsync covers every commit made before it
          started, so flows committing while it runs share the next one (group commit).
        """
        if self.store.remote:
            self.writer.queued += 1
            try:
                pool = self.engine.async_writer()
                done = asyncio.get_running_loop().run_in_executor(pool, self._commit_synced, label, ops)
                try:
                    await asyncio.shield(done)
                except asyncio.CancelledError:
                    # The commit goes on in its thread: let it land before the caller writes
                    # anything else for the flow (a cancelled step's outcome comes after it).
                    with contextlib.suppress(BaseException):
                        await done
                    raise
            finally:
                self.writer.queued -= 1
            return
        self.commit(label, *ops)
        if self.writer.full:
            await asyncio.get_running_loop().run_in_executor(self.engine.async_writer(), self.sync)

    def _commit_synced(self, label: str, ops: tuple[Op, ...]) -> None:
        self.commit(label, *ops)
        self.sync()

    def _carry(self, op: Op) -> None:
        self.writer.carry(self._tag(op))

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
        """A step called from async flow code: its slot is taken now, at the call.

        An async step returns a coroutine (the step runs, or is replayed, when it is awaited);
        a sync step runs (or is replayed) at once, as in a sync flow.
        """
        __tracebackhide__ = True
        if threading.get_ident() != self.thread:
            self.foreign_thread_call(name)
        target = fn or getattr(type(obj), name)
        step = self._next()
        cls_name = owner or declaring_class(obj, name)
        fp = fingerprint(canonical_call(target, obj, args, kwargs))
        row = self.rows.get(step)
        if row is not None:
            check_call(self, step, row, cls_name, name, fp, (args, kwargs))

        def call() -> Any:
            with step_body():
                return getattr(obj, name)(*args, **kwargs) if fn is None else fn(obj, *args, **kwargs)

        if not is_async(target):
            if row is not None and row.status == "COMPLETE":
                return self._decode(row.return_value, step, b"r")
            if row is not None and row.status == "FAILED":
                raise self._replay_failure(step, row)
            subject = (obj, target)
            return self._execute(step, cls_name, name, site, args, kwargs, fp, row, call, "step", subject)
        coro = self._async_step(step, cls_name, name, site, args, kwargs, fp, row, call, (obj, target))
        self.unawaited[step] = (name, coro)
        return coro

    async def _async_step(
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
        subject: tuple[Any, Callable[..., Any]] | None = None,
    ) -> Any:
        """Replay or execute an async step: the async twin of :meth:`Run._execute`."""
        __tracebackhide__ = True
        self.unawaited.pop(step, None)
        if not self.active:
            raise TransparentDEError(
                f"flow {self.spec.class_name} (id {self.flow_id}), step {step} ({name}): awaited after "
                "the flow returned, so it cannot be journaled. Await every step inside the flow"
            )
        if row is not None and row.status == "COMPLETE":
            return self._decode(row.return_value, step, b"r")
        if row is not None and row.status == "FAILED":
            raise self._replay_failure(step, row)
        params = self._encode((args, kwargs), step, name, "the arguments", b"p")
        tries = 0
        while True:
            tries += 1
            _faults.point("step.intent.before_write")
            intent = self._intent(step, row, tries, cls_name, name, "step", params, fp, site)
            try:
                await self.commit_durably("step.intent.mid_txn", intent)  # with the previous result
                _faults.point("step.intent.after_commit")
                result = await _body(call)
            except asyncio.CancelledError:  # while its intent was written, or in its body
                if self._cancelled_by_flow():  # the flow's code cancelled it: its outcome
                    self._record_failure(step, name, asyncio.CancelledError())
                raise
            except _INTERRUPTIONS:  # engine errors of the write too (EngineUnwind, LeaseLost)
                raise
            except BaseException as exc:
                delay = self._retry_delay(step, name, exc, tries)
                if delay is None:
                    raise
                await _real_async_sleep(delay)
                continue
            self._finish(step, name, result, fp, args, kwargs, subject)
            return result

    def _cancelled_by_flow(self) -> bool:
        """Was a step cancelled by the flow's own code (``task.cancel()``, a ``wait_for`` timeout,
        a TaskGroup aborting), rather than the flow itself being cancelled (its caller, its loop
        shutting down)? Only the first is the step's outcome, journaled so a replay cancels it
        again without running its body; the second interrupts the run, which stays resumable.
        Told apart by the flow's own task having a cancellation pending (``Task.cancelling()``,
        3.11+). On 3.10 a cancellation is never journaled: the step runs again on replay."""
        if sys.version_info < (3, 11) or not self.active:
            return False
        root = self.lineage.root.task()
        return root is not None and not root.done() and root.cancelling() == 0

    # ------------------------------------------------------------------ captured calls, waits, races

    def capture(
        self, what: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Captured calls as in sync flows (numbered by slot); ``asyncio.*`` see _async_waits."""
        if what.startswith("asyncio."):
            return _async_waits.capture(self, what, fn, args, kwargs)
        if what == "time.sleep":
            raise TransparentDEError(
                f"flow {self.spec.class_name} (id {self.flow_id}): time.sleep() in async flow code would "
                "block the event loop; use await asyncio.sleep(...), a durable timer in async flows"
            )
        return super().capture(what, fn, args, kwargs)

    def sleep(self, seconds: float) -> None:
        raise TransparentDEError(f"flow {self.spec.class_name}: use await asyncio.sleep() in async flows")

    def wait_signal(self, obj: Any, name: str, timeout: float | None) -> Any:
        """``await transparent_de.wait_for(self.step)``: a coroutine (see _async_waits)."""
        return _async_waits.wait_signal(self, obj, name, timeout)

    async def deliver_signal(
        self,
        step: int,
        obj: Any,
        name: str,
        cls_name: str,
        row: StepRow,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Run a signalled step (async or sync) with the signal's arguments, journaled as a step."""

        def call() -> Any:
            with step_body():
                return getattr(obj, name)(*args, **kwargs)

        if is_async(getattr(type(obj), name)):
            return await self._async_step(step, cls_name, name, "", args, kwargs, None, row, call)
        return self._execute(step, cls_name, name, "", args, kwargs, None, row, call, kind="signal")

    def child_flow(
        self, obj: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], fn: Callable[..., Any]
    ) -> Any:
        """An entry of another flow called from async flow code: a child flow, one step of this
        one, with the id ``<flow id>.<step>`` (see _waits.child_flow). An async child is awaited
        here, on this loop; a sync child runs at once, on the loop, as a sync step does."""
        if not is_async(fn):
            return _waits.child_flow(self, obj, name, args, kwargs, fn)
        step = self._next()
        cls_name = declaring_class(obj, name)
        fp = fingerprint(canonical_call(fn, obj, args, kwargs))
        row = self.rows.get(step)
        if row is not None:
            check_call(self, step, row, cls_name, name, fp, (args, kwargs))
        child = _waits.child_id(self.flow_id, step)

        def call() -> Coroutine[Any, Any, Any]:
            return _child(self.engine.runner, obj, name, args, kwargs, child, fn)

        coro = self._async_step(step, cls_name, name, "", args, kwargs, fp, row, call, (obj, fn))
        self.unawaited[step] = (name, coro)
        return coro

    # ------------------------------------------------------------------ the end of the flow

    def leftovers(self) -> None:
        """At the entry's return: warn about steps never awaited, refuse tasks left running."""
        for step, (name, coro) in sorted(self.unawaited.items()):
            started = inspect.getcoroutinestate(coro) != inspect.CORO_CREATED
            coro.close()  # instead of Python's anonymous "never awaited" warning
            if started:  # a task cancelled before it ran (a race decided on replay): it was awaited
                continue
            message = (
                f"flow {self.spec.class_name} (id {self.flow_id}), step {step} ({name}): called but never "
                "awaited, so it did not run and was not journaled. Await it (or gather it)"
            )
            log.warning("%s", message)
            warnings.warn(message, RuntimeWarning, stacklevel=1)
        self.unawaited.clear()
        running = [
            (n.key, t)
            for t, n in list(self.lineage._tasks.items())
            if n is not self.lineage.root and not t.done()
        ]
        if running:
            for _, task in running:
                task.cancel()  # it must not journal anything once the flow is over
            keys = ", ".join(sorted((k for k, _ in running), key=_lineage.key_sort))
            raise _lineage.LineageError(
                flow_id=self.flow_id,
                key=keys,
                reason=(
                    "still running when the flow returned, so what it does would not be journaled "
                    "(it was cancelled). Await every task the flow creates before it returns"
                ),
            )


# --------------------------------------------------------------------------- running async entries


async def _child(
    runner: Runner, obj: Any, name: str, args: Any, kwargs: Any, child: str, fn: Callable[..., Any]
) -> Any:
    """A child flow's run, inside its parent's step: flow code again (its own run, its own lineage)."""
    run_token, step_token = current_run.set(None), _IN_STEP.set(False)
    try:
        return await run_entry_async(runner, obj, name, args, kwargs, child, False, fn)
    finally:
        current_run.reset(run_token)
        _IN_STEP.reset(step_token)


async def run_entry_async(
    runner: Runner,
    obj: Any,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    flow_id: str | None,
    background: bool,
    fn: Callable[..., Any],
    woken: int = 0,
) -> Any:
    """The async twin of :meth:`Runner.run_entry`: claim, drive on the running loop, finish."""
    run, value = runner.open_run(AsyncRun, obj, name, args, kwargs, flow_id, background, fn, woken)
    if run is None:
        return value
    try:
        return await _drive(runner, run, fn, obj, args, kwargs)
    finally:
        run.end()
        runner.engine.unreserve(run.flow_id)


async def _drive(
    runner: Runner, run: AsyncRun, fn: Callable[..., Any], obj: Any, args: Any, kwargs: Any
) -> Any:
    """Execute (or replay) the entry coroutine and journal how the run ended (as Runner._drive)."""
    try:
        try:
            token = current_run.set(run)
            ACTIVE[id(obj)] = run
            try:
                with run.lineage.bound():
                    try:
                        result = await fn(obj, *args, **kwargs)
                    finally:
                        pending = run.unawaited  # an exception may leave steps never awaited too
                    run.leftovers()
            finally:
                current_run.reset(token)
                if ACTIVE.get(id(obj)) is run:
                    del ACTIVE[id(obj)]
                for _, coro in pending.values():
                    coro.close()
            if run.poisoned is not None:
                raise EngineUnwind(run.poisoned)
            done = runner.completion(run, result)
            await run.commit_durably("flow.complete.mid_txn", done)
            _faults.point("flow.complete.after_commit")
            return result
        except Park as park:  # a long wait of a background flow (_async_waits.parkable)
            runner._park(run, park)
            raise
        except (_faults.InjectedCrash, EngineUnwind, LeaseLost):
            raise
        except Exception as exc:
            runner._fail(run, exc)
            raise
        except asyncio.CancelledError as exc:
            if not run._cancelled_by_flow():  # the flow itself was cancelled: resumable
                run.writer.release()
                raise
            # The flow's own code let a cancellation it made escape its entry: the run's
            # outcome, as an exception's would be (else every recovery would end so again).
            runner._fail(run, exc)
            raise
        except BaseException:  # KeyboardInterrupt, SystemExit: resumable, free for recovery
            run.writer.release()
            raise
    except EngineUnwind as unwind:
        run.writer.release()
        raise unwind.error.with_traceback(unwind.__traceback__) from None
    except LeaseLost:
        raise LeaseLostError(flow_id=run.flow_id, flow_class=run.spec.class_name) from None


_waits.DRIVES.add(_drive.__code__)  # flow code's frames end here (see _waits.frames_allow_park)


def run_blocking(
    runner: Runner,
    obj: Any,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    flow_id: str | None,
    background: bool,
    fn: Callable[..., Any],
    woken: int = 0,
) -> Any:
    """An async entry run from sync code (``run()``, ``start()``, ``recover()``): to completion on
    an event loop of its own, in this thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run_entry_async(runner, obj, name, args, kwargs, flow_id, background, fn, woken))
    raise TransparentDEError(
        f"flow {spec_of(obj).class_name}: entry {name}() is async def and this thread runs an event loop; "
        "await it instead: await transparent_de.run_async(entry, ...) or await Flow().entry(...)"
    )


def run_async(
    engine: Engine, entry: Callable[..., Any], *args: Any, flow_id: str | None = None, **kwargs: Any
) -> Coroutine[Any, Any, Any]:
    """``await run_async(Flow().run, ...)``: run (or resume) an async flow on the running loop."""
    obj, name, fn = bound_entry(entry)
    if not is_async(fn):
        raise TypeError(f"{spec_of(obj).class_name}.{name} is not async def; use transparent_de.run()")
    return run_entry_async(engine.runner, obj, name, args, kwargs, flow_id, False, fn)


async def start_async(
    engine: Engine, entry: Callable[..., Any], *args: Any, flow_id: str | None = None, **kwargs: Any
) -> AsyncFlowHandle:
    """``handle = await start_async(Flow().run, ...)``: the flow exists when this returns and runs
    as a task on the running loop, in the background (long sleeps and waits park it)."""
    from ._engine import _settle_current_flow

    obj, name, fn = bound_entry(entry)
    if not is_async(fn):
        raise TypeError(f"{spec_of(obj).class_name}.{name} is not async def; use transparent_de.start()")
    _settle_current_flow()
    runner = engine.runner
    fid = check_flow_id(flow_id) if flow_id is not None else runner.fresh_id(obj, name)
    state = runner.claim(obj, name, args, kwargs, fid, fn, create_only=True)  # the rows, now
    handle = AsyncFlowHandle(engine, fid)
    if isinstance(state, tuple):  # finished already: its outcome
        handle._set(*state)
        return handle
    handle.task = asyncio.ensure_future(_job(runner, handle, obj, name, args, kwargs, fn))
    return handle


async def _job(
    runner: Runner, handle: AsyncFlowHandle, obj: Any, name: str, args: Any, kwargs: Any, fn: Any
) -> None:
    """Run a started flow on this loop; its outcome goes to the handle (as the scheduler's jobs)."""
    from ._runner import RetryLater
    from .errors import FlowBusyError

    try:
        value = await run_entry_async(runner, obj, name, args, kwargs, handle.id, True, fn)
    except (Park, RetryLater, FlowBusyError, LeaseLostError, _faults.InjectedCrash):
        return  # resumed later or elsewhere: the handle reads the outcome from the journal
    except Exception as exc:
        handle._set(False, exc)
        return
    handle._set(True, value)


def async_entry(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    """The wrapper of an ``async def`` entry: a plain function returning an awaitable, so that
    ``await Flow().run(x)`` starts a flow, and the same entry called on the running flow takes
    its slot at the call, like any step."""

    def start(self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        from . import _api

        return run_entry_async(_api.default_engine().runner, self, name, args, kwargs, None, False, original)

    entry = entry_wrapper(name, original, start)
    mark = getattr(inspect, "markcoroutinefunction", None)  # 3.12+: iscoroutinefunction(Flow.run) holds
    return mark(entry) if mark is not None else entry
