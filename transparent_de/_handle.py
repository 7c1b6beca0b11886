"""Handles of flows started in the background (``start``, ``recover``)."""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

from . import _clock
from ._store.base import TERMINAL

if TYPE_CHECKING:
    from ._engine import Engine


class FlowHandle:
    """A flow started in the background: ``id``, ``result(timeout)``, ``status()``, ``done()``.

    The result is read from the journal too, so a handle works while another process (or a
    later recovery) runs the flow.
    """

    def __init__(self, engine: Engine, flow_id: str) -> None:
        self.engine = engine
        self.id = flow_id
        self._event = threading.Event()
        self._outcome: tuple[bool, Any] | None = None

    def _set(self, ok: bool, value: Any) -> None:
        self._outcome = (ok, value)
        self._event.set()

    def done(self) -> bool:
        """True once the flow is finished for good: COMPLETE, FAILED or CANCELLED in the journal.

        (A run that failed while the flow will be retried, or was stopped here by an engine
        error, is not done: :meth:`result` raises its error, the flow is still resumable.)
        """
        return self.status() in TERMINAL

    def status(self) -> str:
        return self.engine.store.status(self.id) or "UNKNOWN"

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the flow's result (raising its error); works while another process runs it."""
        deadline = None if timeout is None else _clock.mono() + timeout
        while True:
            wait = self.engine.poll_interval
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - _clock.mono()))
            if self._event.wait(wait):
                assert self._outcome is not None
                ok, value = self._outcome
                if ok:
                    return value
                raise value
            if self._event.is_set():
                continue
            outcome = self.engine.runner.final_outcome(self.id)
            if outcome is not None:
                self._set(*outcome)
                continue
            if deadline is not None and _clock.mono() >= deadline:
                raise TimeoutError(
                    f"flow {self.id} did not finish within {timeout} s (it is still {self.status()})"
                )

    def __repr__(self) -> str:
        return f"<FlowHandle {self.id}>"


class AsyncFlowHandle:
    """A flow started by ``await start_async(...)``: ``id``, ``await result(timeout)``,
    ``status()``, ``done()``.

    The flow runs as a task on the loop that started it. If it parks (a long sleep or wait),
    its task ends and the engine resumes it later; the result is then read from the journal,
    as it is when another process runs the flow.
    """

    def __init__(self, engine: Engine, flow_id: str) -> None:
        import asyncio

        self.engine = engine
        self.id = flow_id
        self._event = asyncio.Event()
        self._outcome: tuple[bool, Any] | None = None
        self.task: Any = None  # the asyncio task running the flow here (kept referenced)

    def _set(self, ok: bool, value: Any) -> None:
        self._outcome = (ok, value)
        self._event.set()

    def done(self) -> bool:
        """True once the flow is finished for good (see :meth:`FlowHandle.done`)."""
        return self.status() in TERMINAL

    def status(self) -> str:
        return self.engine.store.status(self.id) or "UNKNOWN"

    async def result(self, timeout: float | None = None) -> Any:
        """The flow's result (raising its error), awaited without blocking the loop."""
        import asyncio

        deadline = None if timeout is None else _clock.mono() + timeout
        while True:
            if self._outcome is not None:
                ok, value = self._outcome
                if ok:
                    return value
                raise value
            outcome = self.engine.runner.final_outcome(self.id)
            if outcome is not None:
                self._set(*outcome)
                continue
            wait = self.engine.poll_interval
            if deadline is not None:
                left = deadline - _clock.mono()
                if left <= 0:
                    raise TimeoutError(
                        f"flow {self.id} did not finish within {timeout} s (it is still {self.status()})"
                    )
                wait = min(wait, left)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._event.wait(), wait)

    def __repr__(self) -> str:
        return f"<AsyncFlowHandle {self.id}>"
