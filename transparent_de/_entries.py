"""Which code a flow is: binding entry methods, and finding them again from the journal.

A flow is identified by its class (``module``, ``qualname``), its entry method and the class
that *declares* that entry (a base class's ``run`` reached through ``super()`` is another
function than the subclass's). These helpers turn a bound method into that identity when a
flow starts, and the identity back into the exact function when it resumes.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import unicodedata
from collections.abc import Callable
from typing import Any

from ._marking import FlowSpec
from .errors import FlowArgumentsError, FlowNotRewrittenError, TransparentDEError

#: What ``flows.instance`` holds for a flow object that could not be pickled: ``recover()``
#: then calls the class without arguments. A value, not NULL, so that it can be signed.
REBUILD = ("transparent_de", "rebuild the flow object with its class's no-argument constructor")

FLOW_ID_MAX = 255


def check_flow_id(flow_id: Any) -> str:
    """A flow id is printable text of at most 255 characters (it is shown in messages, logs and
    terminals, and it is part of every signed value's identity)."""
    shown = _shown_id(flow_id)
    if not isinstance(flow_id, str) or not 0 < len(flow_id) <= FLOW_ID_MAX:
        raise ValueError(f"flow_id must be a non-empty str of at most {FLOW_ID_MAX} characters, not {shown}")
    try:
        flow_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"flow_id {shown} is not valid text (a lone surrogate)") from None
    bad = next((c for c in flow_id if unicodedata.category(c) in _UNPRINTABLE), None)
    if bad is not None:
        raise ValueError(
            f"flow_id {shown} contains the control or separator character U+{ord(bad):04X}; use printable text"
        )
    return flow_id


#: Unicode categories refused in flow ids: controls (C0, DEL, C1), format characters, line
#: and paragraph separators, surrogates, unassigned code points.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"})


def _shown_id(value: Any) -> str:
    """A bounded, escaped rendering of a (possibly bad) flow id for an error message."""
    text = repr(value) if not isinstance(value, str) else ascii(value)
    return text if len(text) <= 80 else text[:77] + "..."


def spec_of(obj: Any) -> FlowSpec:
    """The flow spec of ``obj``'s class, or a clear error if the class was never rewritten."""
    cls = type(obj)
    spec = cls.__dict__.get("__tde_spec__")
    if spec is None:
        raise FlowNotRewrittenError(flow_class=f"{cls.__module__}.{cls.__qualname__}", module=cls.__module__)
    assert isinstance(spec, FlowSpec)
    return spec


def qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def entry_function(obj: Any, name: str, declaring: str | None = None) -> Callable[..., Any]:
    """The plain function behind entry ``name`` of ``obj`` (the one defined on ``declaring``, if given).

    A base class's entry reached through ``super().run()`` or ``Base.run(obj)`` is a different
    function from the subclass's ``run``: the journal records which (step 0's ``class_name``)
    so that a resumed flow runs the same one.
    """
    if declaring is not None:
        for klass in type(obj).__mro__:
            if qualified(klass) == declaring and name in vars(klass):
                fn = vars(klass)[name]
                return getattr(fn, "__tde_entry__", fn)  # type: ignore[no-any-return]
    fn = getattr(type(obj), name)
    return getattr(fn, "__tde_entry__", fn)  # type: ignore[no-any-return]


def entry_owner(obj: Any, name: str, fn: Callable[..., Any]) -> str:
    """``module.Qualname`` of the class that defines entry function ``fn`` (the seed's declaring class)."""
    mro = type(obj).__mro__
    owner = getattr(fn, "__qualname__", "").rpartition(".")[0]
    for klass in mro:
        if klass.__qualname__ == owner and klass.__module__ == getattr(fn, "__module__", None):
            return qualified(klass)
    for klass in mro:  # renamed or decorated: the first class whose attribute resolves to it
        v = vars(klass).get(name)
        if v is not None and getattr(v, "__tde_entry__", v) is fn:
            return qualified(klass)
    return qualified(type(obj))


def bound_entry(entry: Any) -> tuple[Any, str, Callable[..., Any]]:
    obj = getattr(entry, "__self__", None)
    func = getattr(entry, "__func__", None)
    if obj is None or func is None:
        raise TypeError(f"expected a bound entry method of a flow instance, like MyFlow().run, not {entry!r}")
    name = getattr(func, "__tde_name__", None) or func.__name__
    spec = spec_of(obj)
    if name not in spec.entries:
        raise TypeError(
            f"{spec.class_name}.{name} is not an entry of the flow (entries: {sorted(spec.entries)}); "
            "list it in __flow__ to start flows with it"
        )
    return obj, name, getattr(func, "__tde_entry__", func)


def resolve_class(module: str, qualname: str, required: bool) -> Any:
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj
    except Exception as exc:
        if required:
            raise TransparentDEError(
                f"cannot import flow class {module}.{qualname} to resume it: {type(exc).__name__}: {exc}. "
                "Run recover() in a process where that module is importable and transparent_de.install() "
                "covers it."
            ) from exc
        return None


class _Binder:
    """The canonical form of a call of one function, for fingerprints: the arguments as bound to
    its parameters, defaults applied, so that ``step(x)``, ``step(x=x)`` and ``step(x, y=1)``
    (``y=1`` the default) are the same call. The common case (positional arguments filling the
    positional parameters exactly) is already canonical and costs a length check."""

    __slots__ = ("n_positional", "signature", "simple")

    def __init__(self, fn: Callable[..., Any]) -> None:
        try:
            self.signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            self.signature = None
            self.simple, self.n_positional = False, -1
            return
        params = list(self.signature.parameters.values())
        kinds = {p.kind for p in params}
        self.simple = kinds <= {inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD}
        self.n_positional = len(params)

    def canonical(self, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        if not kwargs and self.simple and len(args) + 1 == self.n_positional:
            return args, kwargs
        if self.signature is None:
            return args, kwargs
        try:
            bound = self.signature.bind(obj, *args, **kwargs)
        except TypeError:
            return args, kwargs  # the call itself will raise the TypeError, as plain Python does
        bound.apply_defaults()
        return bound.args[1:], bound.kwargs


_binders: dict[Any, _Binder] = {}


def canonical_call(fn: Any, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """``(args, kwargs)`` of ``fn(obj, *args, **kwargs)`` as bound to ``fn``'s signature."""
    binder = _binders.get(fn)
    if binder is None:
        raw = getattr(fn, "__tde_entry__", fn)
        binder = _binders[fn] = _Binder(raw) if callable(raw) else _Binder(lambda *a, **k: None)
    return binder.canonical(obj, args, kwargs)


def bind_entry(
    obj: Any, fn: Callable[..., Any], name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """Refuse, before anything is written, an entry call whose arguments do not fit (plain
    Python would raise the same ``TypeError``, but only once the flow is in the journal)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(obj, *args, **kwargs)
    except TypeError as exc:
        cls = type(obj)
        raise FlowArgumentsError(flow_class=qualified(cls), method=name, detail=str(exc)) from None


_declaring: dict[tuple[type, str], str] = {}


def declaring_class(obj: Any, name: str) -> str:
    """``module.Qualname`` of the class in ``obj``'s MRO that defines ``name`` (cached: hot path)."""
    key = (type(obj), name)
    found = _declaring.get(key)
    if found is None:
        found = _declaring[key] = _find_declaring(type(obj), name)
    return found


def _find_declaring(cls: type, name: str) -> str:
    for klass in cls.__mro__:
        if name in vars(klass):
            owner = getattr(vars(klass)[name], "__tde_owner__", None)  # a step guard: where its function is
            return owner or f"{klass.__module__}.{klass.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def entry_wrapper(
    name: str, original: Callable[..., Any], start: Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]
) -> Callable[..., Any]:
    """What an entry method becomes: inside a running flow, a step of it (another entry of
    the same flow), the flow's own entry called inline (``super().run()``), or a child flow;
    outside any flow, ``start(self, args, kwargs)`` starts a durable flow (run to its
    result for a sync entry, an awaitable for an async one)."""
    from ._trampoline import current_run

    @functools.wraps(original)
    def entry(self: Any, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        run = current_run.get()
        if run is not None:
            if run.in_step:
                return original(self, *args, **kwargs)
            if run.flow is self:  # another entry of the running flow: a step; its own (super()): inline
                if name in run.steps and name != run.entry:
                    return run.call_step(self, name, "", args, kwargs, original)
                return original(self, *args, **kwargs)
            return run.child_flow(self, name, args, kwargs, original)
        return start(self, args, kwargs)

    entry.__tde_entry__ = original  # type: ignore[attr-defined]
    entry.__tde_name__ = name  # type: ignore[attr-defined]
    return entry
