"""Every difference between the CPython versions we support lives here.

The rewriter never compares ``sys.version_info`` itself: it asks this module for the
instruction templates of the running interpreter. An interpreter we have not verified is
refused with :class:`~transparent_de.errors.UnsupportedPythonError` instead of being
mis-compiled.

Stack conventions (see docs/concepts.md for the full table):

* method form (``LOAD_METHOD`` on 3.10/3.11, ``LOAD_ATTR`` with the method bit on 3.12+)
  turns ``[obj]`` into two slots that the following call reads as "callable, self";
* value form (a plain ``LOAD_ATTR``) turns ``[obj]`` into ``[attr]``.
"""

from __future__ import annotations

import sys
from typing import Any

from .errors import UnsupportedPythonError

SUPPORTED = ((3, 10), (3, 11), (3, 12), (3, 13))
PY = sys.version_info[:2]

#: The one global name our rewritten code reads; reserved in flow modules.
RUNTIME_NAME = "__tde__"


def check_supported() -> None:
    """Raise a clear error on an interpreter whose bytecode we have not verified."""
    if PY not in SUPPORTED:
        versions = ", ".join(f"{a}.{b}" for a, b in SUPPORTED)
        raise UnsupportedPythonError(
            f"transparent_de rewrites CPython bytecode and supports CPython {versions}; this is "
            f"{sys.implementation.name} {sys.version.split()[0]}. Flows would not be durable here, "
            "so install() refuses to run. Use a supported interpreter."
        )
    if sys.implementation.name != "cpython":
        raise UnsupportedPythonError(f"transparent_de needs CPython; this is {sys.implementation.name}.")


def attr_load(instr: Any) -> tuple[str, bool] | None:
    """If ``instr`` loads an attribute, return ``(name, is_method_form)``."""
    name = instr.name
    if name == "LOAD_METHOD":
        return instr.arg, True
    if name == "LOAD_ATTR":
        arg = instr.arg
        if PY >= (3, 12):
            return arg[1], bool(arg[0])
        return arg, False
    return None


def global_load(instr: Any) -> tuple[str, bool] | None:
    """If ``instr`` is ``LOAD_GLOBAL``, return ``(name, pushes_null)``."""
    if instr.name != "LOAD_GLOBAL":
        return None
    if PY >= (3, 11):
        return instr.arg[1], bool(instr.arg[0])
    return instr.arg, False


def _load_runtime(instr_cls: Any, loc: Any) -> Any:
    arg: Any = (False, RUNTIME_NAME) if PY >= (3, 11) else RUNTIME_NAME
    return instr_cls("LOAD_GLOBAL", arg, location=loc)


def _load_plain_attr(instr_cls: Any, key: str, loc: Any) -> Any:
    arg: Any = (False, key) if PY >= (3, 12) else key
    return instr_cls("LOAD_ATTR", arg, location=loc)


def _swap(instr_cls: Any, loc: Any) -> Any:
    if PY >= (3, 11):
        return instr_cls("SWAP", 2, location=loc)
    return instr_cls("ROT_TWO", location=loc)


def _call0(instr_cls: Any, loc: Any) -> list[Any]:
    if PY >= (3, 12):
        return [instr_cls("CALL", 0, location=loc)]
    if PY == (3, 11):
        return [instr_cls("PRECALL", 0, location=loc), instr_cls("CALL", 0, location=loc)]
    return [instr_cls("CALL_METHOD", 0, location=loc)]


def method_template(instr_cls: Any, key: str, loc: Any) -> list[Any]:
    """Replace a method-form load: ``[obj] -> [trampoline, obj]``.

    Read by every version's call as "function plus self", so the untouched CALL becomes
    ``trampoline(obj, *args, **kwargs)`` whatever the call shape.
    """
    return [_load_runtime(instr_cls, loc), _load_plain_attr(instr_cls, key, loc), _swap(instr_cls, loc)]


def value_template(instr_cls: Any, key: str, loc: Any) -> list[Any]:
    """Replace a value-form load: ``[obj] -> [binder(obj)]`` (a callable that journals)."""
    return method_template(instr_cls, key, loc) + _call0(instr_cls, loc)


def global_template(instr_cls: Any, key: str, name: str, pushes_null: bool, loc: Any) -> list[Any]:
    """Replace ``LOAD_GLOBAL name`` of a captured function with ``guard(name)``.

    The guard gets the global's current value (so monkeypatching still works) and returns it
    unchanged outside a flow, or a journaling wrapper inside one. Same net stack effect,
    including the NULL slot (before the callable on 3.11/3.12, after it on 3.13).
    """
    glob: Any = (False, name) if PY >= (3, 11) else name
    guard = [_load_runtime(instr_cls, loc), _load_plain_attr(instr_cls, key, loc)]
    value = instr_cls("LOAD_GLOBAL", glob, location=loc)
    if PY >= (3, 13):
        out = [*guard, instr_cls("PUSH_NULL", location=loc), value, *_call(instr_cls, 1, loc)]
        return out + ([instr_cls("PUSH_NULL", location=loc)] if pushes_null else [])
    if PY >= (3, 11):
        pre = [instr_cls("PUSH_NULL", location=loc)] if pushes_null else []
        return [*pre, instr_cls("PUSH_NULL", location=loc), *guard, value, *_call(instr_cls, 1, loc)]
    return [*guard, value, instr_cls("CALL_FUNCTION", 1, location=loc)]


def _call(instr_cls: Any, n: int, loc: Any) -> list[Any]:
    if PY >= (3, 12):
        return [instr_cls("CALL", n, location=loc)]
    if PY == (3, 11):
        return [instr_cls("PRECALL", n, location=loc), instr_cls("CALL", n, location=loc)]
    return [instr_cls("CALL_FUNCTION", n, location=loc)]


def code_qualname(code: Any) -> str:
    """``co_qualname`` where it exists (3.11+), ``co_name`` before."""
    return str(getattr(code, "co_qualname", code.co_name))
