"""A flow's write path: fenced commits, carried rows, and the flusher that writes them on time.

One commit per step. A step's COMPLETE row is not committed on its own: the run *carries*
it (:meth:`FlowWriter.carry`) and it rides in the flow's next transaction (the next step's
intent, a sleep, a park, the flow's end), which makes a step cost one commit instead of two.
That next write comes at once when flow code goes straight from one step to the next; when
flow-level code computes for a while in between, the :class:`Flusher` thread commits what
the flow carries once it has waited :data:`FLUSH_AFTER`, so a crash in a long stretch of flow
code does not re-run the step before it. docs/concepts.md ("What a crash re-runs") lists
every window.

The flusher is one thread per engine, started by the first carried row and idle (blocked on
an event) while no flow carries anything. It never blocks a flow: a flow that is committing
holds its writer's lock, and the flusher then leaves it alone (that commit takes the carried
rows anyway). Its commits have no crash point (their timing is the machine's, not the
flow's), like the heartbeat's.
"""

from __future__ import annotations

import logging
import threading

from . import _clock, _faults
from ._store.base import Fence, Op, Release, Store

log = logging.getLogger("transparent_de")

#: How long a flow may carry a completed step's result before this thread commits it (s).
#: Short enough that a crash in flow-level code rarely re-runs a step, long enough that flows
#: going from step to step (every few µs) never meet the thread.
FLUSH_AFTER = 0.005


class Flusher:
    """Commits the rows flows carry once they have waited :data:`FLUSH_AFTER` (see module doc)."""

    def __init__(self) -> None:
        self._writers: dict[FlowWriter, None] = {}  # writers that carried something when last seen
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def track(self, writer: FlowWriter) -> None:
        """``writer`` started carrying rows (called under its lock). Cheap when it is tracked
        already, which is the case for a flow going from step to step."""
        if writer in self._writers:
            return
        self._writers[writer] = None
        if self._thread is None:
            with self._start_lock:
                if self._thread is None and not self._stop.is_set():
                    self._thread = threading.Thread(target=self._loop, name="tde-flush", daemon=True)
                    self._thread.start()
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before looking: a track() after this sets it again
            if not self._writers:
                self._wake.wait()
                continue
            now = _clock.mono()
            nap = FLUSH_AFTER
            for writer in list(self._writers):
                due = writer.flush_due(now)  # None: nothing carried, or the flow is busy writing
                if due is None:
                    continue
                if due <= now:
                    writer.flush_carried()
                else:
                    nap = min(nap, due - now)
            self._stop.wait(nap)

    def forget(self, writer: FlowWriter) -> None:
        """``writer`` carries nothing any more (called under its lock)."""
        self._writers.pop(writer, None)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._thread = None


class FlowWriter:
    """The writes of one run of a flow: every commit is fenced and takes the carried rows first.

    Thread-safe: the flow's thread and the flusher's both write through it, under its lock.
    Errors reach the caller as the store raises them (the run adds the flow's context).
    """

    __slots__ = ("_flusher", "_lock", "_since", "fence", "full", "open", "pending", "queued", "store")

    def __init__(self, store: Store, fence: Fence, flusher: Flusher, full: bool) -> None:
        self.store, self.fence, self._flusher, self.full = store, fence, flusher, full
        self.pending: list[Op] = []  # carried rows, oldest first
        self._lock = threading.Lock()
        self._since = 0.0  # monotonic time the oldest carried row was carried
        self.open = True  # False once the run ended: nothing more is written
        #: Commits of this flow waiting in a writer thread (async flows): they take the carried
        #: rows, so the flusher leaves them alone meanwhile.
        self.queued = 0

    def commit(self, label: str, ops: tuple[Op, ...]) -> None:
        """One fenced transaction: the carried rows, then ``ops``. ``label`` names the crash
        point before its COMMIT."""
        with self._lock:
            if self.pending:
                self.store.commit(self.fence, [*self.pending, *ops], label)
                self.pending = []
            else:
                self.store.commit(self.fence, ops, label)

    def carry(self, op: Op) -> None:
        """Keep ``op`` for the next commit instead of committing it now.

        Safe because nothing can observe the row before that write: the next step, a sleep, a
        park, a wait, a child flow, a signal sent from flow code and the flow's end all write
        first, and when flow-level code runs long in between, the flusher writes it after
        :data:`FLUSH_AFTER`. A crash before then re-runs the step, as a crash just after its
        body returned always did (docs/concepts.md, "What a crash re-runs").
        """
        with self._lock:
            if not self.pending:
                self._since = _clock.mono()
                self._flusher.track(self)
            self.pending.append(op)

    def sync(self) -> None:
        self.store.sync()

    def close(self) -> None:
        """The run ended: what it still carries (after a crash or a lost lease) is dropped, as a
        crash would drop it, and the flusher writes nothing more for it."""
        with self._lock:
            self.open = False
            self.pending = []

    def release(self) -> None:
        """Give the flow up with the rows it carries (best effort: the journal may be what failed)."""
        with self._lock:
            carried, self.pending = self.pending, []
            if not (carried and self._release(carried)):
                self._release([])  # e.g. a full disk: free the flow at least; its carried steps re-run

    def _release(self, carried: list[Op]) -> bool:
        try:
            self.store.commit(self.fence, [*carried, Release(_clock.now_ms())], "flow.release.mid_txn")
            if self.full:
                self.store.sync()
        except _faults.InjectedCrash:
            raise  # a crash writes nothing more
        except BaseException:  # best effort, see release()
            return False
        return True

    # ---------------------------------------------------------------- the flusher's side

    def flush_due(self, now: float) -> float | None:
        """When the carried rows are due to be written; None if there are none (the writer is
        then forgotten) or the flow is writing right now (or has a commit queued)."""
        if self.queued or not self._lock.acquire(blocking=False):
            return None
        try:
            if self.pending and self.open:
                return self._since + FLUSH_AFTER
            self._flusher.forget(self)
            return None
        finally:
            self._lock.release()

    def flush_carried(self) -> None:
        """Commit the carried rows if the flow still carries them. A failure (a lost lease, a
        journal error) is left for the flow's own next write, which meets it with the flow's
        context; nothing is written then."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self.pending and self.open:
                try:
                    self.store.commit(self.fence, self.pending, None)
                    if self.full:
                        self.store.sync()
                except BaseException:  # left for the flow's next write (docstring)
                    log.debug("flow %s: carried rows left for its next write", self.fence.flow_id, exc_info=True)
                else:
                    self.pending = []
            self._flusher.forget(self)
        finally:
            self._lock.release()
