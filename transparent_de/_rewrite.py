"""The pure bytecode transform: ``rewrite_function_code(code, names) -> code``.

It rewrites the *attribute load* of every step call, never the CALL: each
``LOAD_METHOD name`` / ``LOAD_ATTR name`` whose name may be a step (or a captured
non-deterministic function such as ``time.time``) becomes a short sequence with the same
stack effect that fetches a trampoline from the runtime object ``__tde__``. The CALL that
follows is untouched, so positional, keyword and star calls and value uses
(``f = self.step``) keep working on every version without simulating the stack.

The match is on the attribute *name* only, whatever the receiver; the trampoline decides at
run time whether the receiver is the flow being journaled (otherwise it is a plain call).
Call-site ids (``qualname:line``) are embedded in the keys for diagnostics only.

This module imports :mod:`bytecode` at import time, so the loader imports it lazily: a
cached import of a flow module never pays for it.
"""

from __future__ import annotations

import dis
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import CodeType
from typing import Any

from bytecode import Bytecode, Instr

from . import _versions as V
from ._trampoline import ND_ATTRS  # one table of captured names for the rewriter and the runtime


@dataclass(frozen=True)
class RewriteSpec:
    """What to rewrite in one flow class: step names, and module-level captured globals."""

    steps: frozenset[str]
    nd_globals: frozenset[str] = frozenset()
    nd_attrs: frozenset[str] = ND_ATTRS
    #: Guard ``for`` loops and comprehensions (sets iterate in a canonical order). Off for code
    #: a flow inherits from other modules: they are not rewritten just for their loops.
    iteration: bool = True
    #: Filled by the rewriter for TDE_DEBUG=rewrite and tests: (qualname, line, key) per site.
    sites: list[tuple[str, int, str]] = field(default_factory=list, compare=False, hash=False)


def step_key(name: str, qualname: str, line: int | None, method: bool) -> str:
    kind = ("m" if V.binds_methods() else "s") if method else "bs"
    return f"{kind}:{name}@{qualname}:{line or 0}"


def _rewrite_one(code: CodeType, spec: RewriteSpec) -> CodeType:
    source, hidden = V.hide_interpolations(code)
    bc = Bytecode.from_code(source)
    qual = V.code_qualname(code)
    out: list[Any] = []
    changed = False
    for ins in bc:
        if not isinstance(ins, Instr):
            out.append(ins)
            continue
        if ins.name == "LOAD_CONST" and isinstance(ins.arg, CodeType):
            new = rewrite_function_code(ins.arg, spec)
            if new is not ins.arg:
                ins = Instr("LOAD_CONST", new, location=ins.location)
                changed = True
            out.append(ins)
            continue
        loc = ins.location
        if ins.name == "GET_ITER" and spec.iteration:  # ``for``/comprehension over a value: sets in a canonical order
            out += V.value_template(Instr, ITER_KEY, loc)
            out.append(ins)
            changed = True
            continue
        hit = V.attr_load(ins)
        if hit is not None:
            name, method = hit
            if name in spec.steps:
                key = step_key(name, qual, loc.lineno if loc else None, method)
            elif name in spec.nd_attrs:
                key = f"{'n' if method and not V.binds_methods() else 'bn'}:{name}"
            else:
                out.append(ins)
                continue
            spec.sites.append((qual, (loc.lineno or 0) if loc else 0, key))
            tmpl = V.method_template if method else V.value_template
            out += tmpl(Instr, key, loc)
            changed = True
            continue
        g = V.global_load(ins)
        if g is not None and g[0] in spec.nd_globals:
            key = f"g:{g[0]}"
            spec.sites.append((qual, (loc.lineno or 0) if loc else 0, key))
            out += V.global_template(Instr, key, g[0], g[1], loc)
            changed = True
            continue
        out.append(ins)
    if not changed:
        return code
    bc.clear()
    bc.extend(out)
    return V.restore_interpolations(bc.to_code(), hidden)


#: The runtime key of the iteration guard (``_trampoline``: sets iterate in a canonical order).
ITER_KEY = "it:"
_GET_ITER = dis.opmap["GET_ITER"]


def _iterates(code: CodeType) -> bool:
    """Does ``code`` start an iteration (GET_ITER) its rewrite has not guarded yet?"""
    return ITER_KEY not in code.co_names and _GET_ITER in code.co_code[::2]


def needs_rewrite(code: CodeType, spec: RewriteSpec) -> bool:
    """Cheap check (names and opcodes, no disassembly) whether ``code`` still has sites to rewrite.

    Rewritten sites no longer load the bare name, so this is what makes the transform
    idempotent and lets the after-import check skip already rewritten code for free.
    Annotation scopes (3.14+) are not flow code and never need it.
    """
    if V.is_annotation_scope(code):
        return False
    names = set(code.co_names)
    if names & spec.steps or names & spec.nd_attrs:
        return True
    if any(n in names and f"g:{n}" not in names for n in spec.nd_globals):
        return True
    if spec.iteration and _iterates(code):
        return True
    return any(isinstance(c, CodeType) and needs_rewrite(c, spec) for c in code.co_consts)


def rewrite_function_code(code: CodeType, spec: RewriteSpec) -> CodeType:
    """Rewrite one function's code (and the code nested in it). Pure; returns ``code`` if unchanged."""
    if not needs_rewrite(code, spec):
        return code
    new = _rewrite_one(code, spec)
    if new is not code and _debug():
        _dump(code, new)
    return new


def rewrite_class_body(code: CodeType, spec: RewriteSpec) -> CodeType:
    """Rewrite the methods defined in a class body (the body's own code is left as it is)."""
    consts = list(code.co_consts)
    changed = False
    for i, c in enumerate(consts):
        if isinstance(c, CodeType):
            new = rewrite_function_code(c, spec)
            if new is not c:
                consts[i] = new
                changed = True
    return code.replace(co_consts=tuple(consts)) if changed else code


def rewrite_module_code(
    code: CodeType, targets: dict[str, RewriteSpec], lines: Mapping[str, Iterable[int]]
) -> CodeType:
    """Find the class bodies of flow classes in a module's code and rewrite their methods.

    ``targets`` maps a class qualname to its spec; ``lines`` maps it to the source lines the
    class statement may start on (decorators included), used where ``co_qualname`` is missing.
    """
    consts = list(code.co_consts)
    changed = False
    for i, c in enumerate(consts):
        if not isinstance(c, CodeType):
            continue
        qual = _class_qualname(c, targets, lines)
        new = rewrite_class_body(c, targets[qual]) if qual is not None else c
        new = rewrite_module_code(new, targets, lines)
        if new is not c:
            consts[i] = new
            changed = True
    return code.replace(co_consts=tuple(consts)) if changed else code


def _class_qualname(
    code: CodeType, targets: dict[str, RewriteSpec], lines: Mapping[str, Iterable[int]]
) -> str | None:
    qual = getattr(code, "co_qualname", None)
    if qual is not None:
        return qual if qual in targets else None
    # 3.10: no co_qualname. Match the simple name and the line the class statement starts on.
    for q, spec_lines in lines.items():
        if q.rsplit(".", 1)[-1] == code.co_name and code.co_firstlineno in set(spec_lines):
            return q
    return None


def _debug() -> bool:
    return "rewrite" in os.environ.get("TDE_DEBUG", "").split(",")


def _dump(old: CodeType, new: CodeType) -> None:
    import dis

    print(f"--- transparent_de: {V.code_qualname(old)} before", file=sys.stderr)
    dis.dis(old, file=sys.stderr, depth=0)
    print(f"+++ transparent_de: {V.code_qualname(new)} after", file=sys.stderr)
    dis.dis(new, file=sys.stderr, depth=0)
