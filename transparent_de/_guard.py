"""Flow classes that were never rewritten refuse to run: nothing is silently non-durable.

A class marked ``__flow__`` that no hook rewrote (its module was imported before
``install()``, under another package name, or by another loader) would run its entries as
plain, unjournaled Python. ``import transparent_de`` wraps ``builtins.__build_class__`` so
that every class statement executed afterwards is looked at once: a truthy ``__flow__`` on
a class whose module our loader is not executing gets its entry methods replaced by guards
that raise :class:`~transparent_de.errors.FlowNotRewrittenError` naming the class and the
remedy. Rewriting the class later (``install()`` fixing up modules imported before it,
``rewrite_class``, the pytest plugin) replaces the guards by the real entries: a guard keeps
the original function in ``__tde_entry__``, as an entry wrapper does.

Cost: one attribute lookup per class statement (measured in docs/performance.md); classes
created before ``import transparent_de`` are not seen (``install()`` fixes up its own
packages' modules and warns).
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import inspect
from collections.abc import Iterator
from typing import Any

from ._marking import flow_spec
from .errors import FlowNotRewrittenError

_build_class = builtins.__build_class__

#: Namespaces (by id) of modules our loader is executing right now.
_LOADING: set[int] = set()


def _guarded_build_class(func: Any, name: str, /, *bases: Any, **kwargs: Any) -> Any:
    # Positional-only, as the builtin: `class C(Base, name=...)` passes its own `name` keyword.
    cls = _build_class(func, name, *bases, **kwargs)
    try:
        if "__flow__" in cls.__dict__ or (bases and getattr(cls, "__flow__", None)):
            _check(cls, func)
    except Exception:  # never break a class statement of somebody else's
        pass
    return cls


def _check(cls: Any, func: Any) -> None:
    if not isinstance(cls, type) or not getattr(cls, "__flow__", None) or "__tde_spec__" in cls.__dict__:
        return
    if id(getattr(func, "__globals__", None)) in _LOADING:
        return  # our loader (or `transparent-de run`) is executing its module: it finalizes the class
    try:
        entries = flow_spec(cls).entries
    except TypeError:
        return  # a bad marker: finalizing the class reports it
    for entry in entries:
        original = cls.__dict__.get(entry)
        if inspect.isfunction(original) and not getattr(original, "__tde_guard__", False):
            type.__setattr__(cls, entry, _guard(cls, original))


def _guard(cls: type, original: Any) -> Any:
    flow_class = f"{cls.__module__}.{cls.__qualname__}"

    @functools.wraps(original)
    def not_rewritten(self: Any, *args: Any, **kwargs: Any) -> Any:
        if "__tde_spec__" in type(self).__dict__:  # rewritten since (a subclass, or late finalize)
            return original(self, *args, **kwargs)
        raise FlowNotRewrittenError(flow_class=flow_class, module=cls.__module__)

    not_rewritten.__tde_entry__ = original  # type: ignore[attr-defined]
    not_rewritten.__tde_guard__ = True  # type: ignore[attr-defined]
    return not_rewritten


@contextlib.contextmanager
def loading(namespace: dict[str, Any]) -> Iterator[None]:
    """Our loader executes the module with this namespace: its flow classes are finalized after."""
    _LOADING.add(id(namespace))
    try:
        yield
    finally:
        _LOADING.discard(id(namespace))


def enable() -> None:
    """Look at every class statement from now on (idempotent)."""
    current: Any = builtins.__build_class__
    if current is not _guarded_build_class:
        builtins.__build_class__ = _guarded_build_class


# --------------------------------------------------------------------------- step guards


def guard_steps(cls: type, steps: frozenset[str], entries: frozenset[str]) -> list[str]:
    """Put a guard on every step function of a flow class, so that a step called on the running
    flow from flow-level code is journaled whatever path the call took: the rewritten call
    site, ``getattr(self, "step")``, ``super().step()``, ``Flow.step(self)``, a bound step
    kept in a dict, ``operator.methodcaller``, ``weakref.proxy(self).step()``. Outside a flow,
    and inside a step, a guard is a plain call.

    Returns the public attributes that are callable but not plain methods (cache wrappers,
    ``partialmethod``, static and class methods ...): their calls are not steps.
    """
    from ._trampoline import ACTIVE, _not_in_flow, current_run

    unjournaled = []
    for name in dir(cls):
        if name.startswith("_"):
            continue
        raw = inspect.getattr_static(cls, name)
        if name in steps and name not in entries:
            # Every class of the MRO defining the step (super().step() reaches a base's): guards
            # are inert outside a flow, so a base shared with other classes is unaffected.
            for klass in cls.__mro__[:-1]:
                fn = vars(klass).get(name)
                if inspect.isfunction(fn) and not hasattr(fn, "__tde_step__"):
                    type.__setattr__(
                        klass, name, _step_guard(klass, name, fn, current_run, ACTIVE, _not_in_flow)
                    )
        elif (
            name not in steps
            and name not in entries
            and not isinstance(raw, property)
            and not inspect.isclass(raw)
            and not inspect.iscoroutinefunction(raw)
            and not inspect.isasyncgenfunction(raw)
            and not inspect.isgeneratorfunction(raw)
            and callable(getattr(raw, "__func__", raw))
        ):
            unjournaled.append(f"{name} ({type(raw).__name__})")
    return unjournaled


def _step_guard(owner: type, name: str, fn: Any, current_run: Any, active: Any, not_in_flow: Any) -> Any:
    owner_name = f"{owner.__module__}.{owner.__qualname__}"

    @functools.wraps(fn)
    def step(self: Any, /, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        run = current_run.get()
        if run is not None:
            if run.flow is self and not run.in_step and name in run.steps:
                return run.call_step(self, name, "", args, kwargs, fn, owner_name)
        elif active:
            not_in_flow(self, name)
        return fn(self, *args, **kwargs)

    step.__tde_step__ = fn  # type: ignore[attr-defined]
    step.__tde_owner__ = owner_name  # type: ignore[attr-defined]
    return step
