"""Running a flow from start to end: claim it, execute (or replay) its entry, record how it ended.

Ownership: a flow runs in one place at a time. Claiming it is compare-and-set on the flow's
fencing token (:meth:`~._store.base.Store.take_over`): the claimer that saw the current
token wins and bumps it, every later write of the flow is fenced by the new token, and a
claimer that lost the race reads the flow again.

**The takeover rule.** A flow may be claimed when nobody owns it, when its owner is known
dead (same host, its pid is gone), or when its owner has not renewed the lease for one
lease length *as measured by the claimer's own monotonic clock*: the claimer remembers the
``(owner, fence, lease_until)`` it saw and when, and only if that has not changed for
``lease_seconds`` does it take over. Every owner renews its leases (a heartbeat thread, and
every write), and a renewal always changes ``lease_until``. No wall clock is compared with
another process's: a claimer whose clock is an hour ahead, or an owner whose clock was
stepped back, cannot make a live owner's flow look abandoned. (One consequence: a process
that just started cannot take over a flow from an owner on another host at once; a worker
does so after watching it for one lease length.)

How a run ends is journaled by :meth:`Runner.run_entry`: the entry's result (step 0
COMPLETE), a park (:class:`~._run.Park`: the flow waits, released), an escaped exception
(the flow stays resumable, or ends FAILED under ``failure="final"``), or an interruption
(``KeyboardInterrupt``, a lost lease: nothing more is written).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _clock, _faults
from ._entries import REBUILD, check_flow_id, entry_function, entry_owner, resolve_class, spec_of
from ._ownership import owner_alive
from ._run import Park, RemoteError, Run
from ._serialization import EncodeError, fingerprint, flow_context, step_context
from ._store.base import (
    TERMINAL,
    FlowComplete,
    FlowFailed,
    FlowIdentity,
    LeaseLost,
    NewFlow,
    Op,
    Parked,
    Release,
    Reopen,
    StepRow,
)
from ._trampoline import current_run
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

#: Claims retried when another claimer changed the flow between our read and our write.
_CLAIM_ROUNDS = 50


class Runner:
    """Claims, runs and finishes flows for one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._seen: dict[str, tuple[tuple[str, int, int | None], float]] = {}  # flow -> (lease seen, since)

    def _where(self, fid: str, step: int = 0) -> Callable[[], dict[str, Any]]:
        return lambda: {"path": self.engine.store.path, "flow_id": fid, "step": step}

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
    ) -> tuple[bool, Any] | tuple[int, dict[int, StepRow]] | None:
        """Create the flow, or claim it for this engine. Returns a final outcome if it is finished,
        else ``(fencing token, journal rows)``. With ``create_only`` the flow is created (or
        found) without being claimed, and None is returned unless it is finished."""
        engine = self.engine
        store, codec = engine.store, engine.codec
        spec = spec_of(obj)
        fp = fingerprint((args, kwargs))
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
        except EncodeError:
            instance = codec.seal(REBUILD, identity)  # recover() calls the class, like the seed
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
                return None if create_only else (1, {})
            if state.status in TERMINAL:
                return self.final_outcome(fid)
            if (state.entry_class, state.entry_method) != (entry_cls, name) or (
                state.fingerprint is not None and state.fingerprint != fp
            ):
                raise NonDeterminismError(
                    flow_id=fid,
                    flow_class=spec.class_name,
                    step=0,
                    recorded=f"{state.entry_class}.{state.entry_method}(<args {state.fingerprint}>)",
                    current=f"{entry_cls}.{name}(<args {fp}>)",
                    reason="this flow id was started with another entry or other arguments",
                )
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
            return fence, rows
        raise TransparentDEError(f"flow {fid}: could not claim it; other engines keep changing it")

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
        clock; sleeps and waits ending by it are over, whatever the wall clock says now."""
        engine = self.engine
        spec = spec_of(obj)
        fid = check_flow_id(flow_id) if flow_id is not None else uuid.uuid4().hex
        claimed = self.claim(obj, name, tuple(args), dict(kwargs), fid, fn)
        if claimed is not None and isinstance(claimed[0], bool):
            ok, value = claimed
            if ok:
                return value
            assert isinstance(value, BaseException)
            raise value
        assert claimed is not None
        fence, rows = claimed
        assert isinstance(rows, dict)
        run = Run(engine, fid, obj, spec, int(fence), rows, background, woken)
        engine.scheduler.ensure_heartbeat()
        token = current_run.set(run)
        try:
            try:
                result = fn(obj, *args, **kwargs)
            finally:
                current_run.reset(token)
        except Park as park:
            self._park(run, park)
            raise
        except LeaseLost:
            raise LeaseLostError(flow_id=fid, flow_class=spec.class_name) from None
        except _faults.InjectedCrash:
            raise
        except Exception as exc:
            self._fail(run, exc)
            raise
        except BaseException:
            # KeyboardInterrupt, SystemExit: leave the flow resumable and free it for recovery.
            with contextlib.suppress(BaseException):
                engine.store.commit(run.fence, [Release(_clock.now_ms())], "flow.release.mid_txn")
            raise
        finally:
            run.active = False
            engine.unreserve(fid)
        self._complete(run, result)
        return result

    def _complete(self, run: Run, result: Any) -> None:
        _faults.point("flow.complete.before")
        blob = run._encode(result, 0, run.spec.class_name, "the flow's result", b"r")
        run.commit("flow.complete.mid_txn", FlowComplete(blob, _clock.now_ms()))
        self.engine.store.sync()
        _faults.point("flow.complete.after_commit")

    def _park(self, run: Run, park: Park) -> None:
        run.commit("flow.park.mid_txn", Parked(park.wake_at, park.waiting_for, _clock.now_ms()))
        self.engine.store.sync()
        self.engine.scheduler.schedule(run.flow_id, park.wake_at or 0, park.waiting_for, park.after)

    def _fail(self, run: Run, exc: Exception) -> None:
        """An exception escaped the flow: leave it resumable (retry the failed step) or end it FAILED."""
        step = _escaped_step(run, exc)
        t = _clock.now_ms()
        if run.spec.failure == "final":
            ctx = step_context(run.flow_id, 0, b"e")
            try:
                blob = run.codec.seal(exc, ctx)
            except EncodeError:
                blob = run.codec.seal(RemoteError(type(exc).__qualname__, str(exc)), ctx)
            run.commit("flow.fail.mid_txn", FlowFailed(blob, t))
        else:
            # Escaped: the next run retries the failed step instead of replaying its failure.
            ops: list[Op] = [Reopen(step, t)] if step is not None else []
            run.commit("flow.fail.mid_txn", *ops, Release(t))
        self.engine.store.sync()

    # ------------------------------------------------------------------ resuming

    def identity(self, fid: str) -> FlowIdentity:
        """The columns that choose what code resumes a flow, verified before anything is imported.

        With signing on, the instance blob's signature covers the module, class and method
        columns (see :func:`flow_context`): a journal rewritten to name another function is
        refused with :class:`CorruptJournalError` before that function's module is imported.
        """
        engine = self.engine
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
            codec.check(ident.instance, ctx, self._where(fid))
            codec.check(ident.parameters, step_context(fid, 0, b"p"), self._where(fid))
        return ident

    def resume(self, fid: str, woken: int = 0) -> Any:
        """Replay a flow from the journal alone (the instance and arguments recorded at start)."""
        ident = self.identity(fid)
        where = self._where(fid)
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
        engine = self.engine
        out = engine.store.outcome(fid)
        if out is None:
            return None
        where = self._where(fid)
        if out.status == "COMPLETE":
            if out.return_value is None:
                return True, None
            return True, engine.codec.open(out.return_value, step_context(fid, 0, b"r"), where)
        if out.status == "FAILED":
            cause = engine.codec.open(out.error, step_context(fid, 0, b"e"), where) if out.error else None
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
