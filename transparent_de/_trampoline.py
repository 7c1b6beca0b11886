"""What rewritten code calls: the ``__tde__`` runtime object and its trampolines.

Rewritten flow code reaches us through one global, ``__tde__`` (injected into flow modules,
with a ``builtins`` fallback for ``runpy`` and code unpickled by dill). Its attributes are
trampolines built on first use and then kept in the instance dict, so later loads are plain
dict hits:

* ``m:<step>@<site>``  method form (3.11+): ``binder(obj)`` -> the bound method, or inside a
  flow a closure that journals the call the site makes right away;
* ``s:<step>@<site>``  method form (3.10): ``trampoline(obj, *args, **kwargs)``;
* ``bs:<step>@<site>`` value form: ``binder(obj)`` -> the bound method, or a journaling
  :class:`BoundStep` inside a flow;
* ``n:<name>`` / ``bn:<name>`` the same for captured functions (``time.time`` ...);
* ``g:<name>`` guard for a module global bound by ``from time import time as now``.

Outside a running flow, or on any receiver that is not the flow instance, or inside a step,
every trampoline is a plain call: rewritten code behaves exactly like the original.
"""

from __future__ import annotations

import builtins
import contextvars
import datetime
import inspect
import os
import random
import secrets
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._run import Run

#: The run whose flow-level code is executing in this context (None outside flows).
current_run: contextvars.ContextVar[Run | None] = contextvars.ContextVar("transparent_de_run", default=None)


def _capture_table() -> dict[Any, str]:
    """Real callables -> the name journaled for them. Identity decides, not the spelling."""
    table: dict[Any, str] = {}

    def add(owner: Any, names: str, prefix: str) -> None:
        for n in names.split():
            fn = getattr(owner, n, None)
            if fn is not None:
                table[fn] = f"{prefix}.{n}"

    add(
        time,
        "time time_ns monotonic monotonic_ns perf_counter perf_counter_ns sleep clock_gettime clock_gettime_ns "
        "process_time process_time_ns thread_time thread_time_ns",
        "time",
    )
    add(datetime.datetime, "now utcnow today", "datetime.datetime")
    add(datetime.date, "today", "datetime.date")
    add(
        random,
        "random randint randrange choice choices sample shuffle uniform gauss getrandbits "
        "triangular normalvariate expovariate randbytes gammavariate betavariate lognormvariate "
        "vonmisesvariate paretovariate weibullvariate binomialvariate Random SystemRandom",
        "random",
    )
    add(uuid, "uuid1 uuid4", "uuid")
    add(os, "urandom getrandom", "os")
    add(secrets, "token_bytes token_hex token_urlsafe randbelow randbits choice", "secrets")
    return table


CAPTURED: dict[Any, str] = _capture_table()

#: Captured functions of modules only async flows need: :mod:`._async_waits` adds them to
#: :data:`CAPTURED` when it is imported (before any async flow runs), so that importing
#: transparent_de does not import asyncio; their names are known here for the rewriter.
LAZY_CAPTURED: dict[str, tuple[str, ...]] = {"asyncio": ("sleep", "wait", "wait_for", "as_completed")}

#: Attribute names the rewriter pre-selects as capture sites, whatever the receiver (the
#: runtime then decides by identity: is this really ``time.time``?). Derived from the tables,
#: so they cannot drift apart; kept here, not in the rewriter, so that importing
#: transparent_de (and a cache hit) never imports :mod:`bytecode`.
ND_ATTRS: frozenset[str] = frozenset(v.rpartition(".")[2] for v in CAPTURED.values()) | {
    n for names in LAZY_CAPTURED.values() for n in names
}

#: Modules whose module-level ``from M import f`` bindings are captured when ``f`` is in :data:`ND_ATTRS`.
ND_MODULES: frozenset[str] = frozenset(v.partition(".")[0] for v in CAPTURED.values()) | set(LAZY_CAPTURED)


def captured_name(fn: Any) -> str | None:
    try:
        return CAPTURED.get(fn)
    except TypeError:  # unhashable receiver of a bound method
        return None


def _is_step(run: Run, obj: Any, name: str) -> bool:
    return run.flow is obj and not run.in_step and name in run.steps


#: Runs whose flow-level code is executing, by ``id`` of their flow object: a step call that
#: finds no run in its context (another thread) but whose receiver is a running flow is caught.
ACTIVE: dict[int, Run] = {}


def _not_in_flow(obj: Any, name: str) -> None:
    """A step-named call outside any run's context: refuse it if it is a running flow's step."""
    run = ACTIVE.get(id(obj))
    if run is not None and _is_step(run, obj, name):
        run.foreign_thread_call(name)


def _plain_or_captured(
    run: Run | None, obj: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Not a step of this run: a plain call, unless it is a captured function whose name a step
    shares (a step called ``time`` must not make ``time.time()`` in the same class plain)."""
    fn = getattr(obj, name)
    if run is not None and not run.in_step and name in ND_ATTRS:
        what = captured_name(fn)
        if what is not None:
            return run.capture(what, fn, args, kwargs)
    return fn(*args, **kwargs)


class BoundStep:
    """``self.step`` used as a value inside a flow: calling it journals the step.

    Delegates attribute access to the real bound method, so ``__name__``, ``__doc__`` and
    ``functools.partial(self.step, 1)`` behave. It remembers its run: calling it from a
    thread the flow started (where no run is active) raises instead of silently not
    journaling.
    """

    __slots__ = ("_name", "_obj", "_run", "_site")

    def __init__(self, run: Run, obj: Any, name: str, site: str) -> None:
        self._run, self._obj, self._name, self._site = run, obj, name, site

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        run = current_run.get()
        if (run is None or run.thread != self._run.thread) and self._run.active and not self._run.in_step:
            self._run.foreign_thread_call(self._name)
        if run is not self._run or not _is_step(run, self._obj, self._name):
            return getattr(self._obj, self._name)(*args, **kwargs)
        return run.call_step(self._obj, self._name, self._site, args, kwargs)

    def __getattr__(self, item: str) -> Any:
        return getattr(getattr(self._obj, self._name), item)

    # Found on the class before __getattr__ is asked: forward it to the method too. (Not
    # __module__: a property there would break the class's own repr and pickling.)
    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        return getattr(self._obj, self._name).__doc__  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<journaled step {type(self._obj).__name__}.{self._name}>"

    # Compared, hashed and introspected as the bound method it stands for, so that callback
    # registries (``handlers.remove(self.on_done)``, sets of callbacks) and ``inspect.signature``
    # (which would otherwise follow ``__wrapped__`` to the unbound function) see no difference.
    def __eq__(self, other: object) -> bool:
        if isinstance(other, BoundStep):
            return self._obj is other._obj and self._name == other._name
        return bool(getattr(self._obj, self._name) == other)

    def __hash__(self) -> int:
        return hash(getattr(self._obj, self._name))

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(getattr(self._obj, self._name))


def _make(key: str) -> Callable[..., Any]:
    kind, _, rest = key.partition(":")
    name, _, site = rest.partition("@")

    if kind == "s":

        def step_trampoline(obj: Any, /, *args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            run = current_run.get()
            if run is None:
                if ACTIVE:
                    _not_in_flow(obj, name)
                return getattr(obj, name)(*args, **kwargs)
            if not _is_step(run, obj, name):
                return _plain_or_captured(run, obj, name, args, kwargs)
            return run.call_step(obj, name, site, args, kwargs)

        return step_trampoline

    if kind in ("m", "bs"):
        # "m": a method-form site (3.11+), called right after this load: inside a flow the
        # binder returns a closure that journals that call. "bs": a value (f = self.step),
        # which may be kept, compared or called later: a BoundStep.
        method = kind == "m"

        def step_binder(obj: Any) -> Any:
            run = current_run.get()
            if run is None:
                if ACTIVE:
                    _not_in_flow(obj, name)
                return getattr(obj, name)
            if not _is_step(run, obj, name):
                fn = getattr(obj, name)
                what = captured_name(fn) if not run.in_step and name in ND_ATTRS else None
                return fn if what is None else _CapturedCall(run, what, fn)
            if not method:
                return BoundStep(run, obj, name, site)
            call_step = run.call_step

            def journaled(*args: Any, **kwargs: Any) -> Any:
                __tracebackhide__ = True
                return call_step(obj, name, site, args, kwargs)

            return journaled

        return step_binder

    if kind == "n":

        def capture_trampoline(obj: Any, /, *args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            fn = getattr(obj, name)
            run = current_run.get()
            if run is None or run.in_step:
                return fn(*args, **kwargs)
            what = captured_name(fn)
            if what is None:
                return fn(*args, **kwargs)
            return run.capture(what, fn, args, kwargs)

        return capture_trampoline

    if kind in ("bn", "g"):

        def capture_binder(value: Any) -> Any:
            fn = getattr(value, name) if kind == "bn" else value
            run = current_run.get()
            if run is None or run.in_step:
                return fn
            what = captured_name(fn)
            if what is None:
                return fn
            return _CapturedCall(run, what, fn)

        return capture_binder

    if kind == "it":
        return canonical_iteration

    raise AttributeError(key)


#: Element types whose hashes, and so a set's iteration order, are the same in every process.
_STABLE_HASH = (int, float, bool)


def canonical_iteration(value: Any) -> Any:
    """What a ``for`` loop or comprehension in flow code iterates: sets in a canonical order.

    A set or frozenset of strings (or bytes, tuples of them, objects hashed by address ...)
    iterates in an order that follows the process's hash seed, so a recovering process would
    take another path and meet the journal with other step arguments. In flow-level code of a
    running flow, such a set is iterated sorted (or, when its elements do not order, sorted by
    type and repr): one order in every process (unless a repr shows an address), and an order
    plain Python could have taken.
    Everything else, and all code outside flows or inside steps, iterates as it always does.
    """
    if type(value) is not set and type(value) is not frozenset:
        return value
    run = current_run.get()
    if run is None or run.in_step or len(value) < 2 or all(type(v) in _STABLE_HASH for v in value):
        return value
    try:
        return sorted(value)
    except TypeError:
        return sorted(value, key=lambda v: (type(v).__qualname__, repr(v)))


class _CapturedCall:
    __slots__ = ("_fn", "_run", "_what")

    def __init__(self, run: Run, what: str, fn: Any) -> None:
        self._run, self._what, self._fn = run, what, fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        run = current_run.get()
        if run is not self._run or run.in_step:
            return self._fn(*args, **kwargs)
        return run.capture(self._what, self._fn, args, kwargs)

    def __getattr__(self, item: str) -> Any:
        return getattr(self._fn, item)


class Runtime:
    """The object rewritten code reads as ``__tde__``; attributes are built on first use."""

    def __getattr__(self, key: str) -> Callable[..., Any]:
        if key.startswith("__"):
            raise AttributeError(key)
        fn = _make(key)
        self.__dict__[key] = fn
        return fn

    def __reduce__(self) -> str:
        # dill pickles rewritten lambdas by value with their globals: never drag state along.
        return "RUNTIME"

    def __repr__(self) -> str:
        return "<transparent_de runtime>"


RUNTIME = Runtime()
# The fallback for code executed without our loader's module dict (runpy, dill by-value code).
builtins.__tde__ = RUNTIME  # type: ignore[attr-defined]
