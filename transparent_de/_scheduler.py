"""The engine's background threads: the flow pool, wake-ups of parked flows, lease renewal
(and the flusher of carried step results, :mod:`._writes`).

A flow run in the background that waits long is *parked*: it unwinds, its journal row says
when it is due (``wake_at``) or what it waits for (``waiting_for``), and it is remembered
here, in a heap of wake-up times and a set of signal waits. The scheduler thread resumes a
parked flow (a replay from the journal) when it falls due or its signal arrives, so
thousands of sleeping flows cost no threads. The heartbeat thread renews the leases of the
flows running in this process, so a long step does not lose its flow.

**A wake-up of a busy flow is deferred, never dropped.** A flow is *busy* here while a run of
it is reserved (:meth:`Engine.reserve`) or a job of it is in the pool. A wake-up that falls
due then (``retry()`` of a flow whose failed run is still unwinding; the signal or short
timer of a flow that has parked and not yet let go of its reservation) is kept and submitted
when the busy run is over: dropped, it would leave the flow parked in the journal with
nobody here to wake it. A later :meth:`schedule` of the same flow replaces it (the latest
schedule wins, as for timers).

**Hints.** Where the journal can tell that a parked flow may have become runnable
(PostgreSQL's LISTEN/NOTIFY: a signal was stored, a flow was parked by another engine; see
:meth:`~._store.base.Store.listen`), one listener per engine turns each hint into the same
entry points, :meth:`signalled` and :meth:`schedule`. Hints only make wake-ups prompt:
polling every ``poll_interval`` stays on, so a lost hint costs latency, never a flow.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import logging
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from . import _clock, _faults
from ._runner import RetryLater
from ._store.base import TERMINAL, Closable, LeaseLost, WakeHint
from ._unwind import Park
from ._waits import parent_id
from ._writes import Flusher
from .errors import FlowBusyError, JournalIOError, LeaseLostError, TransparentDEError

if TYPE_CHECKING:
    from ._engine import Engine
    from ._handle import FlowHandle

log = logging.getLogger("transparent_de")


class Scheduler:
    """Background work of one engine; threads start on first use and stop with :meth:`close`.

    Parked flows are timed on the monotonic clock: :meth:`schedule` turns a journaled
    wall-clock deadline into a monotonic one once, so a wall clock stepped afterwards does
    not make a flow wake late or early. A flow is in the heap at most once (the latest
    schedule wins), however often recovery finds it.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._heap: list[tuple[float, str]] = []  # (monotonic due time, flow_id); stale entries skipped
        self._due: dict[str, tuple[float, int]] = {}  # flow_id -> (its due time, the wall deadline)
        self._waiting: set[str] = set()  # parked on a signal (polled)
        self._pool: ThreadPoolExecutor | None = None
        self._scheduler: threading.Thread | None = None
        self._heartbeat: threading.Thread | None = None
        self._closed = False
        self._stop = threading.Event()
        self._jobs: Counter[str] = Counter()  # flow -> its jobs in the pool (queued or running)
        self._deferred: dict[str, int] = {}  # busy flows due when their run ends -> the wall deadline
        self._retries: Counter[str] = Counter()  # retry() calls per flow: a job tells one made during it
        self._stamps: dict[
            str, float
        ] = {}  # flow -> when (mono) a schedule or a run's end here last told of it
        self._io_tries: dict[str, int] = {}  # flow -> runs in a row stopped by journal I/O errors
        #: recover() ran here: a flow another engine parks is ours to wake too (as the next
        #: recover() would find it); before that, hints only concern flows this engine parked.
        self.recovering = False
        self.flusher = Flusher()  # writes a step's carried result when flow code runs long after it
        self.hints = _Hints(self)

    def _start(self, name: str, target: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread

    def _ensure_threads(self) -> None:
        with self._lock:
            if self._closed:
                raise TransparentDEError("this engine was closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.engine.max_workers, thread_name_prefix="tde-flow")
            if self._scheduler is None:
                self._scheduler = self._start("tde-scheduler", self._schedule_loop)
        self.ensure_heartbeat()

    def ensure_heartbeat(self) -> None:
        """Renew the leases of this engine's running flows from now on, whatever started them."""
        if self._heartbeat is None:
            with self._lock:
                if self._heartbeat is None and not self._closed:
                    self._heartbeat = self._start("tde-heartbeat", self._heartbeat_loop)

    # ------------------------------------------------------------------ the pool

    def submit(self, fid: str, fn: Callable[[], Any]) -> None:
        """Run ``fn`` (a flow's entry or resume) on the pool; its outcome goes to the flow's handle."""
        self._ensure_threads()
        with self._lock:
            self._jobs[fid] += 1
        self._submit(fid, fn)

    def _submit(self, fid: str, fn: Callable[[], Any]) -> None:
        """Submit a job whose count in ``_jobs`` was taken already (by :meth:`submit` or a pop)."""
        handle = self.engine.handle(fid)

        def job() -> None:
            with self._lock:
                retries = self._retries[fid]
            try:
                _run_job(self, fid, fn, handle, retries)
            finally:
                with self._lock:
                    self._jobs[fid] -= 1
                    if self._jobs[fid] <= 0:
                        del self._jobs[fid]
                    self._release(fid)

        try:
            pool = self._pool
            if pool is None:
                raise RuntimeError("no pool")
            pool.submit(job)
        except RuntimeError:  # shut down by close() meanwhile
            with self._lock:
                self._jobs[fid] -= 1
                if self._jobs[fid] <= 0:
                    del self._jobs[fid]
            raise TransparentDEError("this engine was closed") from None

    def _busy_here(self, fid: str) -> bool:
        """Reserved by a run, or in the pool (lock held)."""
        return self._jobs[fid] > 0 or self.engine.is_active(fid)

    def running(self, fid: str) -> bool:
        """Is a run of the flow reserved here, or a job of it in the pool? (Recovery leaves such a
        flow to that run: what the run does next is newer than what recovery read.)"""
        with self._lock:
            return self._busy_here(fid)

    def busy(self, fid: str) -> bool:
        """Is the flow running here, queued to run, or due within ``park_after``?"""
        with self._lock:  # one look at both: a flow moves from _due to _jobs under this lock
            due = self._due.get(fid)
            if self._busy_here(fid) or fid in self._deferred:
                return True
        return due is not None and due[0] - _clock.mono() <= self.engine.park_after_ms / 1000

    def idle(self) -> bool:
        """No job in the pool and no wake-up deferred: every run started here has been accounted
        for (a job counts its failed run after the run let go of the flow)."""
        with self._lock:
            return not self._jobs and not self._deferred

    def released(self, fid: str) -> None:
        """A run of ``fid`` let go of its reservation (:meth:`Engine.unreserve`)."""
        with self._lock:
            self._release(fid)

    def _release(self, fid: str) -> None:
        """A run or job of ``fid`` ended (what it decided is newer than any scan so far); if a
        wake-up of it was deferred and it is no longer busy, make that due now (lock held)."""
        self._stamps[fid] = _clock.mono()
        if fid in self._deferred and not self._busy_here(fid) and not self._closed:
            deadline = self._deferred.pop(fid)
            due = _clock.mono()
            self._due[fid] = (due, deadline)
            heapq.heappush(self._heap, (due, fid))
            self._wakeup.notify_all()

    # ------------------------------------------------------------------ wake-ups

    def schedule(
        self,
        fid: str,
        wake_at: int,
        waiting_for: str | None,
        after: float | None = None,
        as_of: float | None = None,
    ) -> None:
        """Resume the flow at ``wake_at`` (wall ms; 0 = now), or when a signal for ``waiting_for`` arrives.

        ``after``: the seconds left, if the caller knows them better than the wall clock does
        (a flow that just parked measured them; recovery caps them at the wait's length).
        ``as_of``: when (:meth:`begin_scan`) the caller read what it passes. If a run here has
        told something newer since (it parked, backed off or ended), the call is stale and
        ignored: a scan that read a running flow must not wake it at once after that run
        backed off.
        """
        self._ensure_threads()
        with self._lock:
            if as_of is not None and self._stamps.get(fid, as_of) > as_of:
                return
            self._stamps[fid] = _clock.mono() if as_of is None else as_of
            self._deferred.pop(fid, None)  # the latest schedule wins
            # A wait with a timeout is both: watched for its signal and timed for its deadline
            # (only timing it left a signalled flow parked until the timeout).
            if waiting_for is not None:
                self._waiting.add(fid)
            if waiting_for is None or wake_at:
                known = self._due.get(fid)
                if known is None or known[1] != wake_at:
                    if after is not None:
                        left = max(0.0, after)
                    else:
                        left = max(0, wake_at - _clock.now_ms()) / 1000 if wake_at else 0.0
                    due = _clock.mono() + left
                    self._due[fid] = (due, wake_at)
                    heapq.heappush(self._heap, (due, fid))
            self._wakeup.notify_all()

    def begin_scan(self) -> float:
        """A recovery scan is about to read the journal: its ``as_of`` for :meth:`schedule`.

        Stamps are kept ten minutes, far longer than a scan takes from its read to its last
        schedule, so that they stay bounded in a worker that sees millions of flows.
        """
        self._ensure_threads()  # a recovering engine listens for hints from the start
        now = _clock.mono()
        with self._lock:
            self.recovering = True
            if len(self._stamps) > 1000:
                self._stamps = {f: t for f, t in self._stamps.items() if t > now - 600}
        return now

    def retry(self, fid: str) -> None:
        """``retry()`` re-armed the flow: run it now, or as soon as a run of it still here is over.

        That run's ending is superseded: a job that sees a retry made during it does not mark
        the flow stopped (``refused``) on reading the re-armed status.
        """
        with self._lock:
            self._retries[fid] += 1
        self.schedule(fid, 0, None)

    def signalled(self, fid: str) -> None:
        """A signal was stored for ``fid``: if it is parked on one, resume it now."""
        with self._lock:
            waiting = fid in self._waiting
        if waiting:
            self.schedule(fid, 0, None)

    def _take(self, due: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Of flows found due, those to submit now, counted as jobs; busy ones deferred (lock held)."""
        now = []
        for fid, deadline in due:
            if self._busy_here(fid):
                self._deferred[fid] = deadline
                log.debug("flow %s is due while busy here: it runs once its current run is over", fid)
            else:
                self._jobs[fid] += 1  # busy() from now on: it is about to be submitted
                now.append((fid, deadline))
        return now

    def _pop_due(self) -> list[tuple[str, int]]:
        """Flows whose time has come, with the wall deadline each was parked for (lock held)."""
        now = _clock.mono()
        due = []
        while self._heap and self._heap[0][0] <= now:
            when, fid = heapq.heappop(self._heap)
            known = self._due.get(fid)
            if known is not None and known[0] == when:
                del self._due[fid]
                due.append((fid, known[1]))
        return due

    def _schedule_loop(self) -> None:
        engine = self.engine
        self.hints.open()
        while True:
            with self._lock:
                if self._closed:
                    return
                due = self._pop_due()
                self._waiting.difference_update(fid for fid, _ in due)  # a resumed flow re-parks itself
                due = self._take(due)
                waiting = list(self._waiting)
                timeout = engine.poll_interval
                if self._heap:
                    timeout = min(timeout, max(0.0, self._heap[0][0] - _clock.mono()))
            if waiting:
                try:
                    ready = engine.store.signalled(waiting)
                except Exception as exc:  # the journal is away (a server restart): poll again later
                    log.warning(
                        "transparent_de: polling %d parked flow(s) for signals failed: %s", len(waiting), exc
                    )
                    ready = []
                with self._lock:
                    self._waiting.difference_update(ready)
                    due += self._take([(fid, 0) for fid in ready])
            for fid, deadline in due:
                try:
                    self._submit(fid, functools.partial(engine.runner.resume, fid, deadline))
                except TransparentDEError:
                    if self._closed:
                        return  # close() raced with a due flow: it stays parked in the journal
                    raise
            with self._lock:
                if not self._closed:
                    self._wakeup.wait(timeout)

    # ------------------------------------------------------------------ leases, closing

    def _heartbeat_loop(self) -> None:
        """Renew the leases of flows running here, so a long step does not lose its flow."""
        engine = self.engine
        while not self._stop.wait(max(0.05, engine.lease_ms / 3000)):
            active = engine.active_flows()
            if active:
                with contextlib.suppress(Exception):
                    engine.store.renew(engine.owner, active, _clock.now_ms() + engine.lease_ms)

    def close(self) -> None:
        """Stop the threads (running flows finish their current step) and join them."""
        with self._lock:
            self._closed = True
            self._wakeup.notify_all()
        self._stop.set()
        self.hints.close()
        self.flusher.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        # Join our threads, so that a fork() right after close() forks a single-threaded process.
        for thread in (self._scheduler, self._heartbeat):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=5)
        self._scheduler = self._heartbeat = None


class _Hints:
    """The journal's wake-up hints for one scheduler: its listener, and what each hint means here."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._listener: Closable | None = None  # None: not open, or the journal sends no hints

    def open(self) -> None:
        """Ask the journal for hints (it listens in a thread of its own); from the scheduler thread."""
        sched = self.scheduler
        try:
            listener = sched.engine.store.listen(self.take)
        except Exception as exc:
            log.warning(
                "transparent_de: no wake-up hints from %s (polling only): %s", sched.engine.store.path, exc
            )
            return
        with sched._lock:
            closed = sched._closed
            if not closed:
                self._listener = listener
        if closed and listener is not None:
            listener.close()

    def close(self) -> None:
        with self.scheduler._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def take(self, hint: WakeHint | None) -> None:
        """A hint from the listener's thread (None: it (re)connected, and may have missed some)."""
        sched, engine = self.scheduler, self.scheduler.engine
        try:
            if hint is None:
                with sched._lock:
                    sched._wakeup.notify_all()  # poll the parked flows now
            elif hint.kind == "signal":
                with engine._signal_cv:
                    engine._signal_cv.notify_all()  # foreground waits of this engine look now
                sched.signalled(hint.flow_id)
            elif hint.kind == "parked" and self._adopts(hint):
                after = None
                if hint.wake_at and hint.left_ms is not None:  # never longer than the parker measured
                    after = max(0, min(hint.wake_at - _clock.now_ms(), hint.left_ms)) / 1000
                sched.schedule(hint.flow_id, hint.wake_at or 0, hint.waiting_for, after)
        except TransparentDEError:
            pass  # closed meanwhile
        except Exception:
            log.debug("transparent_de: wake-up hint %r not taken", hint, exc_info=True)

    def _adopts(self, hint: WakeHint) -> bool:
        """Is a flow another engine parked ours to wake? Only where recover() would schedule it."""
        sched, engine = self.scheduler, self.scheduler.engine
        return (
            sched.recovering
            and hint.origin != engine.owner  # our own parks are in the heap already
            and parent_id(hint.flow_id) is None  # a child is resumed by its parent
            and hint.flow_id not in engine.refused
            and not sched.running(hint.flow_id)
        )


def _run_job(scheduler: Scheduler, fid: str, fn: Callable[[], Any], handle: FlowHandle, retries: int) -> None:
    """Run one job of a flow and hand its outcome to the flow's handle (see :meth:`Scheduler.submit`).

    ``retries``: the flow's count of ``retry()`` calls when the job started; a retry made
    during the job supersedes how the job's run ended.
    """
    engine = scheduler.engine
    try:
        value = fn()
    except Park as park:
        what = f"signal {park.waiting_for!r}" if park.waiting_for else f"{park.after or 0:.1f} s"
        log.info("flow %s parked (waiting for %s)", fid, what)
        return  # the scheduler resumes it
    except RetryLater as retry:
        engine.failed_runs += 1
        log.warning(
            "flow %s failed (run %d of at most %d): %s: %s; next attempt in %.1f s",
            fid, retry.failures, retry.cap, type(retry.error).__name__, retry.error, retry.delay,
        )  # fmt: skip
        return  # parked until its backoff ends
    except (FlowBusyError, LeaseLostError, LeaseLost):
        return  # somebody else runs it; the handle reads the outcome from the journal
    except _faults.InjectedCrash:
        return
    except JournalIOError as exc:
        # The journal could not be reached (a dropped connection, a database server
        # restarting, a full disk): the flow unwound as after a crash. Resume it here
        # after a pause, doubling up to 30 s, as recovery would elsewhere.
        tries = scheduler._io_tries[fid] = scheduler._io_tries.get(fid, 0) + 1
        delay = min(0.5 * 2 ** (tries - 1), 30.0)
        log.warning("flow %s: %s; resuming it in %.1f s", fid, exc, delay)
        with contextlib.suppress(TransparentDEError):  # closed meanwhile: it stays in the journal
            scheduler.schedule(fid, 0, None, after=delay)
        return
    except BaseException as exc:
        outcome = engine.runner.final_outcome(fid) if engine.store.status(fid) in TERMINAL else None
        if outcome is not None:  # it ended FAILED (its failure policy, or the cap)
            engine.failed_runs += 1
            handle._set(*outcome)
            return
        engine.failed_runs += 1
        with scheduler._lock:
            retried = scheduler._retries[fid] != retries
        if retried:  # retry() re-armed it while this run ended: it runs again, not refused
            log.info(
                "flow %s: its run ended (%s: %s) and it was retried meanwhile", fid, type(exc).__name__, exc
            )
            return
        # Stopped before or outside the failure policy (an engine error): not resumed
        # here again until retry(), so that a worker does not spin on it.
        engine.refused[fid] = exc
        log.error("flow %s stopped: %s: %s (it stays resumable)", fid, type(exc).__name__, exc)
        handle._set(False, exc)
        return
    scheduler._io_tries.pop(fid, None)
    log.info("flow %s finished", fid)
    handle._set(True, value)
