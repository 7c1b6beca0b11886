"""The per-version facts of ``_versions`` against the running compiler, and what 3.14+ changed.

Every test here runs on every supported interpreter. Where the compiler of this interpreter
does not emit the construct a test is about (``LOAD_FAST_BORROW`` before 3.14, ...), the
differential half still runs and the half that pins the instruction is skipped with a reason,
so a test can never pass without having seen what it claims to cover.
"""

from __future__ import annotations

import dis
import sys
import textwrap
import time
import types
import warnings
from typing import Any

import pytest
from bytecode import Bytecode, Instr
from test_rewrite import PRELUDE, four_ways, plain_module

from transparent_de import _versions as V

FACTS = V.facts()


def _compile(source: str) -> types.CodeType:
    """Compiled as an import would: not with this file's ``from __future__ import annotations``."""
    return compile(textwrap.dedent(source), "m", "exec", dont_inherit=True)


def _instrs(code: types.CodeType) -> list[Instr]:
    return [i for i in Bytecode.from_code(code) if isinstance(i, Instr)]


def _all_codes(code: types.CodeType) -> list[types.CodeType]:
    out = [code]
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            out += _all_codes(c)
    return out


def _entry_code(cls: type, name: str = "run") -> types.CodeType:
    fn = cls.__dict__[name]
    return getattr(fn, "__tde_entry__", fn).__code__  # type: ignore[no-any-return]


def _before_rewritten_sites(code: types.CodeType) -> list[str]:
    """The instruction just before each ``LOAD_GLOBAL __tde__`` of a rewritten method."""
    ins = _instrs(code)
    return [
        ins[k - 1].name
        for k, i in enumerate(ins)
        if i.name == "LOAD_GLOBAL" and V.global_load(i) is not None and V.global_load(i)[0] == V.RUNTIME_NAME  # type: ignore[index]
    ]


# --------------------------------------------------------------------------- the table


def test_supported_range_is_310_to_315_and_includes_this_interpreter() -> None:
    assert V.SUPPORTED == ((3, 10), (3, 11), (3, 12), (3, 13), (3, 14), (3, 15))
    assert sys.version_info[:2] in V.SUPPORTED


def test_facts_describe_what_this_compiler_emits() -> None:
    """Each fact of this interpreter's row, checked on code its compiler just produced."""
    src = textwrap.dedent(
        """
        import time
        class C:
            def m(self, x: int):
                a = self.step(x)
                b = time.time()
                return self.step, a, b
        """
    )
    mod = _compile(src)
    codes = {c.co_name: c for c in _all_codes(mod)}
    ins = _instrs(codes["m"])
    names = [i.name for i in ins]
    # The method form of `self.step(x)`.
    if FACTS.load_method:
        assert "LOAD_METHOD" in names
    else:
        assert "LOAD_METHOD" not in names
        assert next(i.arg for i in ins if i.name == "LOAD_ATTR") == (True, "step")
    assert all(V.attr_load(i) is not None for i in ins if i.name in ("LOAD_ATTR", "LOAD_METHOD"))
    # LOAD_GLOBAL's argument, and where `time.time()` puts its NULL slot.
    glob = next(i for i in ins if i.name == "LOAD_GLOBAL")
    assert isinstance(glob.arg, tuple) is FACTS.global_null_bit
    k = names.index("LOAD_GLOBAL")
    window = names[k : k + 3]
    if FACTS.null_slot == "after":
        assert window == ["LOAD_GLOBAL", "LOAD_ATTR", "PUSH_NULL"], window
    else:
        assert "PUSH_NULL" not in window
    # The call form, and the swap our templates emit.
    assert {"CALL_FUNCTION": "CALL_METHOD", "PRECALL": "PRECALL", "CALL": "CALL"}[FACTS.call] in names
    assert FACTS.swap in dis.opmap
    assert ("ROT_TWO" in dis.opmap) is (FACTS.swap == "ROT_TWO")
    # Borrowed loads: the receiver of `self.step` is borrowed exactly where the row says so.
    assert names[names.index("LOAD_ATTR" if not FACTS.load_method else "LOAD_METHOD") - 1] == (
        "LOAD_FAST_BORROW" if FACTS.borrowed_loads else "LOAD_FAST"
    )
    # Annotation scopes: `x: int` of `m` is a separate __annotate__ code object on 3.14+.
    annotate = [c for c in _all_codes(mod) if c.co_name == "__annotate__"]
    assert bool(annotate) is FACTS.annotation_scopes
    assert all(V.is_annotation_scope(c) for c in annotate)
    assert not any(V.is_annotation_scope(c) for c in _all_codes(mod) if c.co_name != "__annotate__")


@pytest.mark.parametrize("version", [(3, 9), (3, 16)])
def test_a_version_without_a_row_gets_no_facts(
    monkeypatch: pytest.MonkeyPatch, version: tuple[int, int]
) -> None:
    """The templates refuse rather than fall back to a neighbouring version's row."""
    from transparent_de.errors import UnsupportedPythonError

    monkeypatch.setattr(V, "PY", version)
    monkeypatch.setattr(V, "_FACTS", V.VERSIONS.get(version))
    with pytest.raises(UnsupportedPythonError, match=rf"this is cpython {version[0]}\.{version[1]} "):
        V.method_template(Instr, "s:x@f:1", None)


# --------------------------------------------------------------------------- differential


def test_borrowed_receivers_and_a_receiver_rebound_mid_call(engine: Any, flow_module: Any) -> None:
    """Receivers loaded as borrowed references (3.14+) stay alive until the untouched call.

    ``me.step((me := None) or ...)`` rebinds the receiver's local while the receiver is on the
    stack; ``Holder().step`` has no reference but the local. Both must behave as plain code.
    """
    body = """
    import gc, weakref

    class Holder:
        def step(self, x):
            gc.collect()
            LOG.append(("holder", x))
            return x + 1000

    class F:
        __flow__ = "run"

        def run(self, n):
            out = []
            for i in range(n):
                out.append(self.step(i))
            me = self
            out.append(me.step((me := None) or 7))
            h = Holder()
            ref = weakref.ref(h)
            out.append(h.step((h := None) or 8))
            out.append(ref() is None)
            a, b = 5, self
            out.append(max(a, b.step(9)))
            return out

        def step(self, x):
            LOG.append(("step", x))
            return x * 2
    """
    result, _log, names = four_ways(engine, flow_module, body, (3,))
    assert result == [0, 2, 4, 14, 1008, True, 18]
    assert names == ["step"] * 5
    before = _before_rewritten_sites(_entry_code(flow_module(PRELUDE + textwrap.dedent(body)).F))
    if FACTS.borrowed_loads:
        assert "LOAD_FAST_BORROW" in before, before
    else:
        assert "LOAD_FAST_BORROW" not in before


def test_small_and_large_integer_arguments(engine: Any, flow_module: Any) -> None:
    body = """
    class F:
        __flow__ = "run"

        def run(self):
            return [self.step(0), self.step(255), self.step(256), self.step(-1), self.step(10**20), self.step(x=3)]

        def step(self, x):
            LOG.append(x)
            return x
    """
    result, _, names = four_ways(engine, flow_module, body)
    assert result == [0, 255, 256, -1, 10**20, 3]
    assert len(names) == 6
    code = _compile(body)
    ops = {i.name for c in _all_codes(code) for i in _instrs(c)}
    assert ("LOAD_SMALL_INT" in ops) is FACTS.borrowed_loads  # both new in 3.14


ANNOTATED = """
import time

def annotation_is(obj, key, expected):
    # Module level, so not flow code: `time.time` here is the real function. On 3.14+ the
    # annotations are evaluated anew (``__annotations__`` is cached after its first use).
    annotate = getattr(obj, "__annotate__", None)
    value = (annotate(1) if annotate is not None else obj.__annotations__)[key]
    return value is {"time": time.time, "step": Other.step}[expected]

class F:
    __flow__ = "run"
    clock: time.time = None
    step_ref: Other.step = None

    def run(self):
        return [
            annotation_is(F, "clock", "time"),
            annotation_is(F, "step_ref", "step"),
            annotation_is(F.step, "when", "time"),
            annotation_is(F.step, "return", "step"),
            self.step(1),
        ]

    def step(self, x, when: time.time = None) -> Other.step:
        LOG.append(x)
        return x
"""


def test_annotations_are_evaluated_as_plain_code_inside_a_flow(engine: Any, flow_module: Any) -> None:
    """Deferred annotations (3.14+) are their own functions: they are never rewritten.

    A rewritten ``clock: time.time`` evaluated inside a flow would be a capturing wrapper, not
    ``time.time``; on 3.10-3.13 annotations are evaluated in the class body and never were.
    """
    result, _, names = four_ways(engine, flow_module, ANNOTATED)
    assert result == [True, True, True, True, 1]
    assert names == ["step"]
    mod = flow_module(PRELUDE + textwrap.dedent(ANNOTATED))
    scopes = [
        c for c in _all_codes(_compile(PRELUDE + textwrap.dedent(ANNOTATED))) if V.is_annotation_scope(c)
    ]
    if not FACTS.annotation_scopes:
        assert scopes == []
        return
    assert len(scopes) == 2  # the class's and step's
    # Compiled by the hook, the annotation functions kept their original names.
    annotate = mod.F.step.__annotate__
    assert V.RUNTIME_NAME not in annotate.__code__.co_names
    assert annotate(1) == {"when": time.time, "return": mod.Other.step}


FINALLY = """
class F:
    __flow__ = "run"

    def run(self, n):
        out = []
        for i in range(n):
            try:
                if i == 1:
                    raise ValueError(i)
                out.append(self.step(i))
            finally:
                out.append(self.step(100 + i))
                if i == 1:
                    continue  # drops the pending ValueError
                if i == 3:
                    break
        return out + [self.last()]

    def last(self):
        try:
            return self.step(-1)
        finally:
            return self.step(-2)

    def step(self, x):
        LOG.append(x)
        return x
"""


def test_return_break_continue_in_finally(engine: Any, flow_module: Any) -> None:
    """PEP 765 (3.14+): still legal, now a SyntaxWarning; the hook warns exactly as a plain compile."""
    with warnings.catch_warnings(record=True) as plain_warnings:
        warnings.simplefilter("always")
        plain_module(PRELUDE + textwrap.dedent(FINALLY))
    with warnings.catch_warnings(record=True) as hooked_warnings:
        warnings.simplefilter("always")
        mod = flow_module(PRELUDE + textwrap.dedent(FINALLY))

    def syntax(ws: list[warnings.WarningMessage]) -> list[tuple[str, int]]:
        return [(str(w.message), w.lineno) for w in ws if issubclass(w.category, SyntaxWarning)]

    assert syntax(hooked_warnings) == syntax(plain_warnings)
    assert all(w.filename == mod.__file__ for w in hooked_warnings if issubclass(w.category, SyntaxWarning))
    if FACTS.annotation_scopes:  # the 3.14 release, where PEP 765 landed
        assert [m for m, _ in syntax(plain_warnings)] == [
            "'continue' in a 'finally' block",
            "'break' in a 'finally' block",
            "'return' in a 'finally' block",
        ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        result, _, names = four_ways(engine, flow_module, FINALLY, (6,))
    # i=1 raises and its `finally` continues (the exception is dropped), i=3's breaks out of
    # the loop, and the step `last` returns from its `finally` (its own calls run plainly).
    assert result == [0, 100, 101, 2, 102, 3, 103, -2]
    assert names == ["step"] * 7 + ["last"]


@pytest.mark.skipif(
    not FACTS.template_strings, reason="template strings (PEP 750) and `except A, B` (PEP 758) are 3.14+"
)
def test_template_strings_and_unparenthesized_except(engine: Any, flow_module: Any) -> None:
    """t-strings hold BUILD_INTERPOLATION, which `bytecode` cannot round-trip: see hide_interpolations."""
    body = """
    class F:
        __flow__ = "run"

        def run(self):
            w = 6
            t = t"a{self.step(1)}b{self.step(2)!r:>4}c{w!s}{w!a}{w=}{self.step(3):{w}}"
            try:
                self.boom()
            except KeyError, ValueError:
                caught = self.step(4)
            parts = [(i.value, i.expression, i.conversion, i.format_spec) for i in t.interpolations]
            return [t.strings, parts, caught, [t"{i!r}".values for i in range(2)]]

        def boom(self):
            raise ValueError("x")

        def step(self, x):
            LOG.append(x)
            return x
    """
    result, _, names = four_ways(engine, flow_module, body)
    assert result[0] == ("a", "b", "c", "", "w=", "", "")
    assert result[1] == [
        (1, "self.step(1)", None, ""),
        (2, "self.step(2)", "r", ">4"),
        (6, "w", "s", ""),
        (6, "w", "a", ""),
        (6, "w", "r", ""),
        (3, "self.step(3)", None, "6"),
    ]
    assert result[2:] == [4, [(0,), (1,)]]
    assert names == ["step", "step", "step", "boom", "step"]
    code = _entry_code(flow_module(PRELUDE + textwrap.dedent(body)).F)
    ops = [i.opname for c in _all_codes(code) for i in dis.get_instructions(c)]
    assert ops.count("BUILD_INTERPOLATION") == 7 and V.RUNTIME_NAME in code.co_names


def test_yield_from_in_a_rewritten_generator(flow_module: Any, engine: Any) -> None:
    """3.15 dropped GET_YIELD_FROM_ITER; a rewritten generator (a helper of the entry) delegates
    as before, plainly and journaled."""
    body = """
    class F:
        __flow__ = "run"

        def run(self, n):
            return list(self._gen(n))

        def _gen(self, n):
            yield from (self.step(i) for i in range(n))
            yield from [self.step(-1)]

        def step(self, x):
            LOG.append(x)
            return x * 3
    """
    source = PRELUDE + textwrap.dedent(body)
    plain, mod = plain_module(source), flow_module(source)
    assert plain.F().run(3) == mod.F().run(3) == [0, 3, 6, -3]
    assert plain.LOG == mod.LOG
    assert [s.method_name for s in engine.steps(engine.flows()[0].flow_id)] == ["run", "step", "step", "step", "step"]
