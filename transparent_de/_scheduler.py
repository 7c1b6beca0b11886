"""The engine's background threads: the flow pool, wake-ups of parked flows, lease renewal.

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
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from . import _faults
from ._clock import now_ms
from ._run import Park
from ._store.base import LeaseLost
from .errors import FlowBusyError, TransparentDEError

if TYPE_CHECKING:
    from ._engine import Engine


class Scheduler:
    """Background work of one engine; threads start on first use and stop with :meth:`close`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._parked: list[tuple[int, str]] = []  # heap of (wake_at or 0, flow_id)
        self._waiting: set[str] = set()  # parked on a signal (polled)
        self._pool: ThreadPoolExecutor | None = None
        self._threads: list[threading.Thread] = []
        self._closed = False

    def _ensure_threads(self) -> None:
        with self._lock:
            if self._closed:
                raise TransparentDEError("this engine was closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.engine.max_workers, thread_name_prefix="tde-flow")
            if not self._threads:
                for name, target in (
                    ("tde-scheduler", self._schedule_loop),
                    ("tde-heartbeat", self._heartbeat),
                ):
                    thread = threading.Thread(target=target, name=name, daemon=True)
                    thread.start()
                    self._threads.append(thread)

    def submit(self, fid: str, fn: Callable[[], Any]) -> None:
        """Run ``fn`` (a flow's entry or resume) on the pool; its outcome goes to the flow's handle."""
        self._ensure_threads()
        handle = self.engine.handle(fid)

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

    def schedule(self, fid: str, wake_at: int, waiting_for: str | None) -> None:
        """Resume the flow at ``wake_at`` (ms; 0 = now), or when a signal for ``waiting_for`` arrives."""
        self._ensure_threads()
        with self._lock:
            # A wait with a timeout is both: watched for its signal and timed for its deadline
            # (only timing it left a signalled flow parked until the timeout).
            if waiting_for is not None:
                self._waiting.add(fid)
            if waiting_for is None or wake_at:
                heapq.heappush(self._parked, (wake_at, fid))
            self._wakeup.notify_all()

    def signalled(self, fid: str) -> None:
        """A signal was stored for ``fid``: if it is parked on one, resume it now."""
        with self._lock:
            waiting = fid in self._waiting
        if waiting:
            self.schedule(fid, 0, None)

    def _schedule_loop(self) -> None:
        engine = self.engine
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
                timeout = engine.poll_interval
                if self._parked:
                    timeout = min(timeout, max(0.0, (self._parked[0][0] - now) / 1000))
            if waiting:
                ready = engine.store.signalled(waiting)
                with self._lock:
                    self._waiting.difference_update(ready)
                due += ready
            for fid in due:
                if not engine.is_active(fid):
                    try:
                        self.submit(fid, functools.partial(engine.runner.resume, fid))
                    except TransparentDEError:
                        if self._closed:
                            return  # close() raced with a due flow: it stays parked in the journal
                        raise
            with self._lock:
                if not self._closed:
                    self._wakeup.wait(timeout)

    def _heartbeat(self) -> None:
        """Renew the leases of flows running here, so a long step does not lose its flow."""
        engine = self.engine
        while True:
            with self._lock:
                if self._closed:
                    return
                self._wakeup.wait(max(0.05, engine.lease_ms / 3000))
            active = engine.active_flows()
            if active:
                with contextlib.suppress(Exception):
                    engine.store.renew(engine.owner, active, now_ms() + engine.lease_ms)

    def close(self) -> None:
        """Stop the threads (running flows finish their current step) and join them."""
        with self._lock:
            self._closed = True
            self._wakeup.notify_all()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        # Join our threads, so that a fork() right after close() forks a single-threaded process.
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)
        self._threads = []
