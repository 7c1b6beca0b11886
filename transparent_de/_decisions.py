"""Timing-dependent outcomes of async flows, recorded live and replayed (issue #16).

:mod:`._lineage` makes every journaled call's identity independent of timing. What is left
is what flow code *observes* of timing: which of several tasks finished first. A
:class:`Decisions` answers ``asyncio.wait(..., FIRST_COMPLETED)`` (or with a timeout),
``asyncio.wait_for(..., timeout)`` and ``asyncio.as_completed`` by task keys, records the
answer, and on replay gives the recorded answer again, waiting for exactly the tasks that
finished first live, whatever finishes first now.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any

from ._lineage import _CURRENT, LineageError, Slot, key_sort, reserve

__all__ = ["AsyncCompletions", "Completions", "Decisions"]


#: 3.13+: ``async for t in asyncio.as_completed(...)`` yields the finished tasks themselves.
_ASYNC_ITER = sys.version_info >= (3, 13)


class Decisions:
    """Timing-dependent outcomes of an async flow, recorded live and replayed.

    Each decision takes a slot of its own (it is a journaled event at a deterministic place in
    its task) and its outcome is a tuple of task keys: which tasks ``wait`` returned as done,
    which task ``as_completed`` gave next. ``recorded`` maps slot idents to outcomes from the
    journal; ``on_record(slot, outcome)`` is called for each live decision so the engine can
    journal it. A replayed decision waits for exactly the recorded tasks, whatever finishes
    first now (tasks reported pending may in fact be done by then).
    """

    def __init__(
        self,
        recorded: Mapping[str, tuple[str, ...]] | None = None,
        on_record: Callable[[Slot, tuple[str, ...]], None] | None = None,
        reserve: Callable[[str], Slot] | None = None,
    ) -> None:
        self._recorded = dict(recorded or {})
        self._on_record = on_record
        #: ``reserve(what)`` takes a decision's slot (``what``: "wait", "as_completed" ...); the
        #: engine's checks the journal's row there. Default: :func:`reserve`.
        self._reserve = reserve
        #: Every decision of this run, ``{slot ident: outcome}``.
        self.made: dict[str, tuple[str, ...]] = {}

    def lookup(self, slot: Slot) -> tuple[str, ...] | None:
        """The recorded outcome of a decision, or None if it is to be decided live."""
        outcome = self._recorded.get(slot.ident)
        if outcome is not None:
            self.made[slot.ident] = outcome
        return outcome

    def record(self, slot: Slot, outcome: tuple[str, ...]) -> None:
        """Note a live outcome (and hand it to ``on_record``)."""
        self.made[slot.ident] = outcome
        if self._on_record is not None:
            self._on_record(slot, outcome)

    def wait(
        self,
        aws: Iterable[Awaitable[Any]],
        *,
        timeout: float | None = None,
        return_when: str = asyncio.ALL_COMPLETED,
        what: str = "wait",
    ) -> Coroutine[Any, Any, tuple[set[asyncio.Future[Any]], set[asyncio.Future[Any]]]]:
        """``asyncio.wait`` whose outcome replays. Coroutines become tasks in the given order.

        The slot is taken (and tasks created) at the call, not at the first await. ``what``
        names the call the decision stands for in the journal.
        """
        slot = self._slot(what)
        keyed = self._keyed(aws)
        return self._wait(slot, keyed, timeout, return_when)

    async def _wait(
        self, slot: Slot, keyed: dict[str, asyncio.Future[Any]], timeout: float | None, return_when: str
    ) -> tuple[set[asyncio.Future[Any]], set[asyncio.Future[Any]]]:
        outcome = self.lookup(slot)
        if outcome is None:
            done, _ = await asyncio.wait(keyed.values(), timeout=timeout, return_when=return_when)
            outcome = tuple(sorted((k for k, t in keyed.items() if t in done), key=key_sort))
            self.record(slot, outcome)
        else:
            self._known(slot, outcome, keyed)
            if outcome:
                await asyncio.wait([keyed[k] for k in outcome])
        done_set = {keyed[k] for k in outcome}
        return done_set, {t for t in keyed.values() if t not in done_set}

    def as_completed(self, aws: Iterable[Awaitable[Any]]) -> Completions:
        """``asyncio.as_completed`` whose order replays; tasks are created in the given order.

        Each ``next()`` (or, from 3.13, ``__anext__``) takes a slot in the consuming task.
        """
        return (AsyncCompletions if _ASYNC_ITER else Completions)(self, self._keyed(aws))

    async def _next(self, slot: Slot, remaining: dict[str, asyncio.Future[Any]]) -> asyncio.Future[Any]:
        outcome = self.lookup(slot)
        if outcome is None:
            while True:
                done, _ = await asyncio.wait(remaining.values(), return_when=asyncio.FIRST_COMPLETED)
                ready = sorted((k for k, t in remaining.items() if t in done), key=key_sort)
                if ready:  # simultaneous completions: the lowest key, then recorded
                    outcome = (ready[0],)
                    self.record(slot, outcome)
                    break
        else:
            self._known(slot, outcome, remaining)
            await asyncio.wait([remaining[outcome[0]]])
        return remaining.pop(outcome[0])

    def _slot(self, what: str) -> Slot:
        if self._reserve is not None:
            return self._reserve(what)
        slot = reserve()
        if slot is None:
            raise LineageError(reason="Decisions are made in async flow code, outside step bodies")
        return slot

    def _keyed(self, aws: Iterable[Awaitable[Any]]) -> dict[str, asyncio.Future[Any]]:
        node = _CURRENT.get()
        if node is None:
            raise LineageError(reason="Decisions are made in async flow code, outside step bodies")
        keyed: dict[str, asyncio.Future[Any]] = {}
        for aw in aws:
            future = asyncio.ensure_future(aw)
            key = node.lineage.key_of(future)
            if key is None:
                raise LineageError(
                    flow_id=node.lineage.flow_id,
                    key=node.key,
                    reason=f"{future!r} is not a task of this flow, so its completion cannot be replayed",
                )
            keyed[key] = future
        return keyed

    @staticmethod
    def _known(slot: Slot, outcome: tuple[str, ...], keyed: Mapping[str, object]) -> None:
        missing = [k for k in outcome if k not in keyed]
        if missing:
            raise LineageError(
                key=slot.key,
                reason=(
                    f"at slot {slot.ident} the journal recorded that task(s) {', '.join(missing)} "
                    f"finished, but this call waits for {', '.join(keyed) or 'nothing'}: the flow's "
                    "code changed while it was in flight"
                ),
            )


class Completions:
    """What :meth:`Decisions.as_completed` returns: an iterator of coroutines, each giving the
    result of the next task to finish (in the recorded order on replay), as ``as_completed``."""

    def __init__(self, decisions: Decisions, keyed: dict[str, asyncio.Future[Any]]) -> None:
        self._decisions = decisions
        self._remaining = dict(keyed)
        self._left = len(keyed)

    def __iter__(self) -> Completions:
        return self

    def __next__(self) -> Coroutine[Any, Any, Any]:
        return self._result(self._take("as_completed"))

    def _take(self, what: str) -> Coroutine[Any, Any, asyncio.Future[Any]]:
        if self._left == 0:
            raise StopIteration
        self._left -= 1
        return self._decisions._next(self._decisions._slot(what), self._remaining)

    @staticmethod
    async def _result(picked: Coroutine[Any, Any, asyncio.Future[Any]]) -> Any:
        return (await picked).result()


class AsyncCompletions(Completions):
    """3.13+: also an async iterator, yielding the finished tasks themselves."""

    def __aiter__(self) -> AsyncCompletions:
        return self

    def __anext__(self) -> Coroutine[Any, Any, asyncio.Future[Any]]:
        try:
            return self._take("as_completed")
        except StopIteration:
            raise StopAsyncIteration from None
