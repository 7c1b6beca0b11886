"""The exceptions that unwind flow code: parking, engine errors, and a stand-in for exceptions
that cannot be journaled. The first two are ``BaseException``s: flow code's ``except
Exception`` must not catch them."""

from __future__ import annotations

from typing import Any

from .errors import TransparentDEError


class Park(BaseException):
    """Unwinds a background flow that waits long: its thread is released, the scheduler resumes it.

    A ``BaseException`` so that ``except Exception`` in flow code cannot swallow it.
    ``wake_at`` is the journaled wall-clock deadline, ``after`` the seconds left as this
    process measured them (the scheduler times the wake-up on its monotonic clock).
    """

    def __init__(self, wake_at: int | None, waiting_for: str | None, after: float | None = None) -> None:
        super().__init__(f"flow parked (wake_at={wake_at}, waiting_for={waiting_for})")
        self.wake_at = wake_at
        self.waiting_for = waiting_for
        self.after = after


class EngineUnwind(BaseException):
    """An engine error met inside flow code (journal I/O, a damaged or unverifiable journal,
    non-determinism): it unwinds the flow past the flow's own ``except`` clauses, which must
    not take it for a step's outcome, and the runner hands ``error`` to the caller."""

    def __init__(self, error: TransparentDEError) -> None:
        super().__init__(str(error))
        self.error = error


class RemoteError(Exception):
    """Stands in for a step exception that could not be pickled (type name and message kept)."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteError, (self.type_name, self.message))
