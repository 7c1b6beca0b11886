"""What makes a class a flow, which of its methods are entries and steps, and its options.

The mark is a plain class attribute, ``__flow__``, read twice:

* in the **source** (AST) at import time, so the rewrite can happen before the class exists
  and be cached. The AST over-approximates: any class that assigns ``__flow__`` (or derives
  from one in the same module) is rewritten; step names are guessed from the class bodies;
* on the **real class** after the module ran (``getattr`` through the MRO), which is the
  truth: inherited markers, non-literal markers and steps inherited from bases elsewhere are
  found there and rewritten at run time.

Marker forms::

    __flow__ = True                        # every public method is an entry
    __flow__ = "run"                       # only run() is an entry; other public methods are steps only
    __flow__ = ("run", "resume")
    __flow__ = {"entries": ("run",), "retries": 3, "backoff": 0.5, "failure": "final"}
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ._trampoline import ND_ATTRS, ND_MODULES

OPTION_KEYS = frozenset(
    {"entries", "retries", "backoff", "max_backoff", "retry_on", "failure", "max_recovery_attempts"}
)


@dataclass(frozen=True)
class FlowSpec:
    """The runtime truth about one flow class (stored on it as ``__tde_spec__``)."""

    class_name: str  # module.Qualname
    entries: frozenset[str]
    steps: frozenset[str]
    retries: int = 0  # extra automatic attempts of a failing step (0 = like the seed: none)
    backoff: float = 0.1  # first delay between automatic attempts, doubled each time
    max_backoff: float = 30.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    failure: str = "resumable"  # or "final": an escaped error ends the flow FAILED
    #: Failed runs in a row after which the flow ends FAILED (None: the engine's default, 50).
    max_recovery_attempts: int | None = None


def is_public(name: str) -> bool:
    return not name.startswith("_")


def _plain_function(value: Any) -> bool:
    """A step must be a plain ``def`` or an ``async def`` function found in a class dict
    (generators and async generators are not steps: their values arrive piecemeal)."""
    fn = getattr(value, "__tde_entry__", value)
    return inspect.isfunction(fn) and not inspect.isgeneratorfunction(fn) and not inspect.isasyncgenfunction(fn)


def public_methods(cls: type) -> dict[str, Any]:
    """Public plain functions visible on ``cls`` through its MRO (nearest definition wins)."""
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__[:-1]):  # object last: skip it
        for name, value in vars(klass).items():
            if is_public(name):
                if _plain_function(value):
                    found[name] = value
                else:
                    found.pop(name, None)
    return found


def flow_spec(cls: type) -> FlowSpec:
    """Parse ``cls.__flow__`` into a :class:`FlowSpec`; a bad marker is a clear TypeError."""
    marker = getattr(cls, "__flow__", None)
    name = f"{cls.__module__}.{cls.__qualname__}"
    steps = frozenset(public_methods(cls))
    options: dict[str, Any] = {}
    if marker is True or (marker and isinstance(marker, int) and not isinstance(marker, bool)):
        entries: Iterable[str] = steps
    elif isinstance(marker, str):
        entries = (marker,)
    elif isinstance(marker, (tuple, list, frozenset, set)):
        entries = tuple(marker)
    elif isinstance(marker, dict):
        unknown = set(marker) - OPTION_KEYS
        if unknown:
            raise TypeError(
                f"flow class {name}: unknown __flow__ option(s) {sorted(unknown)}; "
                f"known options are {sorted(OPTION_KEYS)}"
            )
        options = dict(marker)
        raw = options.pop("entries", None)
        entries = steps if raw is None else ((raw,) if isinstance(raw, str) else tuple(raw))
    else:
        raise TypeError(
            f"flow class {name}: __flow__ = {marker!r} is not a flow marker; use True, an entry "
            "name, a tuple of entry names, or a dict of options"
        )
    missing = [e for e in entries if e not in steps and not callable(getattr(cls, e, None))]
    if missing:
        raise TypeError(
            f"flow class {name}: __flow__ names entries {missing} that are not methods of the class"
        )
    retry_on = options.get("retry_on", (Exception,))
    if isinstance(retry_on, type):
        retry_on = (retry_on,)
    failure = options.get("failure", "resumable")
    if failure not in ("resumable", "final"):
        raise TypeError(f"flow class {name}: __flow__ option failure must be 'resumable' or 'final'")
    retries = options.get("retries", 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise TypeError(f"flow class {name}: __flow__ option retries must be a whole number >= 0")
    for key in ("backoff", "max_backoff"):
        value = options.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise TypeError(
                f"flow class {name}: __flow__ option {key} must be a number of seconds >= 0, not {value!r}"
            )
    cap = options.get("max_recovery_attempts")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise TypeError(
            f"flow class {name}: __flow__ option max_recovery_attempts must be a whole number >= 1"
        )
    if not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_on):
        raise TypeError(f"flow class {name}: __flow__ option retry_on must be exception classes")
    return FlowSpec(
        class_name=name,
        entries=frozenset(entries),
        steps=steps,
        retries=retries,
        backoff=float(options.get("backoff", 0.1)),
        max_backoff=float(options.get("max_backoff", 30.0)),
        retry_on=tuple(retry_on),
        failure=failure,
        max_recovery_attempts=cap,
    )


# --------------------------------------------------------------------------- source side


@dataclass
class SourceFlows:
    """Flow classes found in a module's source, for the compile-time rewrite."""

    steps: dict[str, frozenset[str]]  # class qualname -> guessed step names
    lines: dict[str, list[int]]  # class qualname -> lines the class statement may start on
    nd_globals: frozenset[str]  # module globals bound to captured functions


def _marks_flow(node: ast.ClassDef) -> bool:
    for stmt in node.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(stmt, ast.Assign):
            targets, value = stmt.targets, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            targets, value = [stmt.target], stmt.value
        if any(isinstance(t, ast.Name) and t.id == "__flow__" for t in targets):
            # A literal false value is not a mark; anything else (even a name) may be.
            return not (isinstance(value, ast.Constant) and not value.value)
    return False


def _body_methods(node: ast.ClassDef) -> set[str]:
    out = set()
    for stmt in node.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and is_public(stmt.name):
            decos = {d.id for d in stmt.decorator_list if isinstance(d, ast.Name)}
            if not decos & {"staticmethod", "classmethod", "property"}:
                out.add(stmt.name)
    return out


def scan_source(tree: ast.Module) -> SourceFlows:
    classes: dict[str, ast.ClassDef] = {}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for stmt in body:
            if isinstance(stmt, ast.ClassDef):
                q = f"{prefix}{stmt.name}"
                classes[q] = stmt
                visit(stmt.body, q + ".")

    visit(tree.body, "")
    flows = {q for q, c in classes.items() if _marks_flow(c)}
    changed = True
    while changed:  # classes deriving from a same-module flow class are flows too
        changed = False
        for q, c in classes.items():
            if q not in flows and any(isinstance(b, ast.Name) and b.id in flows for b in c.bases):
                flows.add(q)
                changed = True
    steps: dict[str, frozenset[str]] = {}
    for q in flows:
        names = _body_methods(classes[q])
        for b in classes[q].bases:
            if isinstance(b, ast.Name) and b.id in classes:
                names |= _body_methods(classes[b.id])
        steps[q] = frozenset(names)
    lines = {q: [classes[q].lineno] + [d.lineno for d in classes[q].decorator_list] for q in flows}
    nd_globals = set()
    for stmt in tree.body:
        if isinstance(stmt, ast.ImportFrom) and stmt.module in ND_MODULES and stmt.level == 0:
            for alias in stmt.names:
                if alias.name in ND_ATTRS:
                    nd_globals.add(alias.asname or alias.name)
    return SourceFlows(steps=steps, lines=lines, nd_globals=frozenset(nd_globals))
