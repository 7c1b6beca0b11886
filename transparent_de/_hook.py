"""The import hook, the after-import check of real classes, and entry wrappers.

* :class:`FlowFinder` sits first on ``sys.meta_path`` for the configured packages and asks
  the *other* finders for the spec (a ``pip install -e .`` package is found only by
  setuptools' own finder), then swaps in :class:`FlowLoader` when the module is plain source.
* :class:`FlowLoader` overrides ``get_code``, not only ``source_to_code``: the standard
  ``.pyc`` must never hold rewritten code (a later import without the hook would load it) nor
  be trusted for a flow module (a plain ``.pyc`` would skip the rewrite). Rewritten code is
  cached in its own file ``__pycache__/<name>.<cache_tag>-tde<N>.pyc``, validated by source
  hash (like pytest's assertion rewriter), written atomically with ``os.replace``.
* :func:`finalize_class` runs on the real class after the module executed: it rewrites what
  the source scan could not see (inherited markers, non-literal markers, steps inherited from
  bases elsewhere), wraps the entry methods, and stamps the class with its spec.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import marshal
import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from types import CodeType, ModuleType
from typing import Any

from . import _guard
from . import _versions as V
from ._entries import entry_wrapper
from ._marking import FlowSpec, flow_spec, scan_source
from ._trampoline import RUNTIME
from .errors import TransparentDEError

#: Bump whenever the rewriter's output changes: it is part of the cache file name.
REWRITER_FORMAT = 4
CACHE_TAG = f"{sys.implementation.cache_tag}-tde{REWRITER_FORMAT}"
_FLAGS_CHECKED_HASH = 0b11


class FlowFinder(importlib.abc.MetaPathFinder):
    """Claims modules of the configured packages that are plain source files."""

    def __init__(self, packages: Iterable[str], cache: bool = True) -> None:
        self.packages = tuple(packages)
        self.cache = cache
        self._busy: set[str] = set()

    def wanted(self, name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in self.packages)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not self.wanted(fullname) or fullname in self._busy:
            return None
        self._busy.add(fullname)  # the other finders may call back into meta_path
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is self or isinstance(finder, FlowFinder) or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        finally:
            self._busy.discard(fullname)
        # Exact type: leave pytest's assertion rewriter and other custom loaders alone.
        if spec is None or type(spec.loader) is not importlib.machinery.SourceFileLoader or not spec.origin:
            return None
        loader = FlowLoader(fullname, spec.origin, cache=self.cache)
        new = importlib.util.spec_from_file_location(
            fullname, spec.origin, loader=loader, submodule_search_locations=spec.submodule_search_locations
        )
        return new


class FlowLoader(importlib.machinery.SourceFileLoader):
    """Loads flow modules with their flow classes rewritten (cached in our own pyc)."""

    def __init__(self, fullname: str, path: str, cache: bool = True) -> None:
        super().__init__(fullname, path)
        self.cache = cache
        self.rewritten: dict[str, frozenset[str]] = {}

    def get_code(self, fullname: str) -> CodeType:
        source = self.get_data(self.path)
        if b"__flow__" not in source:
            return super().get_code(fullname)  # type: ignore[return-value]
        return rewrite_source(source, self.path, cache=self.cache, found=self.rewritten)

    def exec_module(self, module: ModuleType) -> None:
        module.__dict__[V.RUNTIME_NAME] = RUNTIME
        with _guard.loading(module.__dict__):
            super().exec_module(module)
        finalize_module(module, self.rewritten)


# --------------------------------------------------------------------------- cache


def cache_path(source_path: str) -> str:
    base = importlib.util.cache_from_source(source_path)  # honours sys.pycache_prefix
    head, tail = os.path.split(base)
    name = tail.split(".", 1)[0]
    return os.path.join(head, f"{name}.{CACHE_TAG}.pyc")


def _bytecode_version() -> str:
    """The installed ``bytecode`` release, found without importing it (a cache hit must not).

    Importing ``bytecode`` or ``importlib.metadata`` costs 15-20 ms in a fresh interpreter,
    more than the whole rewrite of a small module; the ``*.dist-info`` folder beside the
    package names the version for free.
    """
    loaded = sys.modules.get("bytecode")
    if loaded is not None:
        return str(loaded.__version__)
    spec = importlib.util.find_spec("bytecode")
    if spec is not None and spec.origin:
        site = os.path.dirname(os.path.dirname(spec.origin))
        with contextlib.suppress(OSError):
            for name in os.listdir(site):
                if name.startswith("bytecode-") and name.endswith(".dist-info"):
                    return name[len("bytecode-") : -len(".dist-info")]
    import importlib.metadata as md

    try:
        return md.version("bytecode")
    except md.PackageNotFoundError:  # pragma: no cover
        return "?"


def _fingerprint() -> bytes:
    """What must match for a cached rewrite to be reused: our format, bytecode's version, rules."""
    from ._trampoline import ND_ATTRS, ND_MODULES

    bc = _bytecode_version()
    return f"{REWRITER_FORMAT}|{bc}|{sorted(ND_ATTRS)}|{sorted(ND_MODULES)}".encode()


@functools.lru_cache(maxsize=1)
def _cache_key() -> bytes:
    import hashlib

    return hashlib.blake2b(_fingerprint(), digest_size=8).digest()


def _read_cache(pyc: str, source: bytes) -> tuple[CodeType, dict[str, frozenset[str]]] | None:
    try:
        with open(pyc, "rb") as f:
            data = f.read()
    except OSError:
        return None
    magic = importlib.util.MAGIC_NUMBER
    if len(data) < 32 or data[:4] != magic or int.from_bytes(data[4:8], "little") != _FLAGS_CHECKED_HASH:
        return None
    if data[8:16] != importlib.util.source_hash(source) or data[16:24] != _cache_key():
        return None
    try:
        code, found = marshal.loads(data[24:])
    except Exception:
        return None
    if not isinstance(code, CodeType):
        return None
    return code, {k: frozenset(v) for k, v in found.items()}


def _write_cache(pyc: str, source: bytes, code: CodeType, found: dict[str, frozenset[str]]) -> None:
    if sys.dont_write_bytecode:
        return
    data = (
        importlib.util.MAGIC_NUMBER
        + _FLAGS_CHECKED_HASH.to_bytes(4, "little")
        + importlib.util.source_hash(source)
        + _cache_key()
        + marshal.dumps((code, {k: tuple(sorted(v)) for k, v in found.items()}))
    )
    tmp = f"{pyc}.{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(pyc), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, pyc)
    except OSError:  # read-only tree, full disk: caching is best effort
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def rewrite_source(
    source: bytes, path: str, cache: bool = True, found: dict[str, frozenset[str]] | None = None
) -> CodeType:
    """Compile a module's source with its flow classes rewritten (through the cache)."""
    pyc = cache_path(path)
    if cache:
        hit = _read_cache(pyc, source)
        if hit is not None:
            code, names = hit
            if found is not None:
                found.update(names)
            return code
    tree = ast.parse(source, filename=path)
    code = compile(tree, path, "exec", dont_inherit=True)
    scan = scan_source(tree)
    if scan.steps:
        from ._rewrite import RewriteSpec, rewrite_module_code

        targets = {q: RewriteSpec(steps=s, nd_globals=scan.nd_globals) for q, s in scan.steps.items()}
        code = rewrite_module_code(code, targets, scan.lines)
    names = {q: s for q, s in scan.steps.items()}
    names["<nd_globals>"] = scan.nd_globals
    if found is not None:
        found.update(names)
    if cache:
        _write_cache(pyc, source, code, names)
    return code


# --------------------------------------------------------------------------- finalize


def finalize_module(module: ModuleType, rewritten: dict[str, frozenset[str]] | None = None) -> list[type]:
    """Check every flow class defined in ``module`` and finish what the source scan missed."""
    done = []
    nd_globals = (rewritten or {}).get("<nd_globals>", frozenset())
    for value in list(vars(module).values()):
        if inspect.isclass(value) and value.__module__ == module.__name__:
            for cls in _with_nested(value):
                if getattr(cls, "__flow__", None):
                    compiled = (rewritten or {}).get(cls.__qualname__)
                    finalize_class(cls, compiled, nd_globals)
                    done.append(cls)
    return done


def _with_nested(cls: type) -> list[type]:
    out = [cls]
    for v in vars(cls).values():
        if inspect.isclass(v) and v.__qualname__.startswith(cls.__qualname__ + "."):
            out += _with_nested(v)
    return out


def _functions(cls: type) -> dict[str, Any]:
    """The plain functions behind every method of the class's MRO (unwrapped), by name."""
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__[:-1]):
        for name, value in vars(klass).items():
            raw = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
            raw = getattr(raw, "__tde_entry__", raw)
            while hasattr(raw, "__wrapped__") and inspect.isfunction(raw.__wrapped__):
                raw = raw.__wrapped__
            if inspect.isfunction(raw):
                out[name] = raw
    return out


def finalize_class(
    cls: type, compiled_steps: frozenset[str] | None = None, nd_globals: frozenset[str] = frozenset()
) -> FlowSpec:
    """Make ``cls`` a working flow class: rewrite what is left, wrap entries, stamp its spec.

    Idempotent and cheap when the import-time rewrite already did the work: only functions
    that still load a step name or a captured name are disassembled.
    """
    existing = cls.__dict__.get("__tde_spec__")
    if isinstance(existing, FlowSpec):
        return existing
    V.check_supported()
    spec = flow_spec(cls)
    funcs = _functions(cls)
    extra = spec.steps - compiled_steps if compiled_steps is not None else spec.steps
    own = set(vars(cls))
    if compiled_steps is None or extra or any(n not in own for n in funcs):
        from ._rewrite import RewriteSpec, needs_rewrite, rewrite_function_code

        for name, fn in funcs.items():
            if compiled_steps is not None and name in own and not extra:
                continue  # rewritten at import with a superset of today's step names
            rspec = RewriteSpec(
                steps=spec.steps,
                nd_globals=nd_globals | _nd_globals_of(fn.__globals__),
                iteration=fn.__module__ == cls.__module__,
            )
            if needs_rewrite(fn.__code__, rspec):
                new = rewrite_function_code(fn.__code__, rspec)
                if new is not fn.__code__:
                    fn.__code__ = new
                    fn.__globals__.setdefault(V.RUNTIME_NAME, RUNTIME)
    unjournaled = sorted(
        n
        for n, v in vars(cls).items()
        if not n.startswith("_")
        and (inspect.isasyncgenfunction(v) or inspect.isgeneratorfunction(v))
    )
    if unjournaled:
        warnings.warn(
            f"flow {spec.class_name}: {', '.join(unjournaled)} are generator methods; this version "
            "does not journal them (entries among them refuse to run, steps among them run plainly).",
            stacklevel=2,
        )
    for name in spec.entries:
        _wrap_entry(cls, name)
    plain = _guard.guard_steps(cls, spec.steps, spec.entries)
    if plain:
        warnings.warn(
            f"flow {spec.class_name}: {', '.join(plain)} are callable but not plain methods, so their calls "
            "are not journaled steps: at flow level they run again on every replay. Make them plain "
            "methods (steps), or name them _like_this (helpers).",
            stacklevel=2,
        )
    type.__setattr__(cls, "__tde_spec__", spec)
    return spec


def _nd_globals_of(g: dict[str, Any]) -> frozenset[str]:
    from ._trampoline import captured_name

    return frozenset(n for n, v in g.items() if not n.startswith("__") and captured_name(v) is not None)


def _wrap_entry(cls: type, name: str) -> None:
    current = inspect.getattr_static(cls, name)
    original = getattr(current, "__tde_entry__", current)
    if not inspect.isfunction(original):
        return  # a property, classmethod ... named as an entry: not a flow entry, left alone
    if inspect.isgeneratorfunction(original) or inspect.isasyncgenfunction(original):
        type.__setattr__(cls, name, _unsupported_entry(cls, name, original))
        return
    if inspect.iscoroutinefunction(original):
        from ._async_run import async_entry

        type.__setattr__(cls, name, async_entry(name, original))
        return

    def start(self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        from . import _api

        return _api.default_engine().runner.run_entry(self, name, args, kwargs, None, background=False, fn=original)

    entry = entry_wrapper(name, original, start)
    type.__setattr__(cls, name, entry)


def _unsupported_entry(cls: type, name: str, original: Any) -> Any:
    """A generator entry: refused when called (it would not be durable)."""
    kind = "an async generator" if inspect.isasyncgenfunction(original) else "a generator"
    message = (
        f"flow {cls.__module__}.{cls.__qualname__}: entry {name}() is {kind} method, and this version "
        "journals def and async def entries only: calling it would run it without a journal. Make it a "
        "def or async def returning its values, or call it outside __flow__ entries."
    )

    @functools.wraps(original)
    def refused(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise TransparentDEError(message)

    refused.__tde_entry__ = original  # type: ignore[attr-defined]
    return refused


def rewrite_class(cls: type) -> type:
    """Rewrite a flow class at run time (classes another loader created: test modules, exec)."""
    if not getattr(cls, "__flow__", None):
        raise TypeError(f"{cls.__qualname__} is not marked as a flow (no truthy __flow__ attribute)")
    finalize_class(cls)
    return cls


# --------------------------------------------------------------------------- install


class InstallHandle:
    """What :func:`install` returns: ``uninstall()``, and a context manager doing the same."""

    def __init__(self, finder: FlowFinder) -> None:
        self.finder = finder

    @property
    def packages(self) -> tuple[str, ...]:
        return self.finder.packages

    def uninstall(self) -> None:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self.finder)

    def __enter__(self) -> InstallHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def __repr__(self) -> str:
        return f"<transparent_de hook for {', '.join(self.packages)}>"


def install(*packages: str, cache: bool | None = None) -> InstallHandle:
    """Rewrite flow classes in ``packages`` (and their submodules) when they are imported."""
    V.check_supported()
    if not packages:
        raise TypeError("install() needs at least one package name, e.g. install('myapp')")
    for p in packages:
        if not isinstance(p, str) or not p or p.startswith("."):
            raise TypeError(f"install() takes absolute package names, not {p!r}")
    if cache is None:
        cache = os.environ.get("TRANSPARENT_DE_CACHE", "1") != "0"
    finder = FlowFinder(packages, cache=cache)
    sys.meta_path.insert(0, finder)
    for p in packages:
        top = p.split(".")[0]
        if top != "__main__" and top not in sys.modules and importlib.util.find_spec(top) is None:
            warnings.warn(
                f"transparent_de.install({p!r}): no package {top!r} is importable from sys.path, so "
                "nothing will be rewritten for it. Check the name and sys.path.",
                stacklevel=2,
            )
    stale = sorted(n for n in list(sys.modules) if finder.wanted(n))
    fixed = []
    for name in stale:
        mod = sys.modules.get(name)
        if mod is not None and not isinstance(getattr(mod, "__loader__", None), FlowLoader):
            mod.__dict__.setdefault(V.RUNTIME_NAME, RUNTIME)
            fixed += finalize_module(mod)
    if fixed:
        warnings.warn(
            "transparent_de.install(): these flow classes were imported before the hook was installed "
            f"and were rewritten at run time: {', '.join(c.__qualname__ for c in fixed)}. Call install() "
            "before importing flow modules so the rewrite is cached.",
            stacklevel=2,
        )
    return InstallHandle(finder)


def install_this_package(module_name: str | None = None) -> InstallHandle:
    """One line in a package's ``__init__.py``: rewrite flows in this package's submodules."""
    if module_name is None:
        frame = sys._getframe(1)
        module_name = str(frame.f_globals.get("__package__") or frame.f_globals["__name__"])
    return install(module_name.split(".")[0])


# --------------------------------------------------------------------------- __main__


def run_main(target: str, argv: Sequence[str]) -> None:
    """Run a script path or a module as ``__main__`` with its flow classes rewritten.

    ``runpy`` would compile a script directly (bypassing the hook) and run a module's code
    without ``exec_module`` (so nothing would finalize its classes). Here the code comes from
    :func:`rewrite_source`, and every flow class of ``__main__`` is finalized the moment its
    class statement completes, so an ``if __name__ == "__main__":`` block that calls a flow
    right away is durable. Flows defined in ``__main__`` cannot be recovered by another program
    (their class is not importable there): keep flows to recover in importable modules.
    """
    import builtins

    if target.endswith(".py") or os.sep in target:
        path = os.path.abspath(target)
        sys.path.insert(0, os.path.dirname(path))
        spec = None
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        install(target.split(".")[0])
        spec = importlib.util.find_spec(target)
        if spec is None or not spec.origin:
            raise ImportError(f"no module named {target!r}")
        if spec.submodule_search_locations is not None:  # a package: run its __main__
            spec = importlib.util.find_spec(f"{target}.__main__")
            if spec is None or not spec.origin:
                raise ImportError(f"{target!r} is a package without __main__")
        path = str(spec.origin)
    with open(path, "rb") as f:
        source = f.read()
    found: dict[str, frozenset[str]] = {}
    code = rewrite_source(source, path, cache=False, found=found)
    main = ModuleType("__main__")
    main.__dict__.update(
        __file__=path,
        __spec__=spec,
        __loader__=spec.loader if spec else None,
        __builtins__=builtins,
        __package__=(spec.parent if spec else None),
        **{V.RUNTIME_NAME: RUNTIME},
    )
    nd_globals = found.get("<nd_globals>", frozenset())
    original_build_class = builtins.__build_class__

    def build_class(func: Any, name: str, *bases: Any, **kw: Any) -> Any:
        cls = original_build_class(func, name, *bases, **kw)
        if isinstance(cls, type) and cls.__module__ == "__main__" and getattr(cls, "__flow__", None):
            finalize_class(cls, found.get(cls.__qualname__), nd_globals)
        return cls

    saved_main, saved_argv = sys.modules.get("__main__"), sys.argv
    sys.modules["__main__"] = main
    sys.argv = [path, *argv]
    builtins.__build_class__ = build_class  # type: ignore[assignment]
    try:
        with _guard.loading(main.__dict__):
            exec(code, main.__dict__)
    finally:
        builtins.__build_class__ = original_build_class
        sys.argv = saved_argv
        if saved_main is not None:
            sys.modules["__main__"] = saved_main
