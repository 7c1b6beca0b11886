"""The engine: starts, resumes, parks, recovers and signals flows on one journal.

Ownership: a flow runs in one place at a time. Claiming it (in one ``BEGIN IMMEDIATE``
transaction) sets ``flows.owner`` to this engine and bumps the fencing token; every later
write of the flow checks both (see :mod:`._journal`). A claim succeeds when nobody owns the
flow, when the owner's pid is dead (same host), or when its lease expired.

Parking: a flow run in the background (``start``, ``recover``, the worker) that must wait
longer than ``park_after`` seconds unwinds with :class:`~._run.Park`; its row in ``flows``
gets ``wake_at`` / ``waiting_for`` and no owner, and the scheduler thread resumes it (a
replay from the journal) when due or signalled. Sleeping flows cost no threads.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import importlib
import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from . import _faults
from ._journal import HOST, Journal, LeaseLost, now_ms, owner_alive
from ._marking import FlowSpec
from ._run import ROW_COLUMNS, Park, RemoteError, Row, Run
from ._serialization import (
    Codec,
    EncodeError,
    fingerprint,
    flow_context,
    signal_context,
    step_context,
)
from ._serialization import (
    hmac_key as key_from_env,
)
from ._trampoline import current_run
from .errors import (
    CorruptJournalError,
    FlowBusyError,
    FlowCancelledError,
    FlowFailedError,
    FlowNotFoundError,
    FlowNotRewrittenError,
    NonDeterminismError,
    SerializationError,
    SignalError,
    TransparentDEError,
)

log = logging.getLogger("transparent_de")

#: What ``flows.instance`` holds for a flow object that could not be pickled: ``recover()``
#: then calls the class without arguments. A value, not NULL, so that it can be signed.
REBUILD = ("transparent_de", "rebuild the flow object with its class's no-argument constructor")

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


FLOW_ID_MAX = 255


def _check_flow_id(flow_id: Any) -> str:
    if not isinstance(flow_id, str) or not 0 < len(flow_id) <= FLOW_ID_MAX:
        raise ValueError(
            f"flow_id must be a non-empty str of at most {FLOW_ID_MAX} characters, not {flow_id!r}"
        )
    if any(ord(c) < 32 for c in flow_id):
        raise ValueError(f"flow_id {flow_id!r} contains control characters")
    return flow_id


def spec_of(obj: Any) -> FlowSpec:
    """The flow spec of ``obj``'s class, or a clear error if the class was never rewritten."""
    cls = type(obj)
    spec = cls.__dict__.get("__tde_spec__")
    if spec is None:
        raise FlowNotRewrittenError(flow_class=f"{cls.__module__}.{cls.__qualname__}", module=cls.__module__)
    assert isinstance(spec, FlowSpec)
    return spec


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def entry_function(obj: Any, name: str, declaring: str | None = None) -> Callable[..., Any]:
    """The plain function behind entry ``name`` of ``obj`` (the one defined on ``declaring``, if given).

    A base class's entry reached through ``super().run()`` or ``Base.run(obj)`` is a different
    function from the subclass's ``run``: the journal records which (step 0's ``class_name``)
    so that a resumed flow runs the same one.
    """
    if declaring is not None:
        for klass in type(obj).__mro__:
            if _qualified(klass) == declaring and name in vars(klass):
                fn = vars(klass)[name]
                return getattr(fn, "__tde_entry__", fn)  # type: ignore[no-any-return]
    fn = getattr(type(obj), name)
    return getattr(fn, "__tde_entry__", fn)  # type: ignore[no-any-return]


def entry_owner(obj: Any, name: str, fn: Callable[..., Any]) -> str:
    """``module.Qualname`` of the class that defines entry function ``fn`` (the seed's declaring class)."""
    mro = type(obj).__mro__
    owner = getattr(fn, "__qualname__", "").rpartition(".")[0]
    for klass in mro:
        if klass.__qualname__ == owner and klass.__module__ == getattr(fn, "__module__", None):
            return _qualified(klass)
    for klass in mro:  # renamed or decorated: the first class whose attribute resolves to it
        v = vars(klass).get(name)
        if v is not None and getattr(v, "__tde_entry__", v) is fn:
            return _qualified(klass)
    return _qualified(type(obj))


@dataclass(frozen=True)
class FlowInfo:
    """A row of ``flows`` joined with its step 0, for ``list`` and tools."""

    flow_id: str
    class_name: str
    method_name: str
    status: str
    owner: str | None
    lease_until: int | None
    wake_at: int | None
    waiting_for: str | None
    created: int
    updated: int
    steps: int


@dataclass(frozen=True)
class StepInfo:
    """One journal row, decoded lazily by the tools that show it."""

    step: int
    class_name: str
    method_name: str
    status: str
    attempts: int
    timestamp: int
    delay: int | None
    kind: str
    parameters: bytes | None
    return_value: bytes | None
    error_text: str | None
    site: str | None
    updated: int


class FlowHandle:
    """A flow started in the background: ``id``, ``result(timeout)``, ``status()``, ``done()``."""

    def __init__(self, engine: Engine, flow_id: str) -> None:
        self.engine = engine
        self.id = flow_id
        self._event = threading.Event()
        self._outcome: tuple[bool, Any] | None = None

    def _set(self, ok: bool, value: Any) -> None:
        self._outcome = (ok, value)
        self._event.set()

    def done(self) -> bool:
        if self._event.is_set():
            return True
        return self.status() in ("COMPLETE", "FAILED", "CANCELLED")

    def status(self) -> str:
        rows = self.engine.journal.read("SELECT status FROM flows WHERE flow_id = ?", (self.id,))
        return str(rows[0][0]) if rows else "UNKNOWN"

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the flow's result (raising its error); works while another process runs it."""
        deadline = None if timeout is None else now_ms() + timeout * 1000
        while True:
            wait = self.engine.poll_interval
            if deadline is not None:
                wait = min(wait, max(0.0, (deadline - now_ms()) / 1000))
            if self._event.wait(wait):
                assert self._outcome is not None
                ok, value = self._outcome
                if ok:
                    return value
                raise value
            if self._event.is_set():
                continue
            outcome = self.engine._final_outcome(self.id)
            if outcome is not None:
                self._set(*outcome)
                continue
            if deadline is not None and now_ms() >= deadline:
                raise TimeoutError(
                    f"flow {self.id} did not finish within {timeout} s (it is still {self.status()})"
                )

    def __repr__(self) -> str:
        return f"<FlowHandle {self.id}>"


class Engine:
    """Runs flows against one SQLite journal. Many may exist in one process (one per journal).

    ``hmac_key`` signs and verifies every journal value (see docs/journal.md, threat model):
    ``True`` (default) takes ``TRANSPARENT_DE_HMAC_KEY`` when the journal is first opened,
    ``None`` or ``False`` means no key, a ``str``/``bytes`` is the key itself.
    ``readonly=True`` opens the journal for inspection only (``flows()``, ``steps()``): it is
    never created, initialised or written.
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
        # True: TRANSPARENT_DE_HMAC_KEY, read when the journal is first opened; None/False: no key.
        self._key_option = hmac_key
        self._codec: Codec | None = None
        self.readonly = readonly
        self._journal: Journal | None = None
        self._token = uuid.uuid4().hex[:12]
        self._lock = threading.RLock()
        self._active: set[str] = set()
        self._handles: dict[str, FlowHandle] = {}
        self._parked: list[tuple[int, str]] = []  # heap of (wake_at or 0, flow_id)
        self._waiting: set[str] = set()  # parked on a signal (polled)
        self._pool: ThreadPoolExecutor | None = None
        self._scheduler: threading.Thread | None = None
        self._wakeup = threading.Condition(self._lock)
        self._signal_cv = threading.Condition()
        self._closed = False
        self._pid = os.getpid()
        self._heartbeat: threading.Thread | None = None
        # TDE_DEBUG=replay prints every replayed or executed step; read once, free when off.
        self._debug = "replay" in os.environ.get("TDE_DEBUG", "").split(",")

    # ------------------------------------------------------------------ basics

    @property
    def journal(self) -> Journal:
        if self._journal is None or self._pid != os.getpid():
            with self._lock:
                if self._journal is None or self._pid != os.getpid():
                    self._after_fork()
                    self._codec = Codec(self._resolve_key())
                    self._journal = Journal(
                        self.database, self.durability, self.busy_timeout, readonly=self.readonly
                    )
                    if not self.readonly and not self._codec.signing:
                        _warn_unsigned(self._journal.path)
        return self._journal

    @property
    def codec(self) -> Codec:
        """How this engine signs and checks journal values (made with the journal, once)."""
        if self._codec is None or self._journal is None:
            _ = self.journal
        assert self._codec is not None
        return self._codec

    def _resolve_key(self) -> bytes | None:
        option = self._key_option
        if option is True:
            return key_from_env()
        if option is None or option is False:
            return None
        return option.encode() if isinstance(option, str) else bytes(option)

    def _where(self, fid: str, step: int = 0) -> Callable[[], dict[str, Any]]:
        return lambda: {"path": self.journal.path, "flow_id": fid, "step": step}

    def _after_fork(self) -> None:
        if self._pid != os.getpid():
            # Never use a parent's connections, threads or lease identity in a child.
            self._journal = None
            self._pool = None
            self._scheduler = None
            self._heartbeat = None
            self._active = set()
            self._handles = {}
            self._parked = []
            self._waiting = set()
            self._token = uuid.uuid4().hex[:12]
            self._pid = os.getpid()

    @property
    def owner(self) -> str:
        return f"{HOST}:{os.getpid()}:{self._token}"

    def close(self) -> None:
        """Stop background threads (running flows finish their current step) and close the journal."""
        with self._lock:
            self._closed = True
            self._wakeup.notify_all()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        # Join our threads, so that a fork() right after close() forks a single-threaded process.
        for thread in (self._scheduler, self._heartbeat):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=5)
        self._scheduler = self._heartbeat = None
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _debug_replay(self, run: Run, step: int, name: str, what: str) -> None:
        """``TDE_DEBUG=replay`` output; callers test ``self._debug`` first (it is the step path)."""
        print(f"[tde replay] {run.flow_id} step {step} {name}: {what}", file=sys.stderr)

    # ------------------------------------------------------------------ public API

    def run(self, entry: Callable[..., Any], *args: Any, flow_id: str | None = None, **kwargs: Any) -> Any:
        """Run (or resume, or return the memoized result of) a flow on this thread."""
        obj, name, fn = _bound_entry(entry)
        return self._run_entry(obj, name, args, kwargs, flow_id, background=False, fn=fn)

    def start(
        self, entry: Callable[..., Any], *args: Any, flow_id: str | None = None, **kwargs: Any
    ) -> FlowHandle:
        """Start (or resume) a flow in the background; long sleeps and waits park it."""
        obj, name, fn = _bound_entry(entry)
        spec_of(obj)
        fid = _check_flow_id(flow_id) if flow_id is not None else uuid.uuid4().hex
        # Create the rows now, so the flow exists (and can be signalled) when start() returns.
        state = self._claim(obj, name, args, kwargs, fid, fn, create_only=True)
        handle = self._handle(fid)
        if state is not None:
            handle._set(*state)
            return handle
        self._submit(fid, lambda: self._run_entry(obj, name, args, kwargs, fid, background=True, fn=fn))
        return handle

    def recover(self) -> list[FlowHandle]:
        """Resume every unfinished flow not owned by a live engine; returns their handles.

        Due flows run now in the background; flows parked on a timer are scheduled for their
        wake-up time; flows waiting for a signal get a handle that completes once it arrives.
        """
        _faults.point("recovery.after_scan")
        handles = []
        now = now_ms()
        for fid, owner, lease_until, wake_at, waiting in self.journal.read(
            "SELECT flow_id, owner, lease_until, wake_at, waiting_for FROM flows "
            "WHERE status IN ('PENDING', 'WAITING_FOR_SIGNAL') ORDER BY created"
        ):
            if fid in self._active:
                handles.append(self._handle(fid))
                continue
            if self._owned_elsewhere(owner, lease_until, now):
                continue  # a live engine owns it
            handles.append(self._handle(fid))
            self._schedule(fid, wake_at or 0, waiting)
        return handles

    def signal(self, flow_id: str, step: str, *args: Any, **kwargs: Any) -> None:
        """Deliver ``(args, kwargs)`` to the flow's ``wait_for(self.<step>)``, durably.

        Stored in the journal first: a signal sent before the flow waits, or while no process
        runs it, is kept and consumed by the next wait for that step, in order.
        """
        if not isinstance(step, str) or not step.isidentifier():
            raise SignalError(flow_id=flow_id, step=repr(step), reason="a step name is a Python identifier")
        rows = self.journal.read("SELECT status FROM flows WHERE flow_id = ?", (flow_id,))
        if not rows:
            raise FlowNotFoundError(flow_id=flow_id, path=self.journal.path)
        status = rows[0][0]
        if status in ("COMPLETE", "FAILED", "CANCELLED"):
            raise SignalError(
                flow_id=flow_id, step=step, reason=f"the flow is {status}; nothing will wait for it"
            )
        module, qualname = self._identity(flow_id)[:2]  # verified before anything is imported
        cls = _resolve_class(module, qualname, required=False)
        spec = cls.__dict__.get("__tde_spec__") if cls is not None else None
        if isinstance(spec, FlowSpec) and step not in spec.steps:
            raise SignalError(
                flow_id=flow_id,
                step=step,
                reason=f"{qualname} has no step named {step!r} (steps: {sorted(spec.steps)})",
            )
        codec = self.codec
        with self.journal.write() as con:
            # The payload is bound to its row (seq), so it is sealed once the row exists.
            seq = con.execute(
                "INSERT INTO signals (flow_id, step_name, payload, sent) VALUES (?,?,?,?)",
                (flow_id, step, b"", now_ms()),
            ).lastrowid
            assert seq is not None
            try:
                payload = codec.seal((args, kwargs), signal_context(flow_id, step, seq))
            except EncodeError as exc:
                raise SerializationError(
                    flow_id=flow_id, step=0, method=step, what="the signal arguments", detail=str(exc)
                ) from None
            con.execute("UPDATE signals SET payload = ? WHERE seq = ?", (payload, seq))
            _faults.point("signal.send.mid_txn")
        self.journal.sync()
        with self._signal_cv:
            self._signal_cv.notify_all()
        with self._lock:
            if flow_id in self._waiting:
                self._schedule(flow_id, 0, None)

    def cancel(self, flow_id: str) -> None:
        """Mark an unfinished flow CANCELLED: it will not run again (a running step finishes)."""
        with self.journal.write() as con:
            row = con.execute("SELECT status FROM flows WHERE flow_id = ?", (flow_id,)).fetchone()
            if row is None:
                raise FlowNotFoundError(flow_id=flow_id, path=self.journal.path)
            if row[0] in ("COMPLETE", "FAILED", "CANCELLED"):
                raise TransparentDEError(
                    f"flow {flow_id} is already {row[0]}; only unfinished flows can be cancelled"
                )
            t = now_ms()
            con.execute(
                "UPDATE flows SET status='CANCELLED', owner=NULL, fence=fence+1, updated=? WHERE flow_id=?",
                (t, flow_id),
            )
            con.execute(
                "UPDATE execution_log SET status='CANCELLED', updated=? WHERE flow_id=? AND step=0",
                (t, flow_id),
            )
        self.journal.sync()

    def flows(self, status: str | None = None) -> list[FlowInfo]:
        sql = (
            "SELECT f.flow_id, f.module || '.' || f.qualname, f.method_name, f.status, f.owner, f.lease_until, "
            "f.wake_at, f.waiting_for, f.created, f.updated, "
            "(SELECT count(*) FROM execution_log e WHERE e.flow_id = f.flow_id AND e.step > 0) FROM flows f"
        )
        params: tuple[Any, ...] = ()
        if status:
            sql += " WHERE f.status = ?"
            params = (status.upper(),)
        return [FlowInfo(*r) for r in self.journal.read(sql + " ORDER BY f.created, f.flow_id", params)]

    def steps(self, flow_id: str) -> list[StepInfo]:
        rows = self.journal.read(
            "SELECT step, class_name, method_name, status, attempts, timestamp, delay, kind, parameters, "
            "return_value, error_text, site, updated FROM execution_log WHERE flow_id = ? ORDER BY step",
            (flow_id,),
        )
        if not rows:
            raise FlowNotFoundError(flow_id=flow_id, path=self.journal.path)
        return [StepInfo(*r) for r in rows]

    def worker(self, stop: threading.Event | None = None, *, until_idle: bool = False) -> int:
        """Recover flows, wake due timers and deliver signals until ``stop`` is set.

        With ``until_idle`` it returns once no unfinished flow is runnable here (waiting
        flows with no signal and future timers do not count). Returns the number of flows
        it saw finish.
        """
        stop = stop or threading.Event()
        finished = 0
        seen: set[str] = set()
        while not stop.is_set():
            handles = self.recover()
            for h in handles:
                seen.add(h.id)
            if until_idle:
                runnable = [h for h in handles if not h.done() and self._runnable(h.id)]
                if not runnable and not self._active:
                    break
            stop.wait(self.poll_interval)
        for fid in seen:
            if self._final_outcome(fid) is not None:
                finished += 1
        return finished

    # ------------------------------------------------------------------ running

    def _handle(self, fid: str) -> FlowHandle:
        with self._lock:
            h = self._handles.get(fid)
            if h is None:
                h = self._handles[fid] = FlowHandle(self, fid)
            return h

    def _ensure_threads(self) -> None:
        with self._lock:
            if self._closed:
                raise TransparentDEError("this engine was closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="tde-flow")
            if self._scheduler is None:
                self._scheduler = threading.Thread(
                    target=self._schedule_loop, name="tde-scheduler", daemon=True
                )
                self._scheduler.start()
            if self._heartbeat is None:
                self._heartbeat = threading.Thread(
                    target=self._heartbeat_loop, name="tde-heartbeat", daemon=True
                )
                self._heartbeat.start()

    def _submit(self, fid: str, fn: Callable[[], Any]) -> None:
        self._ensure_threads()
        handle = self._handle(fid)

        def job() -> None:
            try:
                value = fn()
            except Park:
                return  # parked: the scheduler resumes it
            except FlowBusyError:
                return  # somebody else runs it; the handle polls the journal
            except LeaseLost:
                return
            except _faults.InjectedCrash:
                return
            except BaseException as exc:
                handle._set(False, exc)
                return
            handle._set(True, value)

        assert self._pool is not None
        self._pool.submit(job)

    def _schedule(self, fid: str, wake_at: int, waiting_for: str | None) -> None:
        self._ensure_threads()
        with self._lock:
            # A wait with a timeout is both: watched for its signal and timed for its deadline
            # (only timing it left a signalled flow parked until the timeout).
            if waiting_for is not None:
                self._waiting.add(fid)
            if waiting_for is None or wake_at:
                heapq.heappush(self._parked, (wake_at, fid))
            self._wakeup.notify_all()

    def _schedule_loop(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                now = now_ms()
                due = []
                while self._parked and self._parked[0][0] <= now:
                    due.append(heapq.heappop(self._parked)[1])
                self._waiting.difference_update(due)  # a resumed flow re-parks (and re-registers) itself
                waiting = list(self._waiting)
                timeout = self.poll_interval
                if self._parked:
                    timeout = min(timeout, max(0.0, (self._parked[0][0] - now) / 1000))
            if waiting:
                ready = self._signalled(waiting)
                with self._lock:
                    self._waiting.difference_update(ready)
                due += ready
            for fid in due:
                if fid not in self._active:
                    try:
                        self._submit(fid, functools.partial(self._resume, fid))
                    except TransparentDEError:
                        if self._closed:
                            return  # close() raced with a due flow: it stays parked in the journal
                        raise
            with self._lock:
                if not self._closed:
                    self._wakeup.wait(timeout)

    def _signalled(self, fids: list[str]) -> list[str]:
        marks = ",".join("?" * len(fids))
        rows = self.journal.read(
            f"SELECT DISTINCT f.flow_id FROM flows f JOIN signals s ON s.flow_id = f.flow_id "
            f"AND s.step_name = f.waiting_for AND s.consumed_step IS NULL WHERE f.flow_id IN ({marks})",
            tuple(fids),
        )
        gone = self.journal.read(
            f"SELECT flow_id FROM flows WHERE flow_id IN ({marks}) AND (status NOT IN ('PENDING', "
            f"'WAITING_FOR_SIGNAL') OR waiting_for IS NULL)",
            tuple(fids),
        )
        return [r[0] for r in rows] + [r[0] for r in gone]

    def _heartbeat_loop(self) -> None:
        """Renew the leases of flows running here, so a long step does not lose its flow."""
        while True:
            with self._lock:
                if self._closed:
                    return
                active = list(self._active)
                self._wakeup.wait(max(0.05, self.lease_ms / 3000))
            if active:
                with contextlib.suppress(Exception), self.journal.write() as con:
                    con.executemany(
                        "UPDATE flows SET lease_until = ? WHERE flow_id = ? AND owner = ?",
                        [(now_ms() + self.lease_ms, f, self.owner) for f in active],
                    )

    def _identity(self, fid: str) -> tuple[str, str, str, str, bytes | None, bytes]:
        """The columns that choose what code resumes a flow, verified before anything is imported.

        Returns ``(module, qualname, method, declaring class, instance blob, parameters blob)``.
        With signing on, the instance blob's signature covers the module, class and method
        columns (see :func:`flow_context`): a journal rewritten to name another function is
        refused with :class:`CorruptJournalError` before that function's module is imported.
        """
        rows = self.journal.read(
            "SELECT f.module, f.qualname, f.method_name, f.instance, e.parameters, e.class_name FROM flows f "
            "JOIN execution_log e ON e.flow_id = f.flow_id AND e.step = 0 WHERE f.flow_id = ?",
            (fid,),
        )
        if not rows:
            raise FlowNotFoundError(flow_id=fid, path=self.journal.path)
        module, qualname, method, instance, params, declaring = rows[0]
        codec = self.codec
        if codec.signing:
            if instance is None:
                raise CorruptJournalError(
                    path=self.journal.path,
                    flow_id=fid,
                    step=0,
                    detail="the flow's identity (class, method, instance) is not signed: refused",
                )
            codec.check(instance, flow_context(fid, module, qualname, method, declaring), self._where(fid))
            codec.check(params, step_context(fid, 0, b"p"), self._where(fid))
        return module, qualname, method, declaring, instance, params

    def _resume(self, fid: str) -> Any:
        """Replay a flow from the journal alone (the instance and arguments recorded at start)."""
        module, qualname, method, declaring, instance_blob, params = self._identity(fid)
        where = self._where(fid)
        cls = _resolve_class(module, qualname, required=True)
        codec = self.codec
        obj: Any = REBUILD
        if instance_blob is not None:
            obj = codec.open(instance_blob, flow_context(fid, module, qualname, method, declaring), where)
        if obj == REBUILD:
            obj = cls()
        args, kwargs = codec.open(params, step_context(fid, 0, b"p"), where)
        fn = entry_function(obj, method, declaring)
        return self._run_entry(obj, method, tuple(args), dict(kwargs), fid, background=True, fn=fn)

    def _owned_elsewhere(self, owner: str | None, lease_until: int | None, now: int) -> bool:
        """Does another engine that may be alive hold the flow's lease? (Then it is not ours to run.)"""
        return (
            owner is not None
            and owner != self.owner
            and owner_alive(owner)
            and (lease_until or 0) > now
            and _faults.planted_bug != "steal-live-lease"
        )

    def _runnable(self, fid: str) -> bool:
        rows = self.journal.read("SELECT wake_at, waiting_for, status FROM flows WHERE flow_id = ?", (fid,))
        if not rows:
            return False
        wake_at, waiting, status = rows[0]
        if status not in ("PENDING", "WAITING_FOR_SIGNAL"):
            return False
        if waiting is not None:
            return bool(self._signalled([fid]))
        return not wake_at or wake_at <= now_ms() + self.park_after_ms

    def _final_outcome(self, fid: str) -> tuple[bool, Any] | None:
        rows = self.journal.read(
            "SELECT status, return_value, error FROM execution_log WHERE flow_id = ? AND step = 0", (fid,)
        )
        if not rows:
            return None
        status, value, error = rows[0]
        where = self._where(fid)
        if status == "COMPLETE":
            if value is None:
                return True, None
            return True, self.codec.open(value, step_context(fid, 0, b"r"), where)
        if status == "FAILED":
            return False, self._failed_error(fid, error, where)
        if status == "CANCELLED":
            return False, FlowCancelledError(flow_id=fid)
        return None

    def _failed_error(
        self, fid: str, error: bytes | None, where: Callable[[], dict[str, Any]]
    ) -> BaseException:
        cause = self.codec.open(error, step_context(fid, 0, b"e"), where) if error else None
        cls_rows = self.journal.read("SELECT module || '.' || qualname FROM flows WHERE flow_id = ?", (fid,))
        err = FlowFailedError(
            flow_id=fid,
            flow_class=cls_rows[0][0] if cls_rows else "",
            error=f"{type(cause).__name__}: {cause}",
        )
        err.__cause__ = cause if isinstance(cause, BaseException) else None
        return err

    def _claim(
        self,
        obj: Any,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        fid: str,
        fn: Callable[..., Any],
        create_only: bool = False,
    ) -> tuple[bool, Any] | tuple[int, dict[int, Row]] | None:
        """Create the flow, or claim it for this engine. Returns a final outcome if it is finished.

        With ``create_only`` the flow is created (or found) without being claimed.
        """
        spec = spec_of(obj)
        codec = self.codec
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
        j = self.journal
        t = now_ms()
        _faults.point("flow.start.before_insert")
        with j.write() as con:
            row = con.execute(
                "SELECT f.status, f.owner, f.lease_until, f.fence, e.class_name, e.method_name, e.fingerprint "
                "FROM flows f JOIN execution_log e ON e.flow_id = f.flow_id AND e.step = 0 WHERE f.flow_id = ?",
                (fid,),
            ).fetchone()
            if row is None:
                fence = 1
                owner = None if create_only else self.owner
                con.execute(
                    "INSERT INTO flows (flow_id, module, qualname, method_name, instance, status, owner, "
                    "lease_until, fence, created, updated) VALUES (?,?,?,?,?, 'PENDING', ?,?,?,?,?)",
                    (
                        fid,
                        cls.__module__,
                        cls.__qualname__,
                        name,
                        instance,
                        owner,
                        t + self.lease_ms,
                        fence,
                        t,
                        t,
                    ),
                )
                con.execute(
                    "INSERT INTO execution_log (flow_id, step, timestamp, class_name, method_name, status, "
                    "parameters, kind, fingerprint, updated) VALUES (?, 0, ?,?,?, 'PENDING', ?, 'flow', ?, ?)",
                    (fid, t, entry_cls, name, params, fp, t),
                )
                rows: dict[int, Row] = {}
            else:
                status, owner, lease_until, fence, rec_cls, rec_method, rec_fp = row
                if status in ("COMPLETE", "FAILED", "CANCELLED"):
                    pass  # handled after the transaction
                elif (rec_cls, rec_method) != (entry_cls, name) or (rec_fp is not None and rec_fp != fp):
                    raise NonDeterminismError(
                        flow_id=fid,
                        flow_class=spec.class_name,
                        step=0,
                        recorded=f"{rec_cls}.{rec_method}(<args {rec_fp}>)",
                        current=f"{entry_cls}.{name}(<args {fp}>)",
                        reason="this flow id was started with another entry or other arguments",
                    )
                elif create_only:
                    pass
                else:
                    if fid in self._active or self._owned_elsewhere(owner, lease_until, t):
                        raise FlowBusyError(
                            flow_id=fid, owner=owner if fid not in self._active else "this process"
                        )
                    fence += 1
                    con.execute(
                        "UPDATE flows SET owner=?, lease_until=?, fence=?, wake_at=NULL, waiting_for=NULL, "
                        "status='PENDING', updated=? WHERE flow_id=?",
                        (self.owner, t + self.lease_ms, fence, t, fid),
                    )
                    if _faults.planted_bug != "forget-attempts":
                        con.execute(
                            "UPDATE execution_log SET attempts = attempts + 1, updated = ? "
                            "WHERE flow_id = ? AND step = 0",
                            (t, fid),
                        )
                rows = {}
                if status not in ("COMPLETE", "FAILED", "CANCELLED") and not create_only:
                    for r in con.execute(
                        f"SELECT {ROW_COLUMNS} FROM execution_log WHERE flow_id = ? AND step > 0", (fid,)
                    ):
                        rows[r[0]] = Row(*r)
            if not create_only and row is not None and row[0] in ("COMPLETE", "FAILED", "CANCELLED"):
                pass
            elif not create_only:
                self._active.add(fid)
        _faults.point("flow.start.after_commit")
        if row is not None and row[0] in ("COMPLETE", "FAILED", "CANCELLED"):
            return self._final_outcome(fid)
        if create_only:
            return None
        return fence, rows

    def _run_entry(
        self,
        obj: Any,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        flow_id: str | None,
        background: bool,
        fn: Callable[..., Any],
    ) -> Any:
        """Run entry ``name`` of ``obj`` as flow ``flow_id``; ``fn`` is the exact entry function
        (a base class's, when reached through ``super()``; see :func:`entry_function`)."""
        spec = spec_of(obj)
        fid = _check_flow_id(flow_id) if flow_id is not None else uuid.uuid4().hex
        claimed = self._claim(obj, name, tuple(args), dict(kwargs), fid, fn)
        if claimed is not None and isinstance(claimed[0], bool):
            ok, value = claimed
            if ok:
                return value
            assert isinstance(value, BaseException)
            raise value
        assert claimed is not None
        fence, rows = claimed
        assert isinstance(rows, dict)
        run = Run(self, fid, obj, spec, int(fence), rows, background)
        token = current_run.set(run)
        try:
            try:
                result = fn(obj, *args, **kwargs)
            finally:
                current_run.reset(token)
        except Park as park:
            self._park(run, park)
            raise
        except (LeaseLost, _faults.InjectedCrash):
            raise
        except Exception as exc:
            self._fail(run, exc)
            raise
        except BaseException:
            # KeyboardInterrupt, SystemExit: leave the flow resumable and free it for recovery.
            with contextlib.suppress(BaseException), self.journal.write(run.fence_token, 0) as con:
                con.execute("UPDATE flows SET owner=NULL WHERE flow_id=?", (fid,))
            raise
        finally:
            run.active = False
            self._active.discard(fid)
        self._complete(run, result)
        return result

    def _complete(self, run: Run, result: Any) -> None:
        fid = run.flow_id
        _faults.point("flow.complete.before")
        blob = run._encode(result, 0, run.spec.class_name, "the flow's result", b"r")
        with run.write() as con:
            run._flush(con)
            t = now_ms()
            con.execute(
                "UPDATE execution_log SET status='COMPLETE', return_value=?, updated=? "
                "WHERE flow_id=? AND step=0",
                (blob, t, fid),
            )
            con.execute(
                "UPDATE flows SET status='COMPLETE', owner=NULL, wake_at=NULL, waiting_for=NULL, "
                "updated=? WHERE flow_id=?",
                (t, fid),
            )
            _faults.point("flow.complete.mid_txn")
        self.journal.sync()
        _faults.point("flow.complete.after_commit")

    def _park(self, run: Run, park: Park) -> None:
        with run.write() as con:
            run._flush(con)
            con.execute(
                "UPDATE flows SET owner=NULL, wake_at=?, waiting_for=?, status=?, updated=? WHERE flow_id=?",
                (
                    park.wake_at,
                    park.waiting_for,
                    "WAITING_FOR_SIGNAL" if park.waiting_for else "PENDING",
                    now_ms(),
                    run.flow_id,
                ),
            )
        self.journal.sync()
        self._schedule(run.flow_id, park.wake_at or 0, park.waiting_for)

    def _fail(self, run: Run, exc: Exception) -> None:
        """An exception escaped the flow: leave it resumable (retry the failed step) or end it FAILED."""
        step = _escaped_step(run, exc)
        fid = run.flow_id
        t = now_ms()
        if run.spec.failure == "final":
            ctx = step_context(fid, 0, b"e")
            try:
                blob = run.codec.seal(exc, ctx)
            except EncodeError:
                blob = run.codec.seal(RemoteError(type(exc).__qualname__, str(exc)), ctx)
            with run.write() as con:
                run._flush(con)
                con.execute(
                    "UPDATE execution_log SET status='FAILED', error=?, updated=? WHERE flow_id=? AND step=0",
                    (blob, t, fid),
                )
                con.execute(
                    "UPDATE flows SET status='FAILED', owner=NULL, updated=? WHERE flow_id=?", (t, fid)
                )
        else:
            with run.write() as con:
                run._flush(con)
                if step is not None and _faults.planted_bug != "failed-stays-failed":
                    # Escaped: the next run retries this step instead of replaying its failure.
                    con.execute(
                        "UPDATE execution_log SET status='PENDING', updated=? WHERE flow_id=? AND step=? "
                        "AND status='FAILED'",
                        (t, fid, step),
                    )
                con.execute("UPDATE flows SET owner=NULL, updated=? WHERE flow_id=?", (t, fid))
        self.journal.sync()

    def _wait_for_signal_event(self, seconds: float) -> None:
        with self._signal_cv:
            self._signal_cv.wait(max(0.0, seconds))


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


def _bound_entry(entry: Any) -> tuple[Any, str, Callable[..., Any]]:
    obj = getattr(entry, "__self__", None)
    func = getattr(entry, "__func__", None)
    if obj is None or func is None:
        raise TypeError(f"expected a bound entry method of a flow instance, like MyFlow().run, not {entry!r}")
    name = getattr(func, "__tde_name__", None) or func.__name__
    spec = spec_of(obj)
    if name not in spec.entries:
        raise TypeError(
            f"{spec.class_name}.{name} is not an entry of the flow (entries: {sorted(spec.entries)}); "
            "list it in __flow__ to start flows with it"
        )
    return obj, name, getattr(func, "__tde_entry__", func)


def _resolve_class(module: str, qualname: str, required: bool) -> Any:
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj
    except Exception as exc:
        if required:
            raise TransparentDEError(
                f"cannot import flow class {module}.{qualname} to resume it: {type(exc).__name__}: {exc}. "
                "Run recover() in a process where that module is importable and transparent_de.install() "
                "covers it."
            ) from exc
        return None
