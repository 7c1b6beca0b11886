"""The engine: the public face of one journal (run, start, recover, signal, cancel, inspect).

An :class:`Engine` owns a :class:`~._store.base.Store` (the journal), a
:class:`~._serialization.Codec` (how values are signed and checked), a
:class:`~._runner.Runner` (claiming, running and finishing flows) and a
:class:`~._scheduler.Scheduler` (the background pool, parked flows, lease renewal).

Parking: a flow run in the background (``start``, ``recover``, the worker) that must wait
longer than ``park_after`` seconds unwinds with :class:`~._unwind.Park`; its row in ``flows``
gets ``wake_at`` / ``waiting_for`` and no owner, and the scheduler resumes it (a replay from
the journal) when due or signalled. Sleeping flows cost no threads.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import logging
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _clock, _faults, _ownership
from ._entries import bound_entry, check_flow_id, resolve_class, spec_of
from ._handle import FlowHandle
from ._marking import FlowSpec
from ._ownership import HOST
from ._runner import Runner
from ._scheduler import Scheduler
from ._serialization import Codec, EncodeError, signal_context
from ._serialization import hmac_key as key_from_env
from ._store import open_store
from ._store.base import TERMINAL, UNFINISHED, FlowInfo, StepInfo, Store
from ._trampoline import current_run
from ._waits import parent_id
from .errors import FlowBusyError, FlowNotFoundError, SerializationError, SignalError, TransparentDEError

if TYPE_CHECKING:
    pass

log = logging.getLogger("transparent_de")

_unsigned_warned = False


def _warn_unsigned(path: str) -> None:
    """Say once per process that a journal is open for writing without a signing key."""
    global _unsigned_warned
    if not _unsigned_warned:
        _unsigned_warned = True
        logging.getLogger("transparent_de.journal").warning(
            "transparent_de: journal %s is not signed (TRANSPARENT_DE_HMAC_KEY is not set): whoever "
            "can write the file can make processes that resume its flows run code. See "
            "docs/journal.md#threat-model.",
            path,
        )


@dataclass(frozen=True)
class WorkerReport:
    """What :meth:`Engine.worker` saw: flows that finished, ended FAILED or CANCELLED
    (``failed``), were stopped by an engine error and left unfinished (``failing``), and how
    many runs failed along the way (each failed run of a flow that will be retried counts)."""

    finished: list[str]
    failed: list[str]
    failing: list[str]
    failed_runs: int

    @property
    def ok(self) -> bool:
        return not (self.failed or self.failing or self.failed_runs)


def _check_signal(
    engine: Engine, flow_id: str, step: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """Refuse, before storing it, a signal nothing can take: to an unknown or finished flow, to a
    name that is not one of its steps (or is its entry), or with arguments the step cannot take."""
    if not isinstance(step, str) or not step.isidentifier():
        raise SignalError(flow_id=flow_id, step=repr(step), reason="a step name is a Python identifier")
    store = engine.store
    status = store.status(flow_id)
    if status is None:
        raise FlowNotFoundError(flow_id=flow_id, path=store.path)
    if status in TERMINAL:
        raise SignalError(
            flow_id=flow_id, step=step, reason=f"the flow is {status}; nothing will wait for it"
        )
    ident = engine.runner.identity(flow_id)  # verified before anything is imported
    if step == ident.method:
        raise SignalError(
            flow_id=flow_id, step=step, reason=f"{step!r} is the flow's entry, not a step it can wait for"
        )
    cls = resolve_class(ident.module, ident.qualname, required=False)
    spec = cls.__dict__.get("__tde_spec__") if cls is not None else None
    if isinstance(spec, FlowSpec):
        if step not in spec.steps:
            raise SignalError(
                flow_id=flow_id,
                step=step,
                reason=f"{ident.qualname} has no step named {step!r} (steps: {sorted(spec.steps)})",
            )
        _bind_signal(flow_id, cls, step, args, kwargs)


def _bind_signal(flow_id: str, cls: type, step: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse, before storing it, a signal whose arguments the step cannot take (it would fail
    in the flow, and keep failing there, instead of in the sender's hands)."""
    fn = getattr(cls, step)
    fn = getattr(fn, "__tde_entry__", fn)
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(None, *args, **kwargs)  # None stands for self
    except TypeError as exc:
        shown = ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
        params = str(signature).replace("(self, ", "(").replace("(self)", "()")
        raise SignalError(
            flow_id=flow_id,
            step=step,
            reason=f"{step}{params} cannot take ({_cut(shown)}): {exc}; nothing was stored",
        ) from None


def _cut(text: str, width: int = 120) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


class Engine:
    """Runs flows against one journal. Many may exist in one process (one per journal).

    ``database`` is a SQLite file path (default ``$TRANSPARENT_DE_DB`` or
    ``transparent_de.db``). ``hmac_key`` signs and verifies every journal value (see
    docs/journal.md, threat model): ``True`` (default) takes ``TRANSPARENT_DE_HMAC_KEY`` when
    the journal is first opened, ``None`` or ``False`` means no key, a ``str``/``bytes`` is
    the key itself. ``readonly=True`` opens the journal for inspection only (``flows()``,
    ``steps()``): it is never created, initialised or written. A flow whose runs fail
    ``max_recovery_attempts`` times in a row ends FAILED (a flow's own ``__flow__`` option of
    that name wins); recovery waits between failed runs (the flow's ``backoff``, doubling up
    to ``max_backoff``).
    """

    def __init__(
        self,
        database: str | os.PathLike[str] | None = None,
        durability: str = "full",
        *,
        lease_seconds: float = 30.0,
        park_after: float = 1.0,
        max_workers: int = 32,
        poll_interval: float = 0.2,
        busy_timeout: float = 10.0,
        hmac_key: str | bytes | bool | None = True,
        readonly: bool = False,
        max_recovery_attempts: int = 50,
    ) -> None:
        if database is None:
            database = os.environ.get("TRANSPARENT_DE_DB", "transparent_de.db")
        if durability not in ("full", "process"):
            raise ValueError(f"durability must be 'full' or 'process', not {durability!r}")
        self.database = os.fspath(database)
        self.durability = durability
        self.lease_ms = int(lease_seconds * 1000)
        self.park_after_ms = int(park_after * 1000)
        self.max_workers = max_workers
        self.poll_interval = poll_interval
        self.busy_timeout = busy_timeout
        self.readonly = readonly
        if not isinstance(max_recovery_attempts, int) or max_recovery_attempts < 1:
            raise ValueError(
                f"max_recovery_attempts must be a whole number >= 1, not {max_recovery_attempts!r}"
            )
        self.max_recovery_attempts = max_recovery_attempts
        self._key_option = hmac_key
        self._store: Store | None = None
        self._codec: Codec | None = None
        self._lock = threading.RLock()
        self._reset()
        # TDE_DEBUG=replay prints every replayed or executed step; read once, free when off.
        self._debug = "replay" in os.environ.get("TDE_DEBUG", "").split(",")

    def _reset(self) -> None:
        """Fresh process-local state: at construction, and in a child after ``fork()``."""
        self._pid = os.getpid()
        self._async_writer: tuple[int, concurrent.futures.ThreadPoolExecutor] | None = None
        self._token = uuid.uuid4().hex[:12]
        self._store = None
        self._active: set[str] = set()
        self._handles: dict[str, FlowHandle] = {}
        # Flows a background run of this engine stopped on an engine error (a damaged or
        # unverifiable journal, changed code): not resumed again here until retry(), so a
        # worker does not spin on them. They stay resumable in the journal.
        self.refused: dict[str, BaseException] = {}
        self.failed_runs = 0  # background runs that failed (worker --until-idle exits 1)
        self._signal_cv = threading.Condition()
        self.runner = Runner(self)
        self.scheduler = Scheduler(self)

    # ------------------------------------------------------------------ basics

    @property
    def store(self) -> Store:
        """The journal, opened on first use (and again in a forked child: never a parent's)."""
        if self._store is None or self._pid != _ownership.pid():
            with self._lock:
                if self._pid != os.getpid():
                    self._reset()
                if self._store is None:
                    self._codec = Codec(_resolve_key(self._key_option))
                    self._store = open_store(self.database, self.durability, self.busy_timeout, self.readonly)
                    if not self.readonly and not self._codec.signing:
                        _warn_unsigned(self._store.path)
        return self._store

    @property
    def codec(self) -> Codec:
        """How this engine signs and checks journal values (made with the store, once)."""
        _ = self.store
        assert self._codec is not None
        return self._codec

    @property
    def owner(self) -> str:
        return f"{HOST}:{os.getpid()}:{self._token}"

    def async_writer(self) -> concurrent.futures.ThreadPoolExecutor:
        """The threads async flows wait for the journal in, off their event loops (see
        AsyncRun.commit_durably): one for a SQLite file (its fsyncs, each covering every commit
        made before it), a few for a server (its commits, which it runs in parallel). Made again
        in a forked child, where the parent's threads do not exist."""
        pool = self._async_writer
        if pool is None or pool[0] != os.getpid():
            with self._lock:
                pool = self._async_writer
                if pool is None or pool[0] != os.getpid():
                    workers = 4 if self.store.remote else 1
                    pool = (os.getpid(), concurrent.futures.ThreadPoolExecutor(workers, "tde-write"))
                    self._async_writer = pool
        return pool[1]

    def close(self) -> None:
        """Stop background threads (running flows finish their current step) and close the journal."""
        if self._pid == os.getpid():  # a forked child never touches its parent's threads or connections
            writer, self._async_writer = self._async_writer, None
            if writer is not None and writer[0] == os.getpid():
                writer[1].shutdown(wait=True)
            self.scheduler.close()
            if self._store is not None:
                self._store.close()
        self._store = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ flows running here

    def reserve(self, fid: str) -> None:
        """Mark the flow as running in this engine, or refuse: a flow runs in one place at a time."""
        with self._lock:
            if fid in self._active:
                raise FlowBusyError(flow_id=fid, owner="this process")
            self._active.add(fid)

    def unreserve(self, fid: str) -> None:
        with self._lock:
            self._active.discard(fid)
        self.scheduler.released(fid)  # a wake-up that fell due while the run was here goes now

    def is_active(self, fid: str) -> bool:
        return fid in self._active

    def active_flows(self) -> list[str]:
        with self._lock:
            return list(self._active)

    def handle(self, fid: str) -> FlowHandle:
        with self._lock:
            h = self._handles.get(fid)
            if h is None:
                h = self._handles[fid] = FlowHandle(self, fid)
            return h

    # ------------------------------------------------------------------ public API

    def run(self, entry: Callable[..., Any], *args: Any, flow_id: str | None = None, **kwargs: Any) -> Any:
        """Run (or resume, or return the memoized result of) a flow on this thread."""
        obj, name, fn = bound_entry(entry)
        return self.runner.run_entry(obj, name, args, kwargs, flow_id, background=False, fn=fn)

    def start(
        self, entry: Callable[..., Any], *args: Any, flow_id: str | None = None, **kwargs: Any
    ) -> FlowHandle:
        """Start (or resume) a flow in the background; long sleeps and waits park it."""
        obj, name, fn = bound_entry(entry)
        spec_of(obj)
        _settle_current_flow()
        fid = check_flow_id(flow_id) if flow_id is not None else self.runner.fresh_id(obj, name)
        # Create the rows now, so the flow exists (and can be signalled) when start() returns.
        state = self.runner.claim(obj, name, args, kwargs, fid, fn, create_only=True)
        handle = self.handle(fid)
        if isinstance(state, tuple):  # finished already: its outcome
            handle._set(*state)
            return handle
        runner = self.runner
        self.scheduler.submit(
            fid, lambda: runner.run_entry(obj, name, args, kwargs, fid, background=True, fn=fn)
        )
        return handle

    def recover(self) -> list[FlowHandle]:
        """Resume every unfinished flow not owned by a live engine; returns their handles.

        Due flows run now in the background; flows parked on a timer are scheduled for their
        wake-up time; flows waiting for a signal get a handle that completes once it arrives.
        """
        _faults.point("recovery.after_scan")
        handles = []
        scan = self.scheduler.begin_scan()  # what runs here tell the scheduler later is newer
        unfinished = self.store.unfinished()
        pending = {u.flow_id for u in unfinished}
        for u in unfinished:
            if parent_id(u.flow_id) in pending:
                # Its parent resumes it, from the parent's child step, in the parent's thread;
                # scheduling it here as well would race the parent for it (FlowBusyError).
                handles.append(self.handle(u.flow_id))
                continue
            if u.flow_id in self.refused:
                handles.append(self.handle(u.flow_id))  # resolved with its error already
                continue
            if self.scheduler.running(u.flow_id):  # running or queued here
                handles.append(self.handle(u.flow_id))
                continue
            if self.runner.owned_elsewhere(u.flow_id, u.owner, u.lease_until, u.fence):
                continue  # a live engine owns it
            handles.append(self.handle(u.flow_id))
            after = None
            if u.wake_at and u.wait_length is not None:  # a clock stepped back cannot stretch the wait
                after = max(0, min(u.wake_at - _clock.now_ms(), u.wait_length)) / 1000
            self.scheduler.schedule(u.flow_id, u.wake_at or 0, u.waiting_for, after, as_of=scan)
        return handles

    def signal(self, flow_id: str, step: str, *args: Any, **kwargs: Any) -> None:
        """Deliver ``(args, kwargs)`` to the flow's ``wait_for(self.<step>)``, durably.

        Stored in the journal first: a signal sent before the flow waits, or while no process
        runs it, is kept and consumed by the next wait for that step, in order.
        """
        store = self.store
        _check_signal(self, flow_id, step, args, kwargs)
        _settle_current_flow()
        codec = self.codec

        def seal(seq: int) -> bytes:  # the payload is bound to its row, so it is sealed once the row exists
            try:
                return codec.seal((args, kwargs), signal_context(flow_id, step, seq))
            except EncodeError as exc:
                raise SerializationError(
                    flow_id=flow_id, step=0, method=step, what="the signal arguments", detail=str(exc)
                ) from None

        store.add_signal(flow_id, step, _clock.now_ms(), seal)
        store.sync()
        with self._signal_cv:
            self._signal_cv.notify_all()
        self.scheduler.signalled(flow_id)

    def retry(self, flow_id: str) -> FlowHandle:
        """Resume a flow now: re-arm a FAILED one (the dead letter), or cut short the backoff of a
        failing one and forget that this engine stopped it; returns its handle.

        The flow runs again from where it failed (its completed steps are replayed).
        """
        store = self.store
        _settle_current_flow()
        previous = store.rearm(flow_id, _clock.now_ms())
        if previous is None:
            raise FlowNotFoundError(flow_id=flow_id, path=store.path)
        if previous not in ("FAILED", "PENDING"):
            raise TransparentDEError(
                f"flow {flow_id} is {previous}; only FAILED flows and failing PENDING ones can be retried"
            )
        store.sync()
        self.refused.pop(flow_id, None)
        with self._lock:
            self._handles.pop(flow_id, None)  # a fresh handle: the old one may hold the old failure
        handle = self.handle(flow_id)
        self.scheduler.retry(flow_id)  # now, or once a run of it still here is over
        return handle

    def cancel(self, flow_id: str) -> None:
        """Mark an unfinished flow CANCELLED: it will not run again (a running step finishes)."""
        store = self.store
        _settle_current_flow()
        previous = store.cancel(flow_id, _clock.now_ms())
        if previous is None:
            raise FlowNotFoundError(flow_id=flow_id, path=store.path)
        if previous not in UNFINISHED:
            raise TransparentDEError(
                f"flow {flow_id} is already {previous}; only unfinished flows can be cancelled"
            )
        store.sync()

    def flows(self, status: str | None = None) -> list[FlowInfo]:
        """Every flow in the journal (or those with ``status``), oldest first."""
        return self.store.flows(status.upper() if status else None)

    def steps(self, flow_id: str) -> list[StepInfo]:
        """The flow's journal rows, step 0 first; values left encoded."""
        rows = self.store.steps(flow_id)
        if not rows:
            raise FlowNotFoundError(flow_id=flow_id, path=self.store.path)
        return rows

    def worker(self, stop: threading.Event | None = None, *, until_idle: bool = False) -> WorkerReport:
        """Recover flows, wake due timers and deliver signals until ``stop`` is set.

        With ``until_idle`` it returns once no unfinished flow is runnable here (waiting
        flows with no signal, future timers and flows backing off after a failure do not
        count). Returns what it saw: flows finished, and flows that failed.
        """
        stop = stop or threading.Event()
        seen: set[str] = set()
        failed_before = self.failed_runs
        while not stop.is_set():
            handles = self.recover()
            seen.update(h.id for h in handles)
            if until_idle:
                runnable = [
                    h for h in handles if h.id not in self.refused and not h.done() and _runnable(self, h.id)
                ]
                if not runnable and not self._active and self.scheduler.idle():
                    break
            stop.wait(self.poll_interval)
        outcomes = {fid: self.runner.final_outcome(fid) for fid in seen}
        return WorkerReport(
            finished=sorted(f for f, o in outcomes.items() if o is not None and o[0]),
            failed=sorted(f for f, o in outcomes.items() if o is not None and not o[0]),
            failing=sorted(f for f, o in outcomes.items() if o is None and (f in self.refused)),
            failed_runs=self.failed_runs - failed_before,
        )

    def _wait_for_signal_event(self, seconds: float) -> None:
        with self._signal_cv:
            self._signal_cv.wait(max(0.0, seconds))


def _settle_current_flow() -> None:
    """Called from flow code, an act on another flow (signal, start, cancel, retry) first writes
    the steps this flow completed: the other flow may act on what they did (see Run.carry)."""
    run = current_run.get()
    if run is not None and run.active:
        run.flush()


def _runnable(engine: Engine, fid: str) -> bool:
    state = engine.store.wait_state(fid)
    if state is None or state.status not in UNFINISHED:
        return False
    if state.waiting_for is not None:
        return bool(engine.store.signalled([fid]))
    return not state.wake_at or state.wake_at <= _clock.now_ms() + engine.park_after_ms


def _resolve_key(option: str | bytes | bool | None) -> bytes | None:
    """The signing key an engine's ``hmac_key`` option means (True: the environment's)."""
    if option is True:
        return key_from_env()
    if option is None or option is False:
        return None
    return option.encode() if isinstance(option, str) else bytes(option)
