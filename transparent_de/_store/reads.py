"""The reads every store answers the same way: one named query, its rows made into records.

A backend that keeps its statements by name (``Q``, from its ``*_queries.sql``) with the same
parameters and columns gets these from :class:`NamedReads`, and provides only how a query is
run (:meth:`NamedReads._read`). What differs between backends (writes, transactions, how a
list of ids is passed) stays in each store.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from typing import Any

from .base import FlowIdentity, FlowInfo, FlowState, Outcome, StepInfo, StepRow, Unfinished, WaitState


class NamedReads(abc.ABC):
    """Read methods of :class:`~.base.Store` over named queries; mixed in before ``Store``."""

    Q: Mapping[str, str]

    @abc.abstractmethod
    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Every row of one query."""

    def _one(self, name: str, params: tuple[Any, ...]) -> Any:
        rows = self._read(self.Q[name], params)
        return rows[0] if rows else None

    def flow_state(self, flow_id: str) -> FlowState | None:
        row = self._one("flow_state", (flow_id,))
        return FlowState(*row) if row else None

    def load_steps(self, flow_id: str) -> dict[int, StepRow]:
        return {r[0]: StepRow(*r) for r in self._read(self.Q["load_steps"], (flow_id,))}

    def next_signal(self, flow_id: str, step_name: str) -> tuple[int, bytes] | None:
        row = self._one("next_signal", (flow_id, step_name))
        return (int(row[0]), bytes(row[1])) if row else None

    def status(self, flow_id: str) -> str | None:
        row = self._one("status", (flow_id,))
        return str(row[0]) if row else None

    def identity(self, flow_id: str) -> FlowIdentity | None:
        row = self._one("identity", (flow_id,))
        return FlowIdentity(*row) if row else None

    def outcome(self, flow_id: str) -> Outcome | None:
        row = self._one("outcome", (flow_id,))
        return Outcome(*row) if row else None

    def flow_class(self, flow_id: str) -> str | None:
        row = self._one("flow_class", (flow_id,))
        return str(row[0]) if row else None

    def wait_state(self, flow_id: str) -> WaitState | None:
        row = self._one("wait_state", (flow_id,))
        return WaitState(*row) if row else None

    def unfinished(self) -> list[Unfinished]:
        return [Unfinished(*r) for r in self._read(self.Q["unfinished"])]

    def flows(self, status: str | None = None) -> list[FlowInfo]:
        return [FlowInfo(*r) for r in self._read(self.Q["flows"], (status, status))]

    def flow_info(self, flow_id: str) -> FlowInfo | None:
        row = self._one("flow_info", (flow_id,))
        return FlowInfo(*row) if row else None

    def values(self) -> Iterator[tuple[str, int, bytes | None, bytes | None, bytes | None]]:
        for r in self._read(self.Q["all_values"]):
            yield str(r[0]), int(r[1]), r[2], r[3], r[4]

    def steps(self, flow_id: str) -> list[StepInfo]:
        return [StepInfo(*r) for r in self._read(self.Q["steps"], (flow_id,))]

    def modules(self, flow_id: str | None = None, unfinished: bool = False) -> list[str]:
        rows = self._read(self.Q["modules"], (flow_id, flow_id, int(unfinished)))
        return sorted(str(r[0]) for r in rows if r[0])
