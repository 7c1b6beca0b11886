"""The carried-result flusher: a step's result written on time when flow code runs long after it.

A step's COMPLETE row is not committed on its own: it rides in the flow's next transaction
(the next step's intent, a sleep, a park, the flow's end; see ``Run.carry``), which makes a
step cost one commit instead of two. That next write comes at once when flow code goes
straight from one step to the next; when flow-level code computes for a while in between,
this thread commits what the flow carries once it has waited :data:`FLUSH_AFTER`, so a
crash in a long stretch of flow code does not re-run the step before it.

One thread per engine, started by the first carried write and idle (blocked on an event)
while no flow carries anything. It never blocks a flow: a flow that is committing holds its
own lock, and the flusher then leaves it alone (its commit takes the carried rows anyway).
Its commits have no crash point (their timing is the machine's, not the flow's), like the
heartbeat's.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from . import _clock

if TYPE_CHECKING:
    from ._run import Run

#: How long a flow may carry a completed step's result before this thread commits it (s).
#: Short enough that a crash in flow-level code rarely re-runs a step, long enough that flows
#: going from step to step (every few µs) never meet the thread.
FLUSH_AFTER = 0.005


class Flusher:
    """Commits the rows flows carry once they have waited :data:`FLUSH_AFTER` (see module doc)."""

    def __init__(self) -> None:
        self._runs: dict[Run, None] = {}  # flows that carried something when last seen (insertion-ordered)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def track(self, run: Run) -> None:
        """``run`` started carrying rows (called under the run's lock). Cheap when it is tracked
        already, which is the case for a flow going from step to step."""
        if run in self._runs:
            return
        self._runs[run] = None
        if self._thread is None:
            with self._start_lock:
                if self._thread is None and not self._stop.is_set():
                    self._thread = threading.Thread(target=self._loop, name="tde-flush", daemon=True)
                    self._thread.start()
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before looking: a track() after this sets it again
            if not self._runs:
                self._wake.wait()
                continue
            now = _clock.mono()
            nap = FLUSH_AFTER
            for run in list(self._runs):
                due = run.flush_due(now)  # None: nothing carried, or the flow is busy writing
                if due is None:
                    continue
                if due <= now:
                    run.flush_carried()
                else:
                    nap = min(nap, due - now)
            self._stop.wait(nap)

    def forget(self, run: Run) -> None:
        """``run`` carries nothing any more (called under the run's lock)."""
        self._runs.pop(run, None)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._thread = None
