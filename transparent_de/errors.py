"""Errors raised by transparent_de.

Every error carries structured fields (flow id, step, ...) and builds its own message from
them, naming what went wrong and what to do. They pickle (``__reduce__`` rebuilds them from
their fields), because errors get journaled like any other step outcome.

Control-flow signals that user code must never swallow (parking a flow, losing a lease,
injected crashes) derive from :class:`BaseException`, not :class:`Exception`; they live in
the private modules that raise them.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CorruptJournalError",
    "FlowArgumentsError",
    "FlowBusyError",
    "FlowCancelledError",
    "FlowFailedError",
    "FlowNotFoundError",
    "FlowNotRewrittenError",
    "ForeignDatabaseError",
    "JournalError",
    "JournalIOError",
    "JournalKeyError",
    "JournalPermissionError",
    "LeaseLostError",
    "NonDeterminismError",
    "NotADatabaseError",
    "SchemaTooNewError",
    "SerializationError",
    "SignalError",
    "TransparentDEError",
    "UnsupportedPythonError",
    "WaitTimeoutError",
]


class TransparentDEError(Exception):
    """Base class of every error transparent_de raises on purpose."""

    def __init__(self, message: str = "", **fields: Any) -> None:
        self.fields = fields
        for key, value in fields.items():
            setattr(self, key, value)
        super().__init__(message or self._build(**fields))

    def _build(self, **fields: Any) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in fields.items())

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, self.fields))


def _rebuild(cls: type[TransparentDEError], args: tuple[Any, ...], fields: dict[str, Any]) -> Any:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.fields = fields
    for key, value in fields.items():
        setattr(err, key, value)
    return err


def _flow(flow_class: str | None, flow_id: str | None) -> str:
    if flow_class and flow_id:
        return f"flow {flow_class} (id {flow_id})"
    if flow_id:
        return f"flow {flow_id}"
    return f"flow {flow_class}" if flow_class else "flow"


class UnsupportedPythonError(TransparentDEError):
    """The interpreter is not one whose bytecode the rewriter was verified on."""


class FlowNotRewrittenError(TransparentDEError):
    """An entry was called on a flow class whose code was not rewritten: it would not be durable."""

    def __init__(self, message: str = "", *, flow_class: str = "", module: str = "") -> None:
        super().__init__(message, flow_class=flow_class, module=module)

    def _build(self, **f: Any) -> str:
        if f["module"] == "__main__":
            return (
                f"flow class {f['flow_class']} is defined in the script being run (__main__), which no "
                "import hook sees: its steps would not be journaled. Run the script with "
                "`transparent-de run script.py` (it rewrites the script's flow classes), or move the "
                "class into a module of a package and call transparent_de.install('thatpackage') "
                "before importing it. (install('__main__') cannot work: the script is already running.)"
            )
        return (
            f"flow class {f['flow_class']} (module {f['module']}) is marked with __flow__ but its "
            "code was not rewritten, so its steps would not be journaled. Likely causes: the module "
            "was imported before transparent_de.install(...) was called, install() was given "
            "another package name, or another import hook loaded it. Call "
            f"transparent_de.install({f['module'].split('.')[0]!r}) before importing it, or "
            "transparent_de.rewrite_class(cls) for classes created at run time."
        )


class NonDeterminismError(TransparentDEError):
    """Replaying a flow met a call that differs from what the journal recorded at that step."""

    def __init__(
        self,
        message: str = "",
        *,
        flow_id: str = "",
        flow_class: str = "",
        step: int = 0,
        recorded: str = "",
        current: str = "",
        reason: str = "",
    ) -> None:
        super().__init__(
            message,
            flow_id=flow_id,
            flow_class=flow_class,
            step=step,
            recorded=recorded,
            current=current,
            reason=reason,
        )

    def _build(self, **f: Any) -> str:
        return (
            f"{_flow(f['flow_class'], f['flow_id'])}, step {f['step']}: the journal recorded "
            f"{f['recorded']} but the code now calls {f['current']} ({f['reason']}). The flow's code "
            "changed while it was in flight, or it depends on something not journaled (a set's "
            "iteration order, a global, a value computed outside a step). Either restore the code "
            "that started this flow and let it finish, move the non-deterministic computation into a "
            "step, or cancel the flow (`transparent-de cancel ID`) and start a new one."
        )


class SerializationError(TransparentDEError):
    """A value to be journaled could not be serialized (or a journaled value not decoded)."""

    def __init__(
        self,
        message: str = "",
        *,
        flow_id: str = "",
        flow_class: str = "",
        step: int = 0,
        method: str = "",
        what: str = "",
        detail: str = "",
    ) -> None:
        super().__init__(
            message,
            flow_id=flow_id,
            flow_class=flow_class,
            step=step,
            method=method,
            what=what,
            detail=detail,
        )

    def _build(self, **f: Any) -> str:
        return (
            f"{_flow(f['flow_class'], f['flow_id'])}, step {f['step']} ({f['method']}): cannot "
            f"serialize {f['what']}: {f['detail']}. Journaled values must be picklable by pickle "
            "or dill; pass plain data (ids, dicts, dataclasses) instead of locks, open files, "
            "sockets or generators, and open such resources inside the step. Nothing was written "
            "for this step."
        )


class JournalError(TransparentDEError):
    """Base class of problems with the SQLite journal file."""


class NotADatabaseError(JournalError):
    """The journal path exists but is not an SQLite database."""

    def __init__(self, message: str = "", *, path: str = "") -> None:
        super().__init__(message, path=path)

    def _build(self, **f: Any) -> str:
        return (
            f"{f['path']} is not an SQLite database, so it cannot be a transparent_de journal. "
            "The file was left untouched; point TRANSPARENT_DE_DB or configure(database=...) "
            "at another path."
        )


class ForeignDatabaseError(JournalError):
    """The journal path is an SQLite database that belongs to something else."""

    def __init__(self, message: str = "", *, path: str = "", application_id: int = 0) -> None:
        super().__init__(message, path=path, application_id=application_id)

    def _build(self, **f: Any) -> str:
        return (
            f"{f['path']} is an SQLite database of another application (application_id "
            f"{f['application_id']:#x}, tables not ours). transparent_de never writes into a "
            "foreign database; the file was left untouched. Use a separate journal file."
        )


class SchemaTooNewError(JournalError):
    """The journal was written by a newer transparent_de with a newer schema."""

    def __init__(self, message: str = "", *, path: str = "", found: int = 0, supported: int = 0) -> None:
        super().__init__(message, path=path, found=found, supported=supported)

    def _build(self, **f: Any) -> str:
        return (
            f"{f['path']} has journal schema version {f['found']}, newer than the {f['supported']} "
            "this transparent_de understands. Upgrade transparent_de; the file was left untouched."
        )


class CorruptJournalError(JournalError):
    """A page, row or value of the journal is damaged; it is never taken as 'step not done'."""

    def __init__(
        self, message: str = "", *, path: str = "", flow_id: str = "", step: int = -1, detail: str = ""
    ) -> None:
        super().__init__(message, path=path, flow_id=flow_id, step=step, detail=detail)

    def _build(self, **f: Any) -> str:
        where = f"flow {f['flow_id']}, step {f['step']}" if f["flow_id"] else "the journal"
        return (
            f"{where} in {f['path']} is corrupt: {f['detail']}. transparent_de stops rather than "
            "re-running a step whose outcome it cannot read. Restore the journal from a backup; "
            "`transparent-de doctor` lists the damaged flows."
        )


class JournalKeyError(JournalError):
    """The journal's values are signed, and this process has no key to check them with."""

    def __init__(self, message: str = "", *, path: str = "", flow_id: str = "", step: int = -1) -> None:
        super().__init__(message, path=path, flow_id=flow_id, step=step)

    def _build(self, **f: Any) -> str:
        where = f"flow {f['flow_id']}, step {f['step']} in {f['path']}" if f["flow_id"] else "a value"
        return (
            f"{where} is signed (HMAC), and no key is set in this process, so it cannot be checked "
            "and is not read. Set TRANSPARENT_DE_HMAC_KEY (or Engine(hmac_key=...)) to the key the "
            "journal was written with; nothing was read or run."
        )


class JournalPermissionError(JournalError):
    """The journal (or its -wal/-shm) can be written by other users: they could make it run code."""

    def __init__(self, message: str = "", *, path: str = "", mode: int = 0, detail: str = "") -> None:
        super().__init__(message, path=path, mode=mode, detail=detail)

    def _build(self, **f: Any) -> str:
        return (
            f"{f['path']} has mode {f['mode']:04o}: {f['detail']}. Whoever can write a journal can "
            "make the processes that resume its flows run code, so transparent_de does not use it. "
            f"Run `chmod 600 {f['path']}` (and its -wal/-shm files) as its owner; the file was left "
            "untouched."
        )


class JournalIOError(JournalError):
    """The journal could not be read or written (locked beyond the timeout, disk full, I/O error).

    An engine error, never a step's outcome: a flow that meets it is stopped where it is
    (flow code cannot catch it), released, and left resumable; nothing it committed is lost.
    """

    def __init__(
        self,
        message: str = "",
        *,
        path: str = "",
        operation: str = "",
        detail: str = "",
        flow_id: str = "",
        flow_class: str = "",
        step: int = -1,
    ) -> None:
        super().__init__(
            message,
            path=path,
            operation=operation,
            detail=detail,
            flow_id=flow_id,
            flow_class=flow_class,
            step=step,
        )

    def _build(self, **f: Any) -> str:
        where = f"journal {f['path']}"
        if f["flow_id"]:
            where = f"{_flow(f['flow_class'], f['flow_id'])}, step {f['step']}: {where}"
        return (
            f"{where}: {f['operation']} failed: {f['detail']}. Nothing committed was lost and the "
            "transaction was rolled back; the flow was stopped at this point and left resumable. Free "
            "disk space or release the lock held by another process, then resume the flow (run it "
            "again with its id, or recover())."
        )


class FlowArgumentsError(TransparentDEError, TypeError):
    """The arguments do not fit the entry's parameters; no flow was started (nothing written).

    A ``TypeError`` too, as the plain call would have raised.
    """

    def __init__(
        self, message: str = "", *, flow_class: str = "", method: str = "", detail: str = ""
    ) -> None:
        super().__init__(message, flow_class=flow_class, method=method, detail=detail)

    def _build(self, **f: Any) -> str:
        return f"{f['flow_class']}.{f['method']}(): {f['detail']}; no flow was started, nothing was written"


class FlowBusyError(TransparentDEError):
    """The flow is being run by another thread or a live process."""

    def __init__(self, message: str = "", *, flow_id: str = "", owner: str = "") -> None:
        super().__init__(message, flow_id=flow_id, owner=owner)

    def _build(self, **f: Any) -> str:
        return (
            f"flow {f['flow_id']} is being run by {f['owner']}; a flow runs in one place at a time. "
            "Wait for it (start(...).result()), or, if that owner is dead, recover() takes the flow "
            "over once its lease expires."
        )


class LeaseLostError(TransparentDEError):
    """This process stopped running the flow: another engine took it over (its lease lapsed)."""

    def __init__(self, message: str = "", *, flow_id: str = "", flow_class: str = "") -> None:
        super().__init__(message, flow_id=flow_id, flow_class=flow_class)

    def _build(self, **f: Any) -> str:
        return (
            f"{_flow(f['flow_class'], f['flow_id'])}: another engine took the flow over while this "
            "process ran it (this process had not renewed its lease for a lease length, e.g. it was "
            "stopped or its journal unreachable). This run stopped without writing anything more; "
            "the flow goes on where it is now owned. Wait for it with start(...).result() or look at "
            "it with `transparent-de show`."
        )


class FlowNotFoundError(TransparentDEError):
    """No flow with this id is in the journal."""

    def __init__(self, message: str = "", *, flow_id: str = "", path: str = "") -> None:
        super().__init__(message, flow_id=flow_id, path=path)

    def _build(self, **f: Any) -> str:
        return (
            f"no flow with id {f['flow_id']!r} in journal {f['path']}. Check the id with "
            "`transparent-de list`, and that TRANSPARENT_DE_DB points at the right journal."
        )


class FlowFailedError(TransparentDEError):
    """The flow ended FAILED under a 'final' failure policy; the original error is the cause."""

    def __init__(
        self, message: str = "", *, flow_id: str = "", flow_class: str = "", error: str = ""
    ) -> None:
        super().__init__(message, flow_id=flow_id, flow_class=flow_class, error=error)

    def _build(self, **f: Any) -> str:
        return (
            f"{_flow(f['flow_class'], f['flow_id'])} failed: {f['error']}. Its failure policy is "
            "final, so it is not retried; start a new flow with another id."
        )


class FlowCancelledError(TransparentDEError):
    """The flow was cancelled (``transparent-de cancel``); it will not run again."""

    def __init__(self, message: str = "", *, flow_id: str = "") -> None:
        super().__init__(message, flow_id=flow_id)

    def _build(self, **f: Any) -> str:
        return f"flow {f['flow_id']} was cancelled; it will not run again. Start a new flow with another id."


class SignalError(TransparentDEError):
    """A signal cannot be delivered (finished flow, unknown step, ...)."""

    def __init__(self, message: str = "", *, flow_id: str = "", step: str = "", reason: str = "") -> None:
        super().__init__(message, flow_id=flow_id, step=step, reason=reason)

    def _build(self, **f: Any) -> str:
        return f"cannot signal {f['step']!r} to flow {f['flow_id']}: {f['reason']}"


class WaitTimeoutError(TransparentDEError):
    """``wait_for(..., timeout=...)`` expired before the signal arrived (journaled, replayed)."""

    def __init__(self, message: str = "", *, flow_id: str = "", step: str = "", timeout: float = 0.0) -> None:
        super().__init__(message, flow_id=flow_id, step=step, timeout=timeout)

    def _build(self, **f: Any) -> str:
        return (
            f"flow {f['flow_id']}: no signal for {f['step']!r} within {f['timeout']} s. The timeout "
            "is journaled: a replay raises this error at the same point."
        )
