"""Step exceptions in the journal: recorded so that a replay raises what the flow caught live.

A flow that caught a step's error must take the same path on replay, so the replayed
exception must be the one the flow saw: the same type, message and ``args``, the same
attributes, notes (``add_note``), ``__cause__``/``__context__`` chain and
``__suppress_context__``. Plain pickling loses the chain, cannot rebuild an exception whose
``__init__`` takes other arguments than its ``args`` (a common pattern:
``super().__init__(message)`` after storing ``code``), and fails on one attribute that does
not pickle. So an exception is journaled as an :class:`ExceptionRecord`:

* the exception itself by pickle (or dill) when that round-trips to the same type, ``args``
  and ``__dict__`` (this keeps C-level state such as ``OSError.errno``);
* otherwise its type, ``args`` and attributes, rebuilt without calling ``__init__``;
  an argument or attribute that cannot be pickled is kept as its ``repr`` (an attribute's
  loss is named in the journaled traceback text);
* its cause and context the same way (bounded depth), with the flags that govern them.

What cannot be replayed is the traceback: the step's frames did not run. The formatted
original is in the journal (``error_text``, ``transparent-de show``).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

_DEPTH = 8
_PROTOCOL = 5


@dataclass
class ExceptionRecord:
    """A picklable account of one exception (and, recursively, its chain)."""

    whole: bytes | None  # pickle/dill of the exception itself, when that round-trips faithfully
    cls: type[BaseException] | None  # else: its type ...
    args: tuple[Any, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict)  # ... and its __dict__ (notes included)
    cause: ExceptionRecord | None = None
    context: ExceptionRecord | None = None
    suppress_context: bool = False
    lost: list[str] = field(default_factory=list)  # attributes kept only as their repr

    def rebuild(self) -> BaseException:
        """The exception as the flow saw it live (a new object, equal in everything but identity)."""
        exc: BaseException
        if self.whole is not None:
            exc = _loads(self.whole)
        else:
            assert self.cls is not None
            exc = _blank(self.cls, self.args)
            exc.args = self.args
            exc.__dict__.update(self.attrs)
        if self.cause is not None:
            exc.__cause__ = self.cause.rebuild()
        if self.context is not None:
            exc.__context__ = self.context.rebuild()
        exc.__suppress_context__ = self.suppress_context
        return exc


def record(exc: BaseException, depth: int = 0) -> ExceptionRecord:
    """What to journal for ``exc`` (see the module docstring)."""
    whole = _whole(exc)
    rec = ExceptionRecord(whole, None if whole is not None else type(exc))
    if whole is None:
        rec.args = tuple(_keep(a) for a in exc.args)
        for name, value in vars(exc).items():
            kept = _keep(value)
            if kept is not value:
                rec.lost.append(name)
            rec.attrs[name] = kept
    if depth < _DEPTH:
        if exc.__cause__ is not None:
            rec.cause = record(exc.__cause__, depth + 1)
        if exc.__context__ is not None and exc.__context__ is not exc.__cause__:
            rec.context = record(exc.__context__, depth + 1)
        elif exc.__context__ is not None:
            rec.context = rec.cause
    rec.suppress_context = exc.__suppress_context__
    return rec


def _dumps(value: Any) -> bytes:
    try:
        return b"P" + pickle.dumps(value, _PROTOCOL)
    except Exception:
        from ._serialization import _dill_dumps

        return b"D" + _dill_dumps(value)


def _loads(blob: bytes) -> Any:
    if blob[:1] == b"P":
        return pickle.loads(blob[1:])
    from ._serialization import _dill

    return _dill().loads(blob[1:])


def _whole(exc: BaseException) -> bytes | None:
    """The exception pickled whole, if unpickling it gives back the same type, args and dict."""
    try:
        blob = _dumps(exc)
        back = _loads(blob)
    except Exception:
        return None
    if type(back) is not type(exc) or back.args != exc.args or vars(back) != vars(exc):
        return None
    return blob


def _keep(value: Any) -> Any:
    """``value`` if it pickles (by pickle or dill), else its repr."""
    try:
        _dumps(value)
        return value
    except Exception:
        try:
            return repr(value)
        except Exception:
            return f"<unrepresentable {type(value).__qualname__}>"


def _blank(cls: type[BaseException], args: tuple[Any, ...]) -> BaseException:
    """An instance of ``cls`` made without its ``__init__`` (which may want other arguments)."""
    try:
        return cls.__new__(cls, *args)
    except Exception:
        return BaseException.__new__(cls)
