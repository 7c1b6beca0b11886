"""Bugs planted in the engine on purpose: the proof that the suite can fail.

Each bug is a patch of the engine applied in this (parent) process and inherited by the
forked children that run the flows; nothing in the installed package can switch one on.
The SQLite store's statements are named (``Q``), so most bugs are a changed statement.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from transparent_de._runner import Runner
from transparent_de._store import sqlite as store
from transparent_de._store.base import Complete, Intent, Retry
from transparent_de._store.sqlite_file import SQLiteFile
from transparent_de._store.sqlite_sql import Q
from transparent_de._writes import FlowWriter


def _query(name: str, text: str) -> Callable[[], Callable[[], None]]:
    def plant() -> Callable[[], None]:
        saved = Q[name]
        Q[name] = text

        def undo() -> None:
            Q[name] = saved

        return undo

    return plant


def _attr(owner: Any, name: str, value: Any) -> Callable[[], Callable[[], None]]:
    def plant() -> Callable[[], None]:
        saved = getattr(owner, name) if not isinstance(owner, dict) else owner[name]
        if isinstance(owner, dict):
            owner[name] = value
        else:
            setattr(owner, name, value)

        def undo() -> None:
            if isinstance(owner, dict):
                owner[name] = saved
            else:
                setattr(owner, name, saved)

        return undo

    return plant


def _complete_at_once(apply: Callable[..., None]) -> Callable[..., None]:
    """The intent is committed as if the step had already completed (with no result)."""

    def wrapped(con: Any, fid: str, op: Any) -> None:
        apply(con, fid, op)
        if (isinstance(op, Intent) and op.kind == "step") or (
            isinstance(op, Retry) and op.status == "PENDING"
        ):
            con.execute(
                "UPDATE execution_log SET status = 'COMPLETE' WHERE flow_id = ? AND step = ?", (fid, op.step)
            )

    return wrapped


def _not_full(init: Callable[..., None]) -> Callable[..., None]:
    """Runs that skip the syncs only ``durability="full"`` adds to the step path."""

    def wrapped(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.full = False

    return wrapped


BUGS: dict[str, Callable[[], Callable[[], None]]] = {
    # a PENDING step replayed as if it had completed
    "replay-pending-as-complete": _query(
        "load_steps",
        Q["load_steps"].replace(
            "step, class_name, method_name, status,",
            "step, class_name, method_name, "
            "CASE WHEN status = 'PENDING' AND kind = 'step' THEN 'COMPLETE' ELSE status END,",
        ),
    ),
    # the step marked COMPLETE before its body ran
    "complete-before-run": lambda: _compose(
        _attr(store._APPLY, Intent, _complete_at_once(store._APPLY[Intent])),
        _attr(store._APPLY, Retry, _complete_at_once(store._APPLY[Retry])),
    ),
    # a resumed flow does not count its attempt
    "forget-attempts": _query(
        "count_attempt", "UPDATE execution_log SET updated = ? WHERE flow_id = ? AND step < 0"
    ),
    # an escaped failure is replayed instead of retried
    "failed-stays-failed": _query(
        "reopen", "UPDATE execution_log SET updated = ? WHERE flow_id = ? AND step = ? AND 0"
    ),
    # durability="full" forgets its fsync
    "skip-sync": _attr(SQLiteFile, "sync", lambda self: None),
    # a step's result is never written (the carried COMPLETE row is dropped)
    "drop-carried-result": _attr(
        FlowWriter,
        "carry",
        lambda self, op, _carry=FlowWriter.carry: None if isinstance(op, Complete) else _carry(self, op),
    ),
    # durability="full" syncs the flow's end, timers and failures, but not the commit that
    # carries a step's result with the next intent
    "unsynced-carried-result": lambda: _attr(FlowWriter, "__init__", _not_full(FlowWriter.__init__))(),
    # a flow owned by a live process is taken over
    "steal-live-lease": _attr(Runner, "owned_elsewhere", lambda self, fid, owner, lease_until, fence: False),
}


def _compose(*plants: Callable[[], Callable[[], None]]) -> Callable[[], None]:
    undos = [p() for p in plants]

    def undo() -> None:
        for u in reversed(undos):
            u()

    return undo


@contextlib.contextmanager
def planted(name: str) -> Iterator[None]:
    """The engine with bug ``name`` in it, in this process and the children it forks."""
    undo = BUGS[name]()
    try:
        yield
    finally:
        undo()
