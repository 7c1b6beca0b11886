"""transparent_de: transparent durable execution for plain Python classes.

Mark a class with ``__flow__ = True``, call :func:`install` for its package before importing
it, and every step call in its flow code is journaled to SQLite: after a crash the flow
resumes, replaying completed steps from the journal instead of running them again.

    import transparent_de
    transparent_de.install("shop")
    from shop.flows import OrderFlow

    OrderFlow().run(42)                                        # durable, fresh flow id
    transparent_de.run(OrderFlow().run, 42, flow_id="order-42")  # resume / memoized by id
"""

from __future__ import annotations

from . import _guard, errors
from ._api import (
    cancel,
    configure,
    default_engine,
    recover,
    retry,
    run,
    run_async,
    signal,
    start,
    start_async,
    wait_for,
    worker,
)
from ._engine import Engine, WorkerReport
from ._handle import AsyncFlowHandle, FlowHandle
from ._hook import InstallHandle, install, install_this_package, rewrite_class
from ._store.base import FlowInfo, StepInfo
from .errors import (
    FlowBusyError,
    FlowNotRewrittenError,
    LeaseLostError,
    NonDeterminismError,
    SerializationError,
    SignalError,
    TransparentDEError,
    WaitTimeoutError,
)

__version__ = "0.1.0.dev0"

# Flow classes defined from now on that no hook rewrites refuse to run (see _guard).
_guard.enable()

__all__ = [
    "AsyncFlowHandle",
    "Engine",
    "FlowBusyError",
    "FlowHandle",
    "FlowInfo",
    "FlowNotRewrittenError",
    "InstallHandle",
    "LeaseLostError",
    "NonDeterminismError",
    "SerializationError",
    "SignalError",
    "StepInfo",
    "TransparentDEError",
    "WaitTimeoutError",
    "WorkerReport",
    "__version__",
    "cancel",
    "configure",
    "default_engine",
    "errors",
    "install",
    "install_this_package",
    "recover",
    "retry",
    "rewrite_class",
    "run",
    "run_async",
    "signal",
    "start",
    "start_async",
    "wait_for",
    "worker",
]
