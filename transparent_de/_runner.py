"""Running a flow from start to end: claim it, execute (or replay) its entry, record how it ended.

Ownership: a flow runs in one place at a time. Claiming it is compare-and-set on the flow's
fencing token (:meth:`~._store.base.Store.take_over`): the claimer that saw the current
token wins and bumps it, every later write of the flow is fenced by the new token, and a
claimer that lost the race reads the flow again.

**The takeover rule.** A flow may be claimed when nobody owns it, when its owner is known
dead (same host, its pid is gone), or when its owner has not renewed the lease for one
lease length *as measured by the claimer's own monotonic clock*: the claimer remembers the
``(owner, fence, lease_until)`` it saw and when, and only if that has not changed for
``lease_seconds`` does it take over. Every owner renews its leases (a heartbeat thread, every
third of a lease length), and a renewal always changes ``lease_until``. No wall clock is compared with
another process's: a claimer whose clock is an hour ahead, or an owner whose clock was
stepped back, cannot make a live owner's flow look abandoned. (One consequence: a process
that just started cannot take over a flow from an owner on another host at once; a worker
does so after watching it for one lease length.)

How a run ends is journaled by :meth:`Runner.run_entry`: the entry's result (step 0
COMPLETE), a park (:class:`~._unwind.Park`: the flow waits, released), an escaped exception
(the flow stays resumable, or ends FAILED under ``failure="final"``), or an interruption
(``KeyboardInterrupt``, a lost lease: nothing more is written).
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from . import _clock, _faults, _waits
from . import _preview as preview
from ._entries import (
    REBUILD,
    bind_entry,
    canonical_call,
    check_flow_id,
    entry_function,
    entry_owner,
    resolve_class,
    spec_of,
)
from ._exceptions import ExceptionRecord, record
from ._ownership import owner_alive
from ._run import Run
from ._serialization import EncodeError, fingerprint, flow_context, step_context
from ._store.base import (
    TERMINAL,
    Backoff,
    FlowComplete,
    FlowFailed,
    FlowIdentity,
    LeaseLost,
    NewFlow,
    Op,
    Parked,
    Reopen,
    StepRow,
)
from ._trampoline import ACTIVE, current_run
from ._unwind import EngineUnwind, Park, RemoteError
from .errors import (
    CorruptJournalError,
    FlowBusyError,
    FlowCancelledError,
    FlowFailedError,
    FlowNotFoundError,
    LeaseLostError,
    NonDeterminismError,
    SerializationError,
    TransparentDEError,
)

if TYPE_CHECKING:
    from ._engine import Engine

log = logging.getLogger("transparent_de")

_REBUILD_WARNED: set[type] = set()

_CO_COROUTINE = inspect.CO_COROUTINE

#: The kind of run :meth:`Runner.open_run` makes: a sync ``Run`` or the async one.
R = TypeVar("R", bound=Run)

#: Claims retried when another claimer changed the flow between our read and our write.
_CLAIM_ROUNDS = 50


@dataclass(frozen=True, slots=True)
class Claimed:
    """A flow this engine now owns: its fencing token, its journal rows, its failed runs so far."""

    fence: int
    rows: dict[int, StepRow]
    failures: int


class RetryLater(BaseException):
    """A background run failed; the flow is parked until its backoff ends (not a final outcome)."""

    def __init__(self, error: BaseException, failures: int, cap: int, delay: float) -> None:
        super().__init__(f"failed run {failures} of at most {cap}; next attempt in {delay:.1f} s")
        self.error, self.failures, self.cap, self.delay = error, failures, cap, delay


class Runner:
    """Claims, runs and finishes flows for one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._seen: dict[str, tuple[tuple[str, int, int | None], float]] = {}  # flow -> (lease seen, since)
        self._fresh_checked: set[tuple[str, str, str]] = set()

    # ------------------------------------------------------------------ claiming

    def claim(
        self,
        obj: Any,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        fid: str,
        fn: Callable[..., Any],
        create_only: bool = False,
    ) -> Claimed | tuple[bool, Any] | None:
        """Create the flow, or claim it for this engine. Returns a final outcome if it is finished,
        else ``(fencing token, journal rows, failed runs in a row so far)``. With
        ``create_only`` the flow is created (or found) without being claimed, and None is
        returned unless it is finished."""
        engine = self.engine
        store, codec = engine.store, engine.codec
        spec = spec_of(obj)
        bind_entry(obj, fn, name, args, kwargs)  # a TypeError before anything is written
        fp = fingerprint(canonical_call(fn, obj, args, kwargs))
        cls = type(obj)
        entry_cls = entry_owner(obj, name, fn)
        try:
            params = codec.seal((args, kwargs), step_context(fid, 0, b"p"))
        except EncodeError as exc:
            raise SerializationError(
                flow_id=fid,
                flow_class=spec.class_name,
                step=0,
                method=name,
                what="the flow's arguments",
                detail=str(exc),
            ) from None
        identity = flow_context(fid, cls.__module__, cls.__qualname__, name, entry_cls)
        try:
            instance = codec.seal(obj, identity)
        except EncodeError as exc:
            instance = codec.seal(REBUILD, identity)  # recover() calls the class, like the seed
            if cls not in _REBUILD_WARNED:
                _REBUILD_WARNED.add(cls)
                log.warning(
                    "flow %s: its object cannot be pickled (%s), so recover() in another process rebuilds "
                    "it with %s() and its state (configuration, clients) is not the one it started with. "
                    "Keep flow objects to plain data, or make the no-argument constructor set them up.",
                    spec.class_name, exc, cls.__qualname__,
                )  # fmt: skip
        _faults.point("flow.start.before_insert")
        for _ in range(_CLAIM_ROUNDS):
            state = store.flow_state(fid)
            if state is None:
                t = _clock.now_ms()
                new = NewFlow(
                    fid,
                    cls.__module__,
                    cls.__qualname__,
                    name,
                    instance,
                    entry_cls,
                    params,
                    fp,
                    None if create_only else engine.owner,
                    t + engine.lease_ms,
                    t,
                )
                if not create_only:
                    engine.reserve(fid)
                try:
                    created = store.create_flow(new)
                except BaseException:
                    engine.unreserve(fid)
                    raise
                if not created:  # somebody created it since we looked: read it again
                    engine.unreserve(fid)
                    continue
                _faults.point("flow.start.after_commit")
                return None if create_only else Claimed(1, {}, 0)
            if (state.entry_class, state.entry_method) != (entry_cls, name) or (
                state.fingerprint is not None
                and state.fingerprint != fp
                and state.fingerprint != fingerprint((args, kwargs))  # as journals before 0.1 fingerprinted
            ):
                finished = state.status in TERMINAL
                raise NonDeterminismError(
                    flow_id=fid,
                    flow_class=spec.class_name,
                    step=0,
                    recorded=f"{state.entry_class}.{state.entry_method}({preview.call_args(state.parameters, 80)})",
                    current=f"{entry_cls}.{name}({preview.live_call_args(args, kwargs)})",
                    reason=(
                        f"this flow id {'finished' if finished else 'was started'} with another entry or "
                        "other arguments; a flow id names one call, whose result it keeps"
                    ),
                )
            if state.status in TERMINAL:
                return self.final_outcome(fid)
            if create_only:
                return None
            engine.reserve(fid)
            try:
                t = _clock.now_ms()
                if self.owned_elsewhere(fid, state.owner, state.lease_until, state.fence):
                    raise FlowBusyError(flow_id=fid, owner=state.owner or "")
                fence = store.take_over(fid, state.fence, engine.owner, t + engine.lease_ms, t)
                rows = store.load_steps(fid) if fence is not None else {}
            except BaseException:
                engine.unreserve(fid)
                raise
            if fence is None:
                engine.unreserve(fid)
                continue
            self._seen.pop(fid, None)
            _faults.point("flow.start.after_commit")
            return Claimed(fence, rows, state.failures)
        raise TransparentDEError(f"flow {fid}: could not claim it; other engines keep changing it")

    def fresh_id(self, obj: Any, name: str) -> str:
        """A new flow id (see :func:`_fresh_id`)."""
        return _fresh_id(self.engine, self._fresh_checked, obj, name)

    def owned_elsewhere(self, fid: str, owner: str | None, lease_until: int | None, fence: int) -> bool:
        """Does another engine that may be alive hold the flow? (Then it is not ours to run.)

        See the takeover rule in the module docstring: alive means not known dead, and the
        lease renewed within the last lease length of *our* monotonic clock.
        """
        if owner is None or owner == self.engine.owner or not owner_alive(owner):
            return False
        lease = (owner, fence, lease_until)
        now = _clock.mono()
        seen = self._seen.get(fid)
        if seen is None or seen[0] != lease:
            self._seen[fid] = (lease, now)  # first sight of this lease (or a renewal): wait a lease length
            return True
        return now - seen[1] < self.engine.lease_ms / 1000

    # ------------------------------------------------------------------ running

    def run_entry(
        self,
        obj: Any,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        flow_id: str | None,
        background: bool,
        fn: Callable[..., Any],
        woken: int = 0,
    ) -> Any:
        """Run entry ``name`` of ``obj`` as flow ``flow_id``; ``fn`` is the exact entry function
        (a base class's, when reached through ``super()``; see :func:`entry_function`).
        ``woken``: the journaled deadline (wall ms) the scheduler found due on its monotonic
        clock; sleeps and waits ending by it are over, whatever the wall clock says now.
        An ``async def`` entry runs to completion on an event loop of its own (_async_run)."""
        code = getattr(fn, "__code__", None)
        if code is not None and code.co_flags & _CO_COROUTINE:
            from ._async_run import run_blocking

            return run_blocking(self, obj, name, args, kwargs, flow_id, background, fn, woken)
        run, value = self.open_run(Run, obj, name, args, kwargs, flow_id, background, fn, woken)
        if run is None:
            return value
        try:
            return self._drive(run, fn, obj, args, kwargs)
        finally:
            run.end()
            self.engine.unreserve(run.flow_id)

    def open_run(
        self,
        run_cls: type[R],
        obj: Any,
        name: str,
        args: Any,
        kwargs: Any,
        flow_id: str | None,
        background: bool,
        fn: Callable[..., Any],
        woken: int,
    ) -> tuple[R | None, Any]:
        """Claim the flow and make its run (sync or async): ``(run, None)``; or, when the journal
        already holds the flow's outcome, ``(None, result)`` (a journaled failure is raised).
        The caller drives the run, then ends it and unreserves the flow."""
        engine = self.engine
        fid = check_flow_id(flow_id) if flow_id is not None else self.fresh_id(obj, name)
        claimed = self.claim(obj, name, tuple(args), dict(kwargs), fid, fn)
        if not isinstance(claimed, Claimed):
            assert claimed is not None
            ok, value = claimed
            if ok:
                return None, value
            assert isinstance(value, BaseException)
            raise value
        run = run_cls(engine, fid, obj, spec_of(obj), claimed.fence, claimed.rows, background, woken, claimed.failures)
        run.entry = name
        engine.scheduler.ensure_heartbeat()
        return run, None

    def _drive(self, run: Run, fn: Callable[..., Any], obj: Any, args: Any, kwargs: Any) -> Any:
        """Execute (or replay) the entry and journal how the run ended (see the module docstring)."""
        try:
            try:
                token = current_run.set(run)
                ACTIVE[id(obj)] = run
                try:
                    result = fn(obj, *args, **kwargs)
                finally:
                    current_run.reset(token)
                    if ACTIVE.get(id(obj)) is run:
                        del ACTIVE[id(obj)]
                self._complete(run, result)
                return result
            except Park as park:
                self._park(run, park)
                raise
            except (_faults.InjectedCrash, EngineUnwind, LeaseLost):
                raise
            except Exception as exc:
                self._fail(run, exc)
                raise
            except BaseException:
                # KeyboardInterrupt, SystemExit: leave the flow resumable and free it for recovery.
                run.writer.release()
                raise
        except EngineUnwind as unwind:
            # An engine error inside flow code (journal I/O, corruption, non-determinism): it
            # unwound the flow past its handlers; the caller gets the error itself.
            run.writer.release()
            raise unwind.error.with_traceback(unwind.__traceback__) from None
        except LeaseLost:
            raise LeaseLostError(flow_id=run.flow_id, flow_class=run.spec.class_name) from None

    def _complete(self, run: Run, result: Any) -> None:
        run.commit("flow.complete.mid_txn", self.completion(run, result))
        run.sync()
        _faults.point("flow.complete.after_commit")

    def completion(self, run: Run, result: Any) -> FlowComplete:
        """The row that ends a flow with ``result`` (written by the sync or the async driver)."""
        _faults.point("flow.complete.before")
        blob = run._encode(result, 0, run.spec.class_name, "the flow's result", b"r")
        return FlowComplete(blob, _clock.now_ms())

    def _park(self, run: Run, park: Park) -> None:
        run.commit("flow.park.mid_txn", Parked(park.wake_at, park.waiting_for, _clock.now_ms()))
        run.sync()
        self.engine.scheduler.schedule(run.flow_id, park.wake_at or 0, park.waiting_for, park.after)

    def _fail(self, run: Run, exc: BaseException) -> None:
        """An exception escaped the flow: record a failed run (the flow stays resumable, and
        recovery backs off), or end the flow FAILED: under ``failure="final"``, or once it has
        failed ``max_recovery_attempts`` runs in a row (the dead letter; ``retry`` re-arms it).

        A background run that will be retried raises :class:`RetryLater` instead of ``exc``.
        """
        engine, spec = self.engine, run.spec
        step = _escaped_step(run, exc)
        t = _clock.now_ms()
        failures = 1 if run.progressed else run.failures_before + 1
        cap = spec.max_recovery_attempts or engine.max_recovery_attempts
        # The escaped step runs again on the next run (instead of replaying its failure).
        ops: list[Op] = [Reopen(step, t)] if step is not None else []
        if spec.failure == "final" or failures >= cap:
            ctx = step_context(run.flow_id, 0, b"e")
            try:
                blob = run.codec.seal(record(exc), ctx)
            except EncodeError:
                blob = run.codec.seal(record(RemoteError(type(exc).__qualname__, str(exc))), ctx)
            run.commit("flow.fail.mid_txn", *ops, FlowFailed(blob, t, failures))
            run.sync()
            if run.background:
                log.error(
                    "flow %s (%s) FAILED after %d failed run(s): %s: %s",
                    run.flow_id, spec.class_name, failures, type(exc).__name__, exc,
                )  # fmt: skip
            return
        delay = min(spec.backoff * 2 ** (failures - 1), spec.max_backoff)
        wake_at = t + int(delay * 1000)
        run.commit("flow.fail.mid_txn", *ops, Backoff(wake_at, failures, t))
        run.sync()
        if run.background:
            engine.scheduler.schedule(run.flow_id, wake_at, None, after=delay)
            raise RetryLater(exc, failures, cap, delay)

    # ------------------------------------------------------------------ resuming

    def identity(self, fid: str) -> FlowIdentity:
        """The flow's identity columns, verified (see :func:`verified_identity`)."""
        return verified_identity(self.engine, fid)

    def resume(self, fid: str, woken: int = 0) -> Any:
        """Replay a flow from the journal alone (the instance and arguments recorded at start)."""
        ident = self.identity(fid)
        log.info("resuming flow %s (%s.%s)", fid, ident.qualname, ident.method)
        where = _where(self.engine, fid)
        cls = resolve_class(ident.module, ident.qualname, required=True)
        codec = self.engine.codec
        obj: Any = REBUILD
        if ident.instance is not None:
            ctx = flow_context(fid, ident.module, ident.qualname, ident.method, ident.declaring)
            obj = codec.open(ident.instance, ctx, where)
        if obj == REBUILD:
            obj = cls()
        args, kwargs = codec.open(ident.parameters, step_context(fid, 0, b"p"), where)
        fn = entry_function(obj, ident.method, ident.declaring)
        return self.run_entry(obj, ident.method, tuple(args), dict(kwargs), fid, True, fn, woken)

    def final_outcome(self, fid: str) -> tuple[bool, Any] | None:
        """``(True, result)`` or ``(False, error)`` of a finished flow; None while it is unfinished."""
        return final_outcome(self.engine, fid)


_waits.DRIVES.add(Runner._drive.__code__)  # flow code's frames end here (see _waits._may_park)


def verified_identity(engine: Engine, fid: str) -> FlowIdentity:
    """The columns that choose what code resumes a flow, verified before anything is imported.

    With signing on, the instance blob's signature covers the module, class and method
    columns (see :func:`flow_context`): a journal rewritten to name another function is
    refused with :class:`CorruptJournalError` before that function's module is imported.
    """
    ident = engine.store.identity(fid)
    if ident is None:
        raise FlowNotFoundError(flow_id=fid, path=engine.store.path)
    codec = engine.codec
    if codec.signing:
        if ident.instance is None:
            raise CorruptJournalError(
                path=engine.store.path,
                flow_id=fid,
                step=0,
                detail="the flow's identity (class, method, instance) is not signed: refused",
            )
        ctx = flow_context(fid, ident.module, ident.qualname, ident.method, ident.declaring)
        codec.check(ident.instance, ctx, _where(engine, fid))
        codec.check(ident.parameters, step_context(fid, 0, b"p"), _where(engine, fid))
    return ident


def final_outcome(engine: Engine, fid: str) -> tuple[bool, Any] | None:
    """``(True, result)`` or ``(False, error)`` of a finished flow; None while it is unfinished."""
    out = engine.store.outcome(fid)
    if out is None:
        return None
    where = _where(engine, fid)
    if out.status == "COMPLETE":
        if out.return_value is None:
            return True, None
        return True, engine.codec.open(out.return_value, step_context(fid, 0, b"r"), where)
    if out.status == "FAILED":
        cause = engine.codec.open(out.error, step_context(fid, 0, b"e"), where) if out.error else None
        if isinstance(cause, ExceptionRecord):
            cause = cause.rebuild()
        err = FlowFailedError(
            flow_id=fid,
            flow_class=engine.store.flow_class(fid) or "",
            error=f"{type(cause).__name__}: {cause}",
        )
        err.__cause__ = cause if isinstance(cause, BaseException) else None
        return False, err
    if out.status == "CANCELLED":
        return False, FlowCancelledError(flow_id=fid)
    return None


def _fresh_id(engine: Engine, checked: set[tuple[str, str, str]], obj: Any, name: str) -> str:
    """A new flow id; the first time this entry starts without one while unfinished flows of
    it sit in the journal, say once that ``recover()`` is what resumes those."""
    cls = type(obj)
    key = (cls.__module__, cls.__qualname__, name)
    if key not in checked:
        checked.add(key)
        waiting = engine.store.unfinished_of(*key)
        if waiting:
            log.warning(
                "starting %s.%s with a fresh flow id while %d unfinished flow(s) of it are in the journal "
                "%s: a fresh id never resumes them; transparent_de.recover() (or `transparent-de recover`) "
                "does, and run(..., flow_id=ID) resumes one.",
                cls.__qualname__, name, waiting, engine.store.path,
            )  # fmt: skip
    return uuid.uuid4().hex


def _where(engine: Engine, fid: str, step: int = 0) -> Callable[[], dict[str, Any]]:
    return lambda: {"path": engine.store.path, "flow_id": fid, "step": step}


def _escaped_step(run: Run, exc: BaseException) -> int | None:
    """The step whose journaled failure this escaping exception is (or wraps), if any."""
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for step, failure in sorted(run.failures.items(), reverse=True):
        if any(failure is c for c in chain):
            return step
    return None
