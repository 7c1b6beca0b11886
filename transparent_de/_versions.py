"""Every difference between the CPython versions we support lives here.

The rewriter never compares ``sys.version_info`` itself: it asks this module for the
instruction templates of the running interpreter. Each supported version has one row in
:data:`VERSIONS`, checked against what that interpreter's compiler really emits by
``tests/test_versions.py``; an interpreter without a row (older than 3.10, or newer than the
last one verified) is refused with :class:`~transparent_de.errors.UnsupportedPythonError`
instead of being mis-compiled.

Stack conventions (see docs/concepts.md for the full table):

* method form (``LOAD_METHOD`` on 3.10/3.11, ``LOAD_ATTR`` with the method bit on 3.12+)
  turns ``[obj]`` into two slots that the following call reads as "callable, self";
* value form (a plain ``LOAD_ATTR``) turns ``[obj]`` into ``[attr]``.

NOTE (3.14+, borrowed loads): most ``LOAD_FAST`` become ``LOAD_FAST_BORROW`` (a reference
the frame's local keeps alive). The compiler proves the borrow safe for as long as the value
stays on the stack, and for a method-form ``LOAD_ATTR`` it already assumes the receiver stays
there until the call, which is exactly where our templates leave it (``SWAP`` moves it, the
untouched ``CALL`` consumes it); a value-form receiver is consumed by our zero-argument call
at once. No template reads or writes a local, so no borrow outlives its local: they are left
as the compiler emitted them.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from types import CodeType
from typing import Any

from .errors import UnsupportedPythonError


@dataclass(frozen=True)
class Facts:
    """What the rewriter must know about one CPython minor version's bytecode."""

    #: ``LOAD_METHOD name`` exists (3.10, 3.11); later it is the method bit of ``LOAD_ATTR``.
    load_method: bool
    #: ``LOAD_ATTR``'s argument is ``(is_method, name)`` (3.12+), else the bare name.
    attr_method_bit: bool
    #: ``LOAD_GLOBAL``'s argument is ``(push_null, name)`` (3.11+), else the bare name.
    global_null_bit: bool
    #: Where a call's NULL slot sits: ``"none"`` (3.10), ``"before"`` the callable (3.11,
    #: 3.12) or ``"after"`` it (3.13+).
    null_slot: str
    #: How two stack slots are swapped: ``ROT_TWO`` (3.10) or ``SWAP 2`` (3.11+).
    swap: str
    #: The call of N arguments: ``CALL_METHOD``/``CALL_FUNCTION`` (3.10), ``PRECALL`` +
    #: ``CALL`` (3.11), ``CALL`` (3.12+).
    call: str
    #: Annotations compile to separate ``__annotate__(format, /)`` functions (3.14+, PEP 649
    #: and 749) instead of being evaluated where they stand.
    annotation_scopes: bool
    #: ``LOAD_FAST_BORROW`` and ``LOAD_FAST_BORROW_LOAD_FAST_BORROW`` exist (3.14+); see the
    #: module docstring for why the templates need no change for them.
    borrowed_loads: bool
    #: Template strings compile to ``BUILD_INTERPOLATION`` (3.14+, PEP 750), which the
    #: ``bytecode`` package cannot carry through a rewrite: see :func:`hide_interpolations`.
    template_strings: bool


_PY310 = Facts(
    load_method=True,
    attr_method_bit=False,
    global_null_bit=False,
    null_slot="none",
    swap="ROT_TWO",
    call="CALL_FUNCTION",
    annotation_scopes=False,
    borrowed_loads=False,
    template_strings=False,
)
_PY311 = Facts(
    load_method=True,
    attr_method_bit=False,
    global_null_bit=True,
    null_slot="before",
    swap="SWAP",
    call="PRECALL",
    annotation_scopes=False,
    borrowed_loads=False,
    template_strings=False,
)
_PY312 = Facts(
    load_method=False,
    attr_method_bit=True,
    global_null_bit=True,
    null_slot="before",
    swap="SWAP",
    call="CALL",
    annotation_scopes=False,
    borrowed_loads=False,
    template_strings=False,
)
_PY313 = Facts(
    load_method=False,
    attr_method_bit=True,
    global_null_bit=True,
    null_slot="after",
    swap="SWAP",
    call="CALL",
    annotation_scopes=False,
    borrowed_loads=False,
    template_strings=False,
)
# 3.14: LOAD_SMALL_INT, LOAD_COMMON_CONSTANT, LOAD_SPECIAL, BUILD_TEMPLATE, a CALL_FUNCTION_EX
# without oparg and PEP 765's SyntaxWarning for return/break/continue in `finally` change
# nothing the templates touch; borrowed loads, annotation scopes and template strings are the
# new facts.
_PY314 = Facts(
    load_method=False,
    attr_method_bit=True,
    global_null_bit=True,
    null_slot="after",
    swap="SWAP",
    call="CALL",
    annotation_scopes=True,
    borrowed_loads=True,
    template_strings=True,
)
# 3.15: same conventions as 3.14 (annotation functions are now qualified by their function,
# `F.run.__annotate__`; GET_YIELD_FROM_ITER is gone; code objects lost `co_lnotab`, which only
# matters to dill, see _serialization).
_PY315 = _PY314

#: One row per verified CPython minor version; anything else is refused.
VERSIONS: dict[tuple[int, int], Facts] = {
    (3, 10): _PY310,
    (3, 11): _PY311,
    (3, 12): _PY312,
    (3, 13): _PY313,
    (3, 14): _PY314,
    (3, 15): _PY315,
}
SUPPORTED = tuple(VERSIONS)
PY = sys.version_info[:2]
_FACTS = VERSIONS.get(PY)

#: The one global name our rewritten code reads; reserved in flow modules.
RUNTIME_NAME = "__tde__"


def check_supported() -> None:
    """Raise a clear error on an interpreter whose bytecode we have not verified."""
    if sys.implementation.name != "cpython":
        raise UnsupportedPythonError(f"transparent_de needs CPython; this is {sys.implementation.name}.")
    if PY not in VERSIONS:
        first, last = SUPPORTED[0], SUPPORTED[-1]
        versions = ", ".join(f"{a}.{b}" for a, b in SUPPORTED)
        hint = (
            "A newer transparent_de release may support it; until then use one of those."
            if last < PY
            else f"Use CPython {first[0]}.{first[1]} or newer."
        )
        raise UnsupportedPythonError(
            f"transparent_de rewrites CPython bytecode and supports CPython {versions}; this is "
            f"{sys.implementation.name} {PY[0]}.{PY[1]} ({sys.version.split()[0]}). Flows would not be "
            f"durable here, so install() refuses to run. {hint}"
        )


def facts() -> Facts:
    """The running interpreter's row; refuses (never guesses) where there is none."""
    if _FACTS is None:
        check_supported()
    assert _FACTS is not None
    return _FACTS


def attr_load(instr: Any) -> tuple[str, bool] | None:
    """If ``instr`` loads an attribute, return ``(name, is_method_form)``."""
    name = instr.name
    if name == "LOAD_METHOD" and facts().load_method:
        return instr.arg, True
    if name == "LOAD_ATTR":
        arg = instr.arg
        if facts().attr_method_bit:
            return arg[1], bool(arg[0])
        return arg, False
    return None


def global_load(instr: Any) -> tuple[str, bool] | None:
    """If ``instr`` is ``LOAD_GLOBAL``, return ``(name, pushes_null)``."""
    if instr.name != "LOAD_GLOBAL":
        return None
    if facts().global_null_bit:
        return instr.arg[1], bool(instr.arg[0])
    return instr.arg, False


def is_annotation_scope(code: CodeType) -> bool:
    """Is ``code`` a compiler-made ``__annotate__`` function (3.14+)? Those are never rewritten.

    Annotations are not flow code: on 3.10-3.13 they are evaluated in the class body, which
    the rewriter leaves alone, and must give the same values on 3.14+ whenever they are
    evaluated, inside a flow too (a rewritten ``x: time.time`` would then be a capturing
    wrapper, and an annotation naming a step a journaling one).
    """
    return (
        facts().annotation_scopes
        and code.co_name == "__annotate__"
        and code.co_posonlyargcount == 1
        and code.co_varnames[:1] == ("format",)
    )


def hide_interpolations(code: CodeType) -> tuple[CodeType, tuple[tuple[int, int], ...]]:
    """Stand ``BUILD_TUPLE`` in for each ``BUILD_INTERPOLATION`` of ``code`` (3.14+).

    NOTE: ``bytecode`` 0.19.1 decodes this opcode's argument (``conversion << 2 | 2 |
    has_format_spec``) as if it were ``FORMAT_VALUE``'s and cannot encode it back, so any
    code holding a t-string fails to round-trip (``ValueError: 5 is not a valid FormatValue``
    or an ``AssertionError``). ``BUILD_TUPLE 2 + has_format_spec`` has the same stack effect
    and no inline cache, so the rewrite works on the stand-in and
    :func:`restore_interpolations` puts the original instructions back. Returns the stand-in
    code and ``(ordinal among its BUILD_TUPLEs, original oparg)`` for each one replaced.
    """
    if not facts().template_strings:
        return code, ()
    import dis

    interp, tup = dis.opmap["BUILD_INTERPOLATION"], dis.opmap["BUILD_TUPLE"]
    if interp not in code.co_code[::2]:  # opcodes sit at even offsets: the cheap common case
        return code, ()
    raw = bytearray(code.co_code)
    hidden: list[tuple[int, int]] = []
    ordinal = 0
    for ins in dis.get_instructions(code):
        if ins.opcode == interp:
            assert ins.arg is not None and ins.arg < 256, ins  # 4 bits of flags: no EXTENDED_ARG
            raw[ins.offset : ins.offset + 2] = bytes((tup, 2 + (ins.arg & 1)))
            hidden.append((ordinal, ins.arg))
        if ins.opcode in (interp, tup):
            ordinal += 1
    return (code.replace(co_code=bytes(raw)), tuple(hidden)) if hidden else (code, ())


def restore_interpolations(code: CodeType, hidden: tuple[tuple[int, int], ...]) -> CodeType:
    """Undo :func:`hide_interpolations` on the rewritten code (our templates add no BUILD_TUPLE)."""
    if not hidden:
        return code
    import dis

    interp, tup = dis.opmap["BUILD_INTERPOLATION"], dis.opmap["BUILD_TUPLE"]
    offsets = [ins.offset for ins in dis.get_instructions(code) if ins.opcode == tup]
    raw = bytearray(code.co_code)
    for ordinal, oparg in hidden:
        off = offsets[ordinal]
        if raw[off + 1] != 2 + (oparg & 1):  # the stand-ins moved: never emit wrong code
            raise RuntimeError(f"transparent_de: lost track of a template string in {code_qualname(code)}")
        raw[off : off + 2] = bytes((interp, oparg))
    return code.replace(co_code=bytes(raw))


def _load_runtime(instr_cls: Any, loc: Any) -> Any:
    arg: Any = (False, RUNTIME_NAME) if facts().global_null_bit else RUNTIME_NAME
    return instr_cls("LOAD_GLOBAL", arg, location=loc)


def _load_plain_attr(instr_cls: Any, key: str, loc: Any) -> Any:
    arg: Any = (False, key) if facts().attr_method_bit else key
    return instr_cls("LOAD_ATTR", arg, location=loc)


def _swap(instr_cls: Any, loc: Any) -> Any:
    if facts().swap == "ROT_TWO":
        return instr_cls("ROT_TWO", location=loc)
    return instr_cls("SWAP", 2, location=loc)


def _call(instr_cls: Any, n: int, loc: Any, method: bool = False) -> list[Any]:
    """A call of ``n`` arguments; on 3.10 ``method`` picks the "function plus self" form."""
    if facts().call == "CALL":
        return [instr_cls("CALL", n, location=loc)]
    if facts().call == "PRECALL":
        return [instr_cls("PRECALL", n, location=loc), instr_cls("CALL", n, location=loc)]
    return [instr_cls("CALL_METHOD" if method else "CALL_FUNCTION", n, location=loc)]


def binds_methods() -> bool:
    """Do method-form sites load a binder (3.11+), rather than a trampoline (3.10)?"""
    return facts().null_slot != "none"


def method_template(instr_cls: Any, key: str, loc: Any) -> list[Any]:
    """Replace a method-form load with the same two stack slots the untouched CALL reads.

    3.11+: ``[obj] -> [NULL, binder(obj)]`` (``"before"``) or ``[binder(obj), NULL]``
    (``"after"``): the binder returns the bound method itself when no flow is running (so
    the call passes its arguments straight through, with no ``*args`` packing) or, inside
    one, a closure that journals the call. Resolving the attribute at the load, before the
    arguments are evaluated, is also what plain Python does. ``key`` names the binder
    (``m:...``).

    3.10 has no ``PUSH_NULL``: ``[obj] -> [trampoline, obj]``, read by ``CALL_METHOD`` as
    "function plus self", so the call becomes ``trampoline(obj, *args, **kwargs)``
    (``key`` then names the trampoline, ``s:...``).
    """
    null = facts().null_slot
    if null == "before":
        push = instr_cls("PUSH_NULL", location=loc)
        return [push, _swap(instr_cls, loc), *value_template(instr_cls, key, loc)]
    if null == "after":
        return [*value_template(instr_cls, key, loc), instr_cls("PUSH_NULL", location=loc)]
    return _trampoline_template(instr_cls, key, loc)


def _trampoline_template(instr_cls: Any, key: str, loc: Any) -> list[Any]:
    """``[obj] -> [runtime.key, obj]``: a two-slot "function plus self" pair."""
    return [_load_runtime(instr_cls, loc), _load_plain_attr(instr_cls, key, loc), _swap(instr_cls, loc)]


def value_template(instr_cls: Any, key: str, loc: Any) -> list[Any]:
    """Replace a value-form load: ``[obj] -> [binder(obj)]`` (a callable that journals)."""
    return _trampoline_template(instr_cls, key, loc) + _call(instr_cls, 0, loc, method=True)


def global_template(instr_cls: Any, key: str, name: str, pushes_null: bool, loc: Any) -> list[Any]:
    """Replace ``LOAD_GLOBAL name`` of a captured function with ``guard(name)``.

    The guard gets the global's current value (so monkeypatching still works) and returns it
    unchanged outside a flow, or a journaling wrapper inside one. Same net stack effect,
    including the NULL slot (before the callable on 3.11/3.12, after it on 3.13+).
    """
    glob: Any = (False, name) if facts().global_null_bit else name
    guard = [_load_runtime(instr_cls, loc), _load_plain_attr(instr_cls, key, loc)]
    value = instr_cls("LOAD_GLOBAL", glob, location=loc)
    if facts().null_slot == "after":
        out = [*guard, instr_cls("PUSH_NULL", location=loc), value, *_call(instr_cls, 1, loc)]
        return out + ([instr_cls("PUSH_NULL", location=loc)] if pushes_null else [])
    if facts().null_slot == "before":
        pre = [instr_cls("PUSH_NULL", location=loc)] if pushes_null else []
        return [*pre, instr_cls("PUSH_NULL", location=loc), *guard, value, *_call(instr_cls, 1, loc)]
    return [*guard, value, *_call(instr_cls, 1, loc)]  # 3.10: no NULL slots at all


def code_qualname(code: Any) -> str:
    """``co_qualname`` where it exists (3.11+), ``co_name`` before."""
    return str(getattr(code, "co_qualname", code.co_name))


# --------------------------------------------------------------------------- handlers around a call


def unwinding_runs_code(frame: Any, exc_type: type[BaseException]) -> bool:
    """Would an ``exc_type`` raised at ``frame``'s current instruction run code of this frame
    before leaving it (an ``except`` that matches it, a ``finally``, a ``with`` exit)?

    Parking unwinds a flow with a ``BaseException``; a flow must not run cleanup code the plain
    program would not have run there (and again on resume), so it parks only where this is
    False in every frame of flow code. Handlers made only of typed ``except`` clauses whose
    classes are resolved here and do not catch ``exc_type`` are skipped (the common
    ``try: ... except ValueError:``); any other handler, or a clause this cannot resolve,
    counts as running code: the conservative answer.
    """
    code, offset = frame.f_code, frame.f_lasti
    instrs, at, entries = _code_facts(code)
    for _ in range(32):  # each round: the handler around offset, then where it re-raises
        target = _handler_target(entries, instrs, offset)
        if target is None:
            return False
        reraise = _typed_clauses_reraise(frame, instrs, at, target, exc_type)
        if reraise is None:
            return True
        offset = reraise
    return True


@functools.lru_cache(maxsize=512)
def _code_facts(code: CodeType) -> tuple[list[Any], dict[int, int], tuple[Any, ...]]:
    """A code object's instructions, their index by offset, and its exception table (3.11+):
    disassembled once per code object (a parking flow asks at every long wait)."""
    import dis

    instrs = list(dis.get_instructions(code))
    entries = tuple(getattr(dis.Bytecode(code), "exception_entries", ()))
    return instrs, {i.offset: n for n, i in enumerate(instrs)}, entries


def _handler_target(entries: tuple[Any, ...], instrs: list[Any], offset: int) -> int | None:
    """The offset of the innermost handler protecting ``offset`` (None: not protected)."""
    if PY >= (3, 11):
        for entry in entries:
            if entry.start <= offset < entry.end:
                return int(entry.target)
        return None
    # 3.10: SETUP_FINALLY/SETUP_WITH protect from themselves to their handler (the block's end).
    best: int | None = None
    for ins in instrs:
        setup = ins.opname in ("SETUP_FINALLY", "SETUP_WITH", "SETUP_ASYNC_WITH")
        if setup and ins.offset < offset < ins.argval and (best is None or ins.argval < best):
            best = ins.argval
    return best


_CLAUSE_START = "PUSH_EXC_INFO" if PY >= (3, 11) else "DUP_TOP"
_MATCH_JUMPS = ("POP_JUMP_IF_FALSE", "POP_JUMP_FORWARD_IF_FALSE")


def _typed_clauses_reraise(
    frame: Any, instrs: list[Any], at: dict[int, int], target: int, exc_type: type[BaseException]
) -> int | None:
    """If the handler at ``target`` is typed ``except`` clauses none of which catches
    ``exc_type``, the offset where it re-raises; else None (it would run code)."""
    n = at.get(target)
    if n is None:
        return None
    first = instrs[n]
    # Coroutines and generators, 3.12+: handlers the compiler adds around every ``await`` /
    # ``yield from`` (CLEANUP_THROW: a StopIteration thrown in becomes the value) and around the
    # whole body (StopIteration becomes RuntimeError). Any other exception passes through both.
    if first.opname == "CLEANUP_THROW":
        return int(first.offset)
    if first.opname == "CALL_INTRINSIC_1" and "STOPITERATION_ERROR" in first.argrepr:
        return int(instrs[n + 1].offset) if instrs[n + 1].opname == "RERAISE" else None
    cleanup = [i.opname for i in instrs[n : n + 3]]
    if cleanup == ["COPY", "POP_EXCEPT", "RERAISE"]:  # 3.11+: restores the exception state only
        return int(instrs[n + 2].offset)
    if instrs[n].opname != _CLAUSE_START:
        return None  # a finally or a with exit: code runs
    n += 1 if PY >= (3, 11) else 0
    for _ in range(64):  # clause after clause
        if PY < (3, 11):
            if instrs[n].opname == "RERAISE":
                return int(instrs[n].offset)
            if instrs[n].opname != "DUP_TOP":
                return None
            n += 1
        elif instrs[n].opname == "RERAISE":
            return int(instrs[n].offset)
        values: list[Any] = []
        while instrs[n].opname not in ("CHECK_EXC_MATCH", "JUMP_IF_NOT_EXC_MATCH"):
            if not _push_value(frame, instrs[n], values):
                return None
            n += 1
        caught = values[-1] if values else None
        classes = caught if isinstance(caught, tuple) else (caught,)
        if not all(isinstance(c, type) and not issubclass(exc_type, c) for c in classes):
            return None  # it catches exc_type, or we cannot tell
        jump = instrs[n] if instrs[n].opname == "JUMP_IF_NOT_EXC_MATCH" else instrs[n + 1]
        if jump.opname not in (*_MATCH_JUMPS, "JUMP_IF_NOT_EXC_MATCH"):
            return None
        n = at.get(jump.argval, -1)
        if n < 0:
            return None
    return None


def _push_value(frame: Any, ins: Any, values: list[Any]) -> bool:
    """Evaluate one instruction of an ``except`` clause's class expression (names, attributes,
    tuples); False for anything else."""
    import builtins

    name = ins.opname
    if name in ("LOAD_GLOBAL", "LOAD_NAME"):
        key = ins.argval
        if key in frame.f_globals:
            values.append(frame.f_globals[key])
        elif hasattr(builtins, key):
            values.append(getattr(builtins, key))
        else:
            return False
    elif name in ("LOAD_FAST", "LOAD_DEREF", "LOAD_FAST_BORROW", "LOAD_FAST_CHECK"):
        if ins.argval not in frame.f_locals:
            return False
        values.append(frame.f_locals[ins.argval])
    elif name == "LOAD_ATTR" and values:
        try:
            values.append(getattr(values.pop(), ins.argval))
        except AttributeError:
            return False
    elif name == "BUILD_TUPLE" and len(values) >= ins.arg:
        items = tuple(values[len(values) - ins.arg :])
        del values[len(values) - ins.arg :]
        values.append(items)
    elif name in ("PUSH_NULL", "CACHE", "NOP"):
        pass
    else:
        return False
    return True
