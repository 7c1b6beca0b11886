"""Deterministic step identity for async flows: task lineage plus call order (issue #16).

In an async flow, steps run concurrently (``gather``, ``TaskGroup``, ``create_task``,
interleaved sequences), so the order in which they *finish*, or even *start*, depends on
timing. A step's journal identity must not. Here it is a **slot** ``(key, n)``:

* ``key`` names the asyncio task the call was made in, by lineage: the flow's own task is
  ``"0"``; the k-th task (1-based) created while a task with key ``p`` runs is ``p.k``
  (``"0.1"``, ``"0.1.2"``...);
* ``n`` (1-based) is the call's position among the journaled calls made in that task. A
  coroutine awaited directly (a helper, not a task) runs in its caller's task and shares its
  counter.

A slot is taken by :func:`reserve`, synchronously when flow code *calls* the step, before any
``await``; ``await asyncio.gather(self.a(), self.b())`` therefore gives ``a`` and ``b`` slots in
the calling task, in argument order, even though they run in two new tasks.

Why this is deterministic. A task is created synchronously by code of its parent task
(``create_task``, ``ensure_future``, ``gather``, ``TaskGroup.create_task`` return at once). The
code of one task runs uninterrupted between two awaits, and what it does next depends only on
what its awaits returned: step results (journaled, so replayed), and results of other tasks
(themselves functions of step results). So the sequence of tasks a task creates and of
journaled calls it makes does not depend on when other tasks ran; by induction over the task
tree, every slot does not either.

What is NOT deterministic, and must be recorded instead of recomputed: anything that observes
*which of several things happened first*. ``asyncio.wait`` with ``FIRST_COMPLETED`` /
``FIRST_EXCEPTION`` / a timeout, ``as_completed``, ``wait_for`` and ``asyncio.timeout`` expiry,
polling ``task.done()``, and values passed between tasks through a ``Queue`` filled by several
producers. :class:`._decisions.Decisions` records and replays the first two kinds by task key; a slot
whose arguments differ on replay (a queue's order) is the engine's fingerprint check's job.

Global step numbers. The journal orders rows by ``step`` 1, 2, 3...; a :class:`Lineage` maps
each slot to one. On a live run, numbers follow reservation order (which is timing-dependent,
so a number is never identity). On replay, the engine passes the journal's
``slot ident -> step`` rows as ``recorded``; a slot found there gets its recorded number
whatever order it is reserved in now, and a slot not found there gets a fresh number above
every number the journal holds. Numbers may have gaps (a slot reserved but never journaled
before a crash), are unique per flow, and increase with ``n`` within one task. The journal
must store the slot's ident (``"0.1:3"``, :attr:`Slot.ident`) in a ``lineage TEXT`` column
next to ``step``: ``n`` cannot be derived from row order, since a call reserved earlier in a
task may have its intent written after a later one (or be lost in a crash while the later one
is not).

What the engine must do (the contract that keeps slots deterministic):

* one :class:`Lineage` per run of a flow, entered with :meth:`Lineage.bound` in the task that
  runs the entry coroutine; it installs a task factory on the running loop that gives every
  task created under the flow a child node. NOTE: each task *copies* its creator's context, so
  without the factory a child would share its parent's node object (and counter): the factory
  sets a new node in the child's context. It composes with a factory already set (eager task
  factories included) and restores it when the last flow on the loop leaves;
* call :func:`reserve` in the trampoline at the call, not in the coroutine it returns;
* return an awaitable of the same shape whether the step runs or is replayed, so ``gather``
  creates the same tasks either way;
* know the flow's thread itself: a thread that copies no context (``run_in_executor``, a
  ``threading.Thread``) sees no node here, so :func:`reserve` returns None there as it does
  outside flows (``asyncio.to_thread`` copies the context, and is refused below);
* run step bodies inside :func:`suspended`: code inside a step is plain (tasks a step body or a
  library creates there get no lineage and consume no child number, so a replayed step, which
  does not run, leaves the numbering unchanged).

Misuse is an error, never a silently shifted id: a slot reserved from a thread
(``asyncio.to_thread``), a loop callback, a task created bypassing the factory
(``asyncio.Task(...)`` directly, or a factory replaced while the flow runs), or a task still
running after the flow returned raises :class:`LineageError` naming the flow and the task.

Python versions: nothing here compares versions. The factory passes on whatever keywords the
loop gives it (none on 3.10; ``context=`` from 3.11, where ``TaskGroup`` appears too). A
caller's ``context=`` reaches the task as a copy holding the child node: the caller's context
object is left unchanged, and so no longer sees what the task sets in it. 3.12+ eager task
factories compose: an eager child runs its first steps inside ``create_task``; its keys are the
same, only live step numbers differ. Two cross-version traps the engine must handle:
``wait_for(coro)`` wraps the coroutine in a task on 3.10/3.11 but awaits it in place on 3.12+
(a flow resumed on another minor version would see other keys), and ``asyncio.as_completed``
(and 3.10 ``wait``) turn bare coroutines into tasks in *set* order: pass tasks, or use
:meth:`._decisions.Decisions.as_completed`.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from .errors import TransparentDEError

__all__ = [
    "ROOT",
    "Lineage",
    "LineageError",
    "Node",
    "Slot",
    "current",
    "key_sort",
    "parse_ident",
    "reserve",
    "suspended",
]

#: The key of the task that runs the flow's entry.
ROOT = "0"
_KEY = re.compile(r"0(?:\.[1-9][0-9]*)*")
_IDENT = re.compile(r"(0(?:\.[1-9][0-9]*)*):([1-9][0-9]*)")

#: The lineage node of the running code: None outside async flow code and inside step bodies.
_CURRENT: contextvars.ContextVar[Node | None] = contextvars.ContextVar("transparent_de_lineage", default=None)

TaskFactory = Callable[..., "asyncio.Future[Any]"]


class LineageError(TransparentDEError):
    """A slot could not be given a deterministic identity; the call was not journaled."""

    def __init__(self, message: str = "", *, flow_id: str = "", key: str = "", reason: str = "") -> None:
        super().__init__(message, flow_id=flow_id, key=key, reason=reason)

    def _build(self, **f: Any) -> str:
        flow = f"flow {f['flow_id']}" if f["flow_id"] else "an async flow"
        where = f", task {f['key']}" if f["key"] else ""
        return f"{flow}{where}: {f['reason']}"


@dataclass(frozen=True)
class Slot:
    """One journaled call's identity (``key``, ``n``) and the global ``step`` it maps to."""

    key: str
    n: int
    step: int

    @property
    def ident(self) -> str:
        """The text the journal stores in its ``lineage`` column, e.g. ``"0.1:3"``."""
        return f"{self.key}:{self.n}"


def parse_ident(ident: str) -> tuple[str, int]:
    """``"0.1:3"`` -> ``("0.1", 3)``; a malformed ident raises ``ValueError`` (a damaged row)."""
    match = _IDENT.fullmatch(ident)
    if match is None:
        raise ValueError(f"not a lineage slot: {ident!r} (expected like '0.1:3')")
    return match.group(1), int(match.group(2))


def key_sort(key: str) -> tuple[int, ...]:
    """Sort key for lineage keys: ``"0.2"`` before ``"0.10"`` (text order would not be)."""
    return tuple(int(part) for part in key.split("."))


def current() -> Node | None:
    """The lineage node of the running code, or None outside async flow code / in a step body."""
    return _CURRENT.get()


def reserve() -> Slot | None:
    """Take the next slot of the current task; None where calls are not journaled.

    Call it synchronously where the step is called. None means "not in async flow code"
    (or inside a step body, see :func:`suspended`): the caller runs the step plainly.
    """
    node = _CURRENT.get()
    return None if node is None else node.reserve()


@contextmanager
def suspended() -> Iterator[None]:
    """Run a step body (or engine code) outside the lineage: nothing in it is numbered.

    Safe across awaits: the variable is set in the running task's own context.
    """
    token = _CURRENT.set(None)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def _running_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop in this thread
        return None


class Node:
    """The lineage of one task of one flow: its key, its call counter and its child counter.

    A node belongs to exactly one task (bound at creation; lazily for an eager task, whose
    first steps run before ``create_task`` returns). A node reached from another task means a
    context was copied without the factory: that is refused, as it would share the counters.
    """

    __slots__ = ("_calls", "_children", "_task", "key", "lineage", "orphan")

    def __init__(self, lineage: Lineage, key: str, orphan: str = "") -> None:
        self.lineage = lineage
        self.key = key
        #: Why this task cannot take slots ("" if it can): created off the flow's tasks.
        self.orphan = orphan
        self._calls = 0
        self._children = 0
        self._task: weakref.ref[asyncio.Task[Any]] | None = None

    def __repr__(self) -> str:
        return f"<lineage node {self.key} of flow {self.lineage.flow_id or '?'}>"

    def reserve(self) -> Slot:
        """The next call index of this task, and its global step number."""
        self._check()
        self._calls += 1
        return self.lineage._number(self.key, self._calls)

    def spawn(self) -> Node:
        """The node of a task being created now by this node's task."""
        if self.orphan:
            return Node(self.lineage, self.key, self.orphan)
        task = _running_task()
        if task is None or not self._owned_by(task) or self.lineage.closed:
            # A task created from a thread, a loop callback or after the flow returned: when
            # that happens is a matter of timing, so it gets no number; its steps are refused.
            why = (
                "it was created after the flow returned"
                if self.lineage.closed
                else "it was created outside the flow's tasks (from a loop callback or a thread)"
            )
            return Node(self.lineage, self.key, f"a step was called in a task that has no lineage: {why}")
        self._children += 1
        return Node(self.lineage, f"{self.key}.{self._children}")

    def adopt(self, task: asyncio.Task[Any]) -> None:
        """Bind this node to the task it was made for (right after the task's creation)."""
        if self._task is None:
            self._task = weakref.ref(task)
        elif self._task() is not task:  # pragma: no cover - the factory binds before anything else
            raise LineageError(flow_id=self.lineage.flow_id, key=self.key, reason="node bound twice")
        if not self.orphan:
            self.lineage._tasks[task] = self

    def task(self) -> asyncio.Task[Any] | None:
        """The task this node belongs to (None before it is bound, or once it is gone)."""
        return None if self._task is None else self._task()

    def _owned_by(self, task: asyncio.Task[Any]) -> bool:
        if self._task is None:  # an eager task's first step, before create_task returned
            self._task = weakref.ref(task)
        return self._task() is task

    def _check(self) -> None:
        def fail(reason: str) -> LineageError:
            return LineageError(flow_id=self.lineage.flow_id, key=self.key, reason=reason)

        if self.orphan:
            raise fail(self.orphan)
        if self.lineage.closed:
            raise fail(
                "a step was called after the flow returned (a task it started was left running); "
                "await every task the flow creates before it returns"
            )
        task = _running_task()
        if task is None:
            raise fail(
                "a step was called outside the flow's tasks (from a thread such as asyncio.to_thread, "
                "or a loop callback); its position in the journal would depend on timing. Call "
                "steps from flow code, in the flow's tasks"
            )
        if not self._owned_by(task):
            raise fail(
                f"a step was called in task {task.get_name()!r}, which was created without the "
                "flow's task factory (asyncio.Task(...) called directly, or the loop's task factory "
                "replaced while the flow ran), so it would share this task's call counter. Create "
                "tasks with asyncio.create_task / loop.create_task / TaskGroup"
            )


class _Factory:
    """The task factory installed on a loop while flows run on it.

    It composes with the factory that was set before (``inner``, None for the default
    ``asyncio.Task``), and counts the bound flows using it so the last one restores ``inner``.
    """

    def __init__(self, inner: TaskFactory | None) -> None:
        self.inner = inner
        self.users = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future[Any]:
        parent = _CURRENT.get()
        if parent is None:
            return self._make(loop, coro, kwargs)
        child = parent.spawn()
        context: contextvars.Context | None = kwargs.get("context")
        if context is not None:
            # NOTE: 3.11+ callers may pass their own context; the task uses it as-is, so the
            # child node goes into a copy (the caller's object is left alone).
            context = context.copy()
            context.run(_CURRENT.set, child)
            kwargs["context"] = context
            task = self._make(loop, coro, kwargs)
        else:
            # NOTE: the task copies the current context when it is constructed (an eager
            # task also runs its first step in that copy), so the child is set around it.
            token = _CURRENT.set(child)
            try:
                task = self._make(loop, coro, kwargs)
            finally:
                _CURRENT.reset(token)
        if isinstance(task, asyncio.Task):
            child.adopt(task)
        return task

    def _make(
        self, loop: asyncio.AbstractEventLoop, coro: Any, kwargs: dict[str, Any]
    ) -> asyncio.Future[Any]:
        if self.inner is None:
            return asyncio.Task(coro, loop=loop, **kwargs)
        return self.inner(loop, coro, **kwargs)


class Lineage:
    """The slots of one run of one async flow, and their mapping to global step numbers.

    ``recorded`` is the journal's ``{slot ident: step}`` for this flow (empty on a first run);
    ``next_step`` the first number free in the journal, rows without a slot included (default:
    one above the highest recorded step, or 1).
    """

    def __init__(
        self, *, flow_id: str = "", recorded: Mapping[str, int] | None = None, next_step: int | None = None
    ) -> None:
        self.flow_id = flow_id
        self._recorded = dict(recorded or {})
        self._check_recorded()
        floor = max(self._recorded.values(), default=0) + 1
        if next_step is not None and next_step < floor:
            raise LineageError(
                flow_id=flow_id,
                reason=f"next_step {next_step} is not above the highest recorded step {floor - 1}",
            )
        self._next = floor if next_step is None else next_step
        self._assigned: dict[str, int] = {}
        self._tasks: weakref.WeakKeyDictionary[asyncio.Task[Any], Node] = weakref.WeakKeyDictionary()
        self.root = Node(self, ROOT)
        self.closed = False
        self._entered = False

    def _check_recorded(self) -> None:
        seen: dict[int, str] = {}
        for ident, step in self._recorded.items():
            try:
                parse_ident(ident)
            except ValueError as exc:
                raise LineageError(flow_id=self.flow_id, reason=f"the journal holds {exc}") from None
            if not isinstance(step, int) or step < 1:
                raise LineageError(flow_id=self.flow_id, reason=f"slot {ident} has step {step!r}")
            if step in seen:
                raise LineageError(
                    flow_id=self.flow_id,
                    reason=f"the journal gives step {step} to two slots, {seen[step]} and {ident}",
                )
            seen[step] = ident

    @contextmanager
    def bound(self) -> Iterator[Lineage]:
        """Run the flow's code in the current task as this lineage's root task ``"0"``.

        Installs the lineage task factory on the running loop (composed with the factory set
        before, restored by the last flow to leave). On exit the lineage is closed: a task
        still running that then calls a step is refused (see :meth:`unfinished`).
        """
        task = _running_task()
        if task is None:
            raise LineageError(flow_id=self.flow_id, reason="Lineage.bound() needs a running asyncio task")
        if self._entered:
            raise LineageError(flow_id=self.flow_id, reason="a Lineage is bound once, for one run of a flow")
        self._entered = True
        self.root.adopt(task)
        loop = task.get_loop()
        factory = _install(loop)
        token = _CURRENT.set(self.root)
        try:
            yield self
        finally:
            _CURRENT.reset(token)
            self.closed = True
            _release(loop, factory)

    def _number(self, key: str, n: int) -> Slot:
        ident = f"{key}:{n}"
        step = self._recorded.get(ident)
        if step is None:
            step = self._next
            self._next += 1
        self._assigned[ident] = step
        return Slot(key, n, step)

    def assigned(self) -> dict[str, int]:
        """Every slot reserved in this run, ``{ident: step}``, in reservation order."""
        return dict(self._assigned)

    def unclaimed(self) -> dict[str, int]:
        """Recorded slots this run has not reserved (at the end of a replay: code changed)."""
        return {i: s for i, s in self._recorded.items() if i not in self._assigned}

    def key_of(self, task: asyncio.Future[Any]) -> str | None:
        """The lineage key of a task of this flow, or None for anything else."""
        node = self._tasks.get(task) if isinstance(task, asyncio.Task) else None
        return None if node is None else node.key

    def unfinished(self) -> list[str]:
        """Keys of the tasks this flow created that have not finished (to warn about at exit)."""
        keys = [n.key for t, n in list(self._tasks.items()) if n is not self.root and not t.done()]
        return sorted(keys, key=key_sort)


def _install(loop: asyncio.AbstractEventLoop) -> _Factory:
    existing = loop.get_task_factory()
    if isinstance(existing, _Factory):
        factory = existing
    else:
        factory = _Factory(cast("TaskFactory | None", existing))
        loop.set_task_factory(cast(Any, factory))
    factory.users += 1
    return factory


def _release(loop: asyncio.AbstractEventLoop, factory: _Factory) -> None:
    factory.users -= 1
    # A factory someone set over ours while flows ran is theirs: it is left in place (ours,
    # wrapped inside it, only delegates once no flow is bound).
    if factory.users == 0 and cast(Any, loop.get_task_factory()) is factory:
        loop.set_task_factory(cast(Any, factory.inner))
