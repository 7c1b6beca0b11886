"""The module-level API: a default engine, configured once, behind plain functions.

``MyFlow().run(x)``, :func:`run`, :func:`start`, :func:`recover`, :func:`signal` and
:func:`worker` all use the default engine, whose journal is ``transparent_de.db`` in the
working directory unless ``TRANSPARENT_DE_DB`` or :func:`configure` says otherwise. Create
an :class:`~transparent_de.Engine` yourself for several journals in one process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from ._engine import Engine, WorkerReport
from ._handle import AsyncFlowHandle, FlowHandle
from ._trampoline import BoundStep, current_run
from .errors import TransparentDEError

_lock = threading.Lock()
_default: Engine | None = None
_options: dict[str, Any] = {}


def configure(
    database: str | os.PathLike[str] | None = None,
    durability: str | None = None,
    **options: Any,
) -> Engine:
    """Set up the default engine (journal path, durability, lease/park/poll options); returns it.

    Replaces (and closes) a previous default engine. ``durability="full"`` (default) makes
    every step's result survive power loss before the step returns; ``"process"`` survives
    process crashes only, for a fraction of the cost.
    """
    global _default
    with _lock:
        if database is not None:
            _options["database"] = database
        if durability is not None:
            _options["durability"] = durability
        _options.update(options)
        old, _default = _default, Engine(**_options)
    if old is not None:
        old.close()
    return _default


def default_engine() -> Engine:
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                _default = Engine(**_options)
    return _default


def run(entry: Callable[..., Any], *args: Any, flow_id: str | None = None, **kwargs: Any) -> Any:
    """Run a flow on this thread; with a known ``flow_id`` resume it or return its memoized result."""
    return default_engine().run(entry, *args, flow_id=flow_id, **kwargs)


def run_async(
    entry: Callable[..., Any], *args: Any, flow_id: str | None = None, **kwargs: Any
) -> Coroutine[Any, Any, Any]:
    """``await run_async(Flow().run, ...)``: run (or resume, or return the memoized result of) an
    ``async def`` flow on the running event loop; ``flow_id`` as for :func:`run`."""
    from ._async_run import run_async as run_on_loop

    return run_on_loop(default_engine(), entry, *args, flow_id=flow_id, **kwargs)


async def start_async(
    entry: Callable[..., Any], *args: Any, flow_id: str | None = None, **kwargs: Any
) -> AsyncFlowHandle:
    """``handle = await start_async(Flow().run, ...)``: start an ``async def`` flow in the
    background on the running loop; ``await handle.result()`` (docs/async.md)."""
    from ._async_run import start_async as start_on_loop

    return await start_on_loop(default_engine(), entry, *args, flow_id=flow_id, **kwargs)


def start(entry: Callable[..., Any], *args: Any, flow_id: str | None = None, **kwargs: Any) -> FlowHandle:
    """Start a flow in the background and return its handle (``handle.result(timeout=...)``)."""
    return default_engine().start(entry, *args, flow_id=flow_id, **kwargs)


def recover() -> list[FlowHandle]:
    """Resume unfinished flows whose owner is gone; returns their handles."""
    return default_engine().recover()


def signal(flow_id: str, step: str, *args: Any, **kwargs: Any) -> None:
    """Durably deliver arguments to a flow's ``wait_for(self.<step>)`` (from any thread or process)."""
    default_engine().signal(flow_id, step, *args, **kwargs)


def retry(flow_id: str) -> FlowHandle:
    """Resume a FAILED flow (re-arm the dead letter), or a failing one without waiting for its backoff."""
    return default_engine().retry(flow_id)


def cancel(flow_id: str) -> None:
    """Cancel an unfinished flow."""
    default_engine().cancel(flow_id)


def worker(stop: threading.Event | None = None, *, until_idle: bool = False) -> WorkerReport:
    """Run recovery, timers and signal delivery until ``stop`` is set (or until idle)."""
    return default_engine().worker(stop, until_idle=until_idle)


def wait_for(step: Any, *, timeout: float | None = None) -> Any:
    """Wait, durably, for ``signal(flow_id, "<step>", ...)``; then run the step with those arguments.

    The one engine call allowed in flow code (as in the seed)::

        token = transparent_de.wait_for(self.confirm_email)

    records the step as WAITING_FOR_SIGNAL. A flow run in the background parks (its thread is
    released) until the signal arrives; a flow run directly blocks its caller. With
    ``timeout`` (seconds) an absent signal raises :class:`~transparent_de.errors.WaitTimeoutError`,
    journaled like any step outcome.
    """
    run = current_run.get()
    if not isinstance(step, BoundStep) or run is None or step._run is not run:
        raise TransparentDEError(
            "wait_for(self.<step>) must be called in flow-level code of a running flow, with a step "
            f"method of the flow itself (got {step!r}). Outside a flow there is nothing to wait in; "
            "inside a step, waits are not journaled."
        )
    return run.wait_signal(step._obj, step._name, timeout)
