"""The engine's background threads: the flow pool, wake-ups of parked flows, lease renewal
(and the flusher of carried step results, :mod:`._writes`).

A flow run in the background that waits long is *parked*: it unwinds, its journal row says
when it is due (``wake_at``) or what it waits for (``waiting_for``), and it is remembered
here, in a heap of wake-up times and a set of signal waits. The scheduler thread resumes a
parked flow (a replay from the journal) when it falls due or its signal arrives, so
thousands of sleeping flows cost no threads. The heartbeat thread renews the leases of the
flows running in this process, so a long step does not lose its flow.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from . import _clock, _faults
from ._runner import RetryLater
from ._store.base import TERMINAL, LeaseLost
from ._unwind import Park
from ._writes import Flusher
from .errors import FlowBusyError, JournalIOError, LeaseLostError, TransparentDEError

if TYPE_CHECKING:
    from ._engine import Engine

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
        self._jobs: set[str] = set()  # flows submitted to the pool and not finished there
        self._io_tries: dict[str, int] = {}  # flow -> runs in a row stopped by journal I/O errors
        self.flusher = Flusher()  # writes a step's carried result when flow code runs long after it

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

    def submit(self, fid: str, fn: Callable[[], Any]) -> None:
        """Run ``fn`` (a flow's entry or resume) on the pool; its outcome goes to the flow's handle."""
        self._ensure_threads()
        engine = self.engine
        handle = engine.handle(fid)

        def job() -> None:
            try:
                run_job()
            finally:
                self._jobs.discard(fid)

        def run_job() -> None:
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
                tries = self._io_tries[fid] = self._io_tries.get(fid, 0) + 1
                delay = min(0.5 * 2 ** (tries - 1), 30.0)
                log.warning("flow %s: %s; resuming it in %.1f s", fid, exc, delay)
                with contextlib.suppress(TransparentDEError):  # closed meanwhile: it stays in the journal
                    self.schedule(fid, 0, None, after=delay)
                return
            except BaseException as exc:
                outcome = engine.runner.final_outcome(fid) if engine.store.status(fid) in TERMINAL else None
                if outcome is not None:  # it ended FAILED (its failure policy, or the cap)
                    engine.failed_runs += 1
                    handle._set(*outcome)
                    return
                # Stopped before or outside the failure policy (an engine error): not resumed
                # here again until retry(), so that a worker does not spin on it.
                engine.refused[fid] = exc
                engine.failed_runs += 1
                log.error("flow %s stopped: %s: %s (it stays resumable)", fid, type(exc).__name__, exc)
                handle._set(False, exc)
                return
            self._io_tries.pop(fid, None)
            log.info("flow %s finished", fid)
            handle._set(True, value)

        assert self._pool is not None
        self._jobs.add(fid)
        self._pool.submit(job)

    def busy(self, fid: str) -> bool:
        """Is the flow running here, queued to run, or due within ``park_after``?"""
        with self._lock:  # one look at both: a flow moves from _due to _jobs under this lock
            due = self._due.get(fid)
            if fid in self._jobs or self.engine.is_active(fid):
                return True
        return due is not None and due[0] - _clock.mono() <= self.engine.park_after_ms / 1000

    def schedule(self, fid: str, wake_at: int, waiting_for: str | None, after: float | None = None) -> None:
        """Resume the flow at ``wake_at`` (wall ms; 0 = now), or when a signal for ``waiting_for`` arrives.

        ``after``: the seconds left, if the caller knows them better than the wall clock does
        (a flow that just parked measured them; recovery caps them at the wait's length).
        """
        self._ensure_threads()
        with self._lock:
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

    def signalled(self, fid: str) -> None:
        """A signal was stored for ``fid``: if it is parked on one, resume it now."""
        with self._lock:
            waiting = fid in self._waiting
        if waiting:
            self.schedule(fid, 0, None)

    def _pop_due(self) -> list[tuple[str, int]]:
        """Flows whose time has come, with the wall deadline each was parked for (lock held)."""
        now = _clock.mono()
        due = []
        while self._heap and self._heap[0][0] <= now:
            when, fid = heapq.heappop(self._heap)
            known = self._due.get(fid)
            if known is not None and known[0] == when:
                del self._due[fid]
                self._jobs.add(fid)  # busy() from now on: it is about to be submitted
                due.append((fid, known[1]))
        return due

    def _schedule_loop(self) -> None:
        engine = self.engine
        while True:
            with self._lock:
                if self._closed:
                    return
                due = self._pop_due()
                self._waiting.difference_update(fid for fid, _ in due)  # a resumed flow re-parks itself
                waiting = list(self._waiting)
                timeout = engine.poll_interval
                if self._heap:
                    timeout = min(timeout, max(0.0, self._heap[0][0] - _clock.mono()))
            if waiting:
                ready = engine.store.signalled(waiting)
                with self._lock:
                    self._waiting.difference_update(ready)
                    self._jobs.update(ready)
                due += [(fid, 0) for fid in ready]
            for fid, deadline in due:
                if engine.is_active(fid):
                    self._jobs.discard(fid)
                else:
                    try:
                        self.submit(fid, functools.partial(engine.runner.resume, fid, deadline))
                    except TransparentDEError:
                        if self._closed:
                            return  # close() raced with a due flow: it stays parked in the journal
                        raise
            with self._lock:
                if not self._closed:
                    self._wakeup.wait(timeout)

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
        self.flusher.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        # Join our threads, so that a fork() right after close() forks a single-threaded process.
        for thread in (self._scheduler, self._heartbeat):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=5)
        self._scheduler = self._heartbeat = None
