"""The storage interface: what the engine asks of a journal, in the engine's own terms.

The engine decides, the store persists. A backend (SQLite today; PostgreSQL next) implements
:class:`Store`; the engine, the runner, the CLI and ``testing`` speak only this interface and
hold no SQL. It has three parts:

* **Writes of a running flow** are data: a list of :data:`Op` records applied by
  :meth:`Store.commit` in one transaction, *fenced* by the flow's :class:`Fence` (if another
  process took the flow over, nothing is written and :class:`LeaseLost` is raised). Keeping
  writes as data is what lets a step's result ride in the same transaction as the next
  step's intent, an async flow's writes go in one call, and a network backend send them in
  one round trip.
* **Ownership** is compare-and-set on the fencing token: :meth:`Store.take_over` succeeds only
  if the flow's token is still the one the caller saw, so two claimers never both win. The
  rule for *whether* to take a flow over (a dead owner, an expired lease) is the engine's.
* **Reads** return frozen records (:class:`FlowState`, :class:`StepRow`, :class:`FlowInfo` ...).

Every method is safe to call from several threads; a store opened ``readonly`` refuses
writes and never changes the file or database.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

STATUSES = ("PENDING", "WAITING_FOR_SIGNAL", "COMPLETE", "FAILED", "CANCELLED")
TERMINAL = ("COMPLETE", "FAILED", "CANCELLED")
UNFINISHED = ("PENDING", "WAITING_FOR_SIGNAL")


class LeaseLost(BaseException):
    """This process no longer owns the flow; unwind without writing anything.

    A ``BaseException``: flow code's ``except Exception`` must not swallow it.
    """

    def __init__(self, flow_id: str) -> None:
        super().__init__(f"lease of flow {flow_id} was taken over by another process")
        self.flow_id = flow_id


@dataclass(frozen=True, slots=True)
class Fence:
    """Who may write a flow: every fenced commit checks owner and token, and renews the lease."""

    flow_id: str
    owner: str
    token: int
    lease_ms: int


# --------------------------------------------------------------------------- records


@dataclass(slots=True)
class StepRow:
    """One ``execution_log`` row as replay needs it (step > 0)."""

    step: int
    class_name: str
    method_name: str
    status: str
    attempts: int
    parameters: bytes | None
    return_value: bytes | None
    fingerprint: str | None
    error: bytes | None
    timestamp: int
    delay: int | None
    kind: str
    lineage: str | None = None  # an async flow's slot ident ('0.1:3'), see _lineage


@dataclass(frozen=True, slots=True)
class FlowState:
    """What a claim needs to know about an existing flow (its ``flows`` row and step 0)."""

    status: str
    owner: str | None
    lease_until: int | None
    fence: int
    entry_class: str
    entry_method: str
    fingerprint: str | None
    failures: int  # consecutive failed runs
    parameters: bytes | None  # step 0's arguments (to show them when a call does not match)


@dataclass(frozen=True, slots=True)
class FlowIdentity:
    """The columns that choose what code resumes a flow, with its instance and arguments."""

    module: str
    qualname: str
    method: str
    declaring: str
    instance: bytes | None
    parameters: bytes


@dataclass(frozen=True, slots=True)
class Outcome:
    """Step 0's status and its value blobs (the flow's result or error)."""

    status: str
    return_value: bytes | None
    error: bytes | None


@dataclass(frozen=True, slots=True)
class Unfinished:
    """A flow recovery may resume: who holds it and what it waits for."""

    flow_id: str
    owner: str | None
    lease_until: int | None
    fence: int
    wake_at: int | None
    waiting_for: str | None
    wait_length: int | None  # ms: the length of the sleep or wait it is parked in, if any


@dataclass(frozen=True, slots=True)
class WaitState:
    status: str
    wake_at: int | None
    waiting_for: str | None


@dataclass(frozen=True, slots=True)
class NewFlow:
    """A flow to create: its ``flows`` row and step 0."""

    flow_id: str
    module: str
    qualname: str
    method: str
    instance: bytes
    entry_class: str
    parameters: bytes
    fingerprint: str
    owner: str | None  # None: created without being claimed (``start()``)
    lease_until: int
    now: int


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
    """One journal row, its blobs left encoded (tools decide whether and how to show them)."""

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


@dataclass(frozen=True)
class Health:
    """What ``doctor`` reports about the journal itself."""

    ours: bool
    application_id: int
    schema_version: int
    supported_schema: int
    integrity: list[str]
    counts: dict[str, int]
    signed: int  # flows whose instance blob says it is signed
    unsigned: int
    file_mode: int | None  # POSIX mode of the journal file, for file backends


@dataclass(frozen=True, slots=True)
class WakeHint:
    """The journal's word that a parked flow may have become runnable (see :meth:`Store.listen`).

    ``kind`` is ``"signal"`` (a signal was stored for the flow) or ``"parked"`` (the flow was
    parked and released: ``wake_at`` and ``waiting_for`` as its ``flows`` row has them,
    ``left_ms`` the time left as the parking engine measured it, ``origin`` that engine's
    owner id). A hint is never proof: the receiver acts on it as on what polling would find.
    """

    kind: str
    flow_id: str
    wake_at: int | None = None
    left_ms: int | None = None
    waiting_for: str | None = None
    origin: str | None = None


class Closable(Protocol):
    """What :meth:`Store.listen` returns: closing it stops the hints (and joins their thread)."""

    def close(self) -> None: ...


# --------------------------------------------------------------------------- writes as data


@dataclass(frozen=True, slots=True)
class Intent:
    """Insert step ``step`` before it runs (status PENDING, or WAITING_FOR_SIGNAL for a wait).

    If the row exists already (a retry the caller did not know about) only ``attempts``
    grows: status, timestamp and parameters keep their first values, as in the seed.
    """

    step: int
    timestamp: int
    class_name: str
    method_name: str
    kind: str
    parameters: bytes | None
    fingerprint: str | None
    site: str | None
    delay: int | None = None
    status: str = "PENDING"
    lineage: str | None = None  # async flows: the call's slot ident, its identity (docs/async.md)


@dataclass(frozen=True, slots=True)
class Retry:
    """``attempts + 1`` on an existing row, and its status set again (None: kept)."""

    step: int
    now: int
    status: str | None = "PENDING"


@dataclass(frozen=True, slots=True)
class Complete:
    """The step's result: status COMPLETE (a timer's row: no value)."""

    step: int
    return_value: bytes | None
    now: int


@dataclass(frozen=True, slots=True)
class StepFailed:
    """The step's final exception: status FAILED; a replay re-raises it."""

    step: int
    error: bytes
    error_text: str
    now: int


@dataclass(frozen=True, slots=True)
class Reopen:
    """An escaped failure: FAILED becomes PENDING again, so the next run retries the step."""

    step: int
    now: int


@dataclass(frozen=True, slots=True)
class Captured:
    """A captured value (``time.time()`` ...): a COMPLETE row of its own."""

    step: int
    timestamp: int
    module: str
    method: str
    value: bytes
    fingerprint: str | None
    lineage: str | None = None  # async flows: the call's slot ident, its identity (docs/async.md)


@dataclass(frozen=True, slots=True)
class ConsumeSignal:
    """Signal ``seq`` is taken by ``step``, whose row gets its (re-signed) arguments.

    Conditional: if the signal was consumed already, the whole commit is refused
    (:class:`Conflict`).
    """

    seq: int
    step: int
    parameters: bytes
    now: int


@dataclass(frozen=True, slots=True)
class FlowComplete:
    """The flow returned: step 0 COMPLETE with the result, the flow released."""

    return_value: bytes
    now: int


@dataclass(frozen=True, slots=True)
class FlowFailed:
    """A final failure: step 0 FAILED with the error, the flow released (the dead letter)."""

    error: bytes
    now: int
    failures: int = 1


@dataclass(frozen=True, slots=True)
class Backoff:
    """A failed run of a resumable flow: released, and not to be resumed by recovery before
    ``wake_at``; ``failures`` failed runs in a row so far."""

    wake_at: int
    failures: int
    now: int


@dataclass(frozen=True, slots=True)
class Parked:
    """The flow unwound to wait: released, with its wake-up time or awaited step."""

    wake_at: int | None
    waiting_for: str | None
    now: int


@dataclass(frozen=True, slots=True)
class Waiting:
    """The flow, still owned, blocks for a signal to ``waiting_for`` (``None``: it goes on): so
    that ``list`` shows a foreground wait as WAITING_FOR_SIGNAL."""

    waiting_for: str | None
    now: int


@dataclass(frozen=True, slots=True)
class Release:
    """Give the flow up (it stays resumable by anyone)."""

    now: int


Op: TypeAlias = (
    Intent
    | Retry
    | Complete
    | StepFailed
    | Reopen
    | Captured
    | ConsumeSignal
    | FlowComplete
    | FlowFailed
    | Backoff
    | Parked
    | Waiting
    | Release
)


class Conflict(Exception):
    """A conditional write found the journal changed under it; nothing was written."""


# --------------------------------------------------------------------------- the interface


class Store(abc.ABC):
    """A journal backend. See the module docstring for the contract."""

    #: Where the journal is, for messages (a file path, or a URL without its password).
    path: str
    readonly: bool
    #: Does every commit wait for a server's reply? Then async flows commit off their event
    #: loop in every durability mode, not only under ``durability="full"`` (_async_run).
    remote: bool = False

    @abc.abstractmethod
    def close(self) -> None:
        """Release every connection (in this process)."""

    # ---------------------------------------------------------------- flows

    @abc.abstractmethod
    def flow_state(self, flow_id: str) -> FlowState | None: ...

    @abc.abstractmethod
    def create_flow(self, flow: NewFlow) -> bool:
        """Insert the flow and its step 0 in one transaction; False if the id exists already."""

    @abc.abstractmethod
    def take_over(self, flow_id: str, seen_fence: int, owner: str, lease_until: int, now: int) -> int | None:
        """Claim the flow if its token is still ``seen_fence``: new owner, token + 1, the wake-up
        and wait cleared, status PENDING, step 0's ``attempts + 1``. Returns the new token, or
        None if the flow changed since it was read."""

    @abc.abstractmethod
    def load_steps(self, flow_id: str) -> dict[int, StepRow]:
        """Every row of the flow but step 0, by step number (what a replay needs)."""

    @abc.abstractmethod
    def commit(self, fence: Fence, ops: Sequence[Op], label: str | None) -> None:
        """Apply ``ops`` in one transaction, fenced: refused with :class:`LeaseLost` (nothing
        written) if the flow is no longer ours. ``label`` names the crash point just before the
        transaction commits (docs/fuzzing.md); None for writes whose timing is not the flow's
        (the flusher's), which have none."""

    @abc.abstractmethod
    def sync(self) -> None:
        """Make every commit so far survive power loss (``durability='full'``; else nothing)."""

    @abc.abstractmethod
    def renew(self, owner: str, flow_ids: Sequence[str], lease_until: int) -> None:
        """Extend the leases of flows this owner runs (heartbeat). Every renewal changes the
        stored lease (so that others can tell a live owner from a stopped one by watching it),
        even when ``lease_until`` is not later than what is stored."""

    @abc.abstractmethod
    def rearm(self, flow_id: str, now: int) -> str | None:
        """Make a FAILED flow resumable again (failures cleared, token bumped); returns the
        status it had, or None if there is no such flow. Other flows are left as they are."""

    @abc.abstractmethod
    def cancel(self, flow_id: str, now: int) -> str | None:
        """Mark an unfinished flow CANCELLED (its token bumped); returns the status it had, or
        None if there is no such flow. A finished flow is left as it is."""

    # ---------------------------------------------------------------- signals

    @abc.abstractmethod
    def add_signal(self, flow_id: str, step_name: str, sent: int, seal: Callable[[int], bytes]) -> int:
        """Store a signal; ``seal(seq)`` makes its payload once its row number is known (the
        signature binds the payload to its row). Returns ``seq``."""

    @abc.abstractmethod
    def next_signal(self, flow_id: str, step_name: str) -> tuple[int, bytes] | None:
        """The oldest unconsumed signal for the step: ``(seq, payload)``."""

    @abc.abstractmethod
    def signalled(self, flow_ids: Sequence[str]) -> list[str]:
        """Of these parked flows, those with a signal for the step they wait for, or that no
        longer wait at all (finished, cancelled, resumed elsewhere)."""

    # ---------------------------------------------------------------- reads

    @abc.abstractmethod
    def status(self, flow_id: str) -> str | None: ...

    @abc.abstractmethod
    def identity(self, flow_id: str) -> FlowIdentity | None: ...

    @abc.abstractmethod
    def outcome(self, flow_id: str) -> Outcome | None: ...

    @abc.abstractmethod
    def flow_class(self, flow_id: str) -> str | None:
        """``module.Qualname`` of the flow's class."""

    @abc.abstractmethod
    def wait_state(self, flow_id: str) -> WaitState | None: ...

    @abc.abstractmethod
    def unfinished(self) -> list[Unfinished]:
        """Flows that are PENDING or WAITING_FOR_SIGNAL, oldest first."""

    @abc.abstractmethod
    def flows(self, status: str | None = None) -> list[FlowInfo]: ...

    @abc.abstractmethod
    def flow_info(self, flow_id: str) -> FlowInfo | None: ...

    @abc.abstractmethod
    def unfinished_of(self, module: str, qualname: str, method: str) -> int:
        """How many unfinished flows this entry has."""

    @abc.abstractmethod
    def values(self) -> Iterator[tuple[str, int, bytes | None, bytes | None, bytes | None]]:
        """Every row's ``(flow_id, step, parameters, return_value, error)`` (for ``doctor``)."""

    @abc.abstractmethod
    def steps(self, flow_id: str) -> list[StepInfo]:
        """Every row of the flow, step 0 first (empty if there is no such flow)."""

    @abc.abstractmethod
    def modules(self, flow_id: str | None = None, unfinished: bool = False) -> list[str]:
        """Modules of the flows' classes (so the CLI can install the import hook for them)."""

    def describe(self) -> dict[str, Any]:
        """Backend facts for ``doctor`` (versions, settings)."""
        return {}

    def listen(self, on_hint: Callable[[WakeHint | None], None]) -> Closable | None:
        """Call ``on_hint`` from a thread of the store's own whenever another process (or this
        one) stores a signal or parks a flow, until the returned handle is closed; ``on_hint(None)``
        after a reconnection, when hints may have been missed. None: this backend sends no
        hints, and the engine finds signals and parked flows by polling alone (SQLite: a file
        has no way to tell another process). Hints only make wake-ups prompt; the engine polls
        anyway, so a backend may drop some."""
        return None
