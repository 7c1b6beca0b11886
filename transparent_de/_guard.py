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
    """The guard of one step function: journals the call inside a flow, a plain call outside.

    Made with ``fn``'s own parameter list where that is possible (:func:`_exact_guard`), so a
    call outside any flow (the common case for code that merely uses a flow class) costs one
    extra frame and no packing of ``*args``/``**kwargs``.
    """
    owner_name = f"{owner.__module__}.{owner.__qualname__}"
    step: Any = _exact_guard(name, fn, owner_name, current_run, active, not_in_flow)
    if step is None:

        @functools.wraps(fn)
        def generic(self: Any, /, *args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            run = current_run.get()
            if run is not None:
                if run.flow is self and not run.in_step and name in run.steps:
                    return run.call_step(self, name, "", args, kwargs, fn, owner_name)
            elif active:
                not_in_flow(self, name)
            return fn(self, *args, **kwargs)

        step = generic
    step.__tde_step__ = fn
    step.__tde_owner__ = owner_name
    return step


_P = inspect.Parameter
#: Names the generated guard uses for itself; a step with a parameter of one of these names
#: gets the generic guard.
_OWN = ("__tracebackhide__", "_tde_run", "_tde_get", "_tde_fn", "_tde_name", "_tde_owner", "_tde_active", "_tde_nif")


def _exact_guard(
    name: str, fn: Any, owner_name: str, current_run: Any, active: Any, not_in_flow: Any
) -> Any | None:
    """A guard whose parameters are ``fn``'s, compiled for it; None when ``fn``'s are unusual.

    The generic ``(self, /, *args, **kwargs)`` wrapper costs ~8x a plain call on CPython
    3.11, nearly all of it in packing and unpacking the arguments; this one forwards each
    parameter by name. Defaults are ``fn``'s own objects (``__defaults__``/``__kwdefaults__``),
    so an omitted argument reaches ``fn`` as the very object it would have had. Inside a flow
    the journaled call is the bound form: positional parameters by position, keyword-only
    ones by keyword (the fingerprint binds calls to the signature anyway, so
    ``step(x)`` and ``step(x=x)`` were already the same call).
    """
    try:
        params = list(inspect.signature(fn, follow_wrapped=False).parameters.values())
    except (TypeError, ValueError):
        return None
    if (
        not params
        or params[0].kind not in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)
        or any(p.name in _OWN for p in params)
        or fn.__code__.co_flags & (inspect.CO_COROUTINE | inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR)
    ):
        return None
    decl: list[str] = []
    positional: list[str] = []
    keywords: list[str] = []
    star = ""
    for i, p in enumerate(params):
        if p.kind is _P.VAR_POSITIONAL:
            decl.append("*" + p.name)
            star = p.name
        elif p.kind is _P.KEYWORD_ONLY:
            if not star and "*" not in decl:
                decl.append("*")
            decl.append(p.name)
            keywords.append(p.name)
        elif p.kind is _P.VAR_KEYWORD:
            decl.append("**" + p.name)
        else:
            decl.append(p.name)
            positional.append(p.name)
        if p.kind is _P.POSITIONAL_ONLY and (i + 1 == len(params) or params[i + 1].kind is not _P.POSITIONAL_ONLY):
            decl.append("/")
    var_kw = next((p.name for p in params if p.kind is _P.VAR_KEYWORD), None)
    me, rest = positional[0], positional[1:]
    call_args = [*positional] + ([f"*{star}"] if star else []) + [f"{k}={k}" for k in keywords]
    call_args += [f"**{var_kw}"] if var_kw else []
    args_tuple = "(" + "".join(f"{a}, " for a in rest) + (f"*{star}," if star else "") + ")"
    kwargs_dict = "{" + ", ".join([f"{k!r}: {k}" for k in keywords] + ([f"**{var_kw}"] if var_kw else [])) + "}"
    src = (
        f"def {name}({', '.join(decl)}):\n"
        f"    __tracebackhide__ = True\n"
        f"    _tde_run = _tde_get()\n"
        f"    if _tde_run is not None:\n"
        f"        if _tde_run.flow is {me} and not _tde_run.in_step and _tde_name in _tde_run.steps:\n"
        f"            return _tde_run.call_step({me}, _tde_name, '', {args_tuple}, {kwargs_dict}, _tde_fn, _tde_owner)\n"
        f"    elif _tde_active:\n"
        f"        _tde_nif({me}, _tde_name)\n"
        f"    return _tde_fn({', '.join(call_args)})\n"
    )
    namespace: dict[str, Any] = {
        "_tde_get": current_run.get, "_tde_fn": fn, "_tde_name": name, "_tde_owner": owner_name,
        "_tde_active": active, "_tde_nif": not_in_flow,
    }
    try:
        exec(compile(src, f"<transparent_de guard of {owner_name}.{name}>", "exec"), namespace)  # our own template, of identifiers only
    except SyntaxError:
        return None
    step: Any = namespace[name]
    # update_wrapper's __qualname__ is also what names the step in a bad call's TypeError.
    step.__defaults__, step.__kwdefaults__ = fn.__defaults__, fn.__kwdefaults__
    functools.update_wrapper(step, fn)
    return step
