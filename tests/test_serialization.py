"""Values in the journal: framing, codecs, and fingerprints that are canonical and fast."""

from __future__ import annotations

import os
import subprocess
import sys
from types import CodeType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transparent_de import _serialization as S

flat = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.binary(max_size=8)


@given(
    args=st.lists(flat, max_size=5).map(tuple), kwargs=st.dictionaries(st.text(max_size=5), flat, max_size=4)
)
def test_flat_arguments_take_the_fast_path_and_ignore_keyword_order(args, kwargs):
    assert S._fast_call_args((args, kwargs)) is not None
    reordered = dict(reversed(list(kwargs.items())))
    assert S.fingerprint((args, kwargs)) == S.fingerprint((args, reordered))


def test_nested_values_take_the_general_walk():
    assert S._fast_call_args(((1, [2]), {})) is None
    assert S._fast_call_args(((1,), {"k": (2,)})) is None


@pytest.mark.parametrize(
    "value",
    [
        "((1, 'a', b'x', 2.5, None, True), {'k': 'v', 'j': 3})",
        "(({'b': {3, 1, 2}, 'a': frozenset({'x', 'y'})},), {})",
    ],
)
def test_fingerprint_is_stable_across_processes_and_hash_seeds(value):
    code = f"from transparent_de._serialization import fingerprint; print(fingerprint({value}))"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outs) == 1


def test_fingerprint_ignores_dict_and_set_order():
    a = {"x": 1, "y": {3, 2, 1}}
    b = {"y": {1, 2, 3}, "x": 1}
    assert S.fingerprint(((a,), {})) == S.fingerprint(((b,), {}))
    assert S.fingerprint(((1,), {"a": 1, "b": 2})) == S.fingerprint(((1,), {"b": 2, "a": 1}))
    assert S.fingerprint(((1,), {})) != S.fingerprint(((2,), {}))


def test_frame_round_trip_and_codec():
    blob = S.encode({"a": 1})
    assert S.codec_of(blob) == "pickle" and S.decode(blob) == {"a": 1}
    lam = S.encode(lambda x: x + 1)  # only dill can carry a lambda
    assert S.codec_of(lam) == "dill" and S.decode(lam)(1) == 2


CODE_VALUES = """
import functools

def outer(k):
    def scaled(y, *, by=2):
        return y * k * by
    return scaled

def local_class():
    class Point:
        def __init__(self, x):
            self.x = x
        def double(self):
            return Point(self.x * 2)
    return Point(3)

VALUES = [lambda x: x + 1, outer(5), functools.partial(outer(1), by=3), local_class()]

def check(vs):
    return [vs[0](1), vs[1](2), vs[2](4), vs[3].double().x, type(vs[3]).__qualname__]
"""


def test_values_holding_code_round_trip_in_a_fresh_process(tmp_path):
    """Lambdas, closures and local classes (code pickled by value, dill) load in another process."""
    (tmp_path / "codevals.py").write_text(CODE_VALUES)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    write = "import codevals, sys; from transparent_de import _serialization as S; sys.stdout.buffer.write(S.encode(codevals.VALUES))"
    blob = subprocess.run([sys.executable, "-c", write], env=env, capture_output=True, check=True).stdout
    assert S.codec_of(blob) == "dill"
    (tmp_path / "codevals.py").write_text(CODE_VALUES.replace("return y * k * by", "return 0"))  # by value, not by name
    read = "import codevals, sys; from transparent_de import _serialization as S; print(codevals.check(S.decode(sys.stdin.buffer.read())))"
    out = subprocess.run([sys.executable, "-c", read], env=env, input=blob, capture_output=True, check=True)
    assert out.stdout.decode().strip() == "[2, 20, 12, 6, 'local_class.<locals>.Point']"


def test_code_compiled_by_another_python_is_refused_not_loaded(monkeypatch):
    """Bytecode of one CPython minor version crashes another: such a value gets a clear error."""
    from transparent_de.errors import UnsupportedPythonError

    monkeypatch.setattr(S, "_CODE_VERSION", ("3.9", b"a\r\r\n"))
    blob = S.encode(lambda x: x + 1)
    monkeypatch.undo()
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    where = {"path": "j.db", "flow_id": "f-1", "step": 4}
    with pytest.raises(UnsupportedPythonError, match=rf"flow f-1, step 4: .* compiled by CPython 3\.9; this is CPython {here}") as info:
        S.decode(blob, where=lambda: where)
    assert (info.value.flow_id, info.value.step, info.value.path) == ("f-1", 4, "j.db")
    assert S.decode(S.encode([1, "plain data"])) == [1, "plain data"]  # data is not affected


@pytest.mark.skipif(hasattr(CodeType, "co_lnotab"), reason="CPython 3.15 removed co_lnotab; before it dill pickles code itself")
def test_dill_alone_cannot_pickle_functions_where_co_lnotab_is_gone():
    """Why our codec stores code objects itself: dill 0.4.1 reads the removed ``co_lnotab``."""
    import dill

    if dill.__version__ != "0.4.1":
        pytest.skip(f"dill {dill.__version__} may handle CPython 3.15 itself")
    with pytest.raises(AttributeError, match="co_lnotab"):
        dill.dumps(lambda: 0)
    assert S.decode(S.encode(lambda: 7))() == 7


STABLE = (
    "import datetime, enum, math, pathlib\n"
    "class Color(enum.Enum):\n    RED = 1\n"
    "VALUE = ((Color.RED, datetime.datetime(2026, 10, 7, 9, 30, tzinfo=datetime.timezone.utc), "
    "datetime.date(2026, 1, 2), datetime.timedelta(hours=3), datetime.timezone(datetime.timedelta(hours=2)), "
    "pathlib.PurePosixPath('/srv/a'), pathlib.Path('/tmp/x'), math), {'when': datetime.time(9, 30)})\n"
    "from transparent_de._serialization import fingerprint\nprint(fingerprint(VALUE))\n"
)


def _interpreters() -> list[str]:
    import glob

    root = os.path.expanduser(os.environ.get("PYENV_ROOT", "~/.pyenv"))
    found = [sys.executable]
    for minor in ("3.10", "3.11", "3.12", "3.13"):
        found += sorted(glob.glob(f"{root}/versions/{minor}.*/bin/python{minor}"))[-1:]
    return found


def test_fingerprints_of_version_dependent_types_agree_across_interpreters():
    """Enum members, aware datetimes, timezones, paths and modules: their state differs between
    CPython versions, their fingerprint must not (a journal resumed by another version)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    outs = {}
    for py in _interpreters():
        env = {**os.environ, "PYTHONPATH": here}
        p = subprocess.run([py, "-c", STABLE], env=env, capture_output=True, text=True)
        if p.returncode == 0:  # an interpreter without bytecode/dill installed cannot import us: skip it
            outs[py] = p.stdout.strip()
        elif py == sys.executable:
            raise AssertionError(p.stderr)
    assert len(set(outs.values())) == 1, outs


def test_fingerprints_see_inside_dicts_sets_and_frozensets():
    """Containers are fingerprinted by their contents, in a canonical order (a mutation run
    found no test telling ``{"a": 1}`` from ``{"b": 2}`` apart)."""
    assert S.fingerprint({"a": 1}) != S.fingerprint({"b": 1}) != S.fingerprint({"b": 2})
    assert S.fingerprint({"x", "y"}) != S.fingerprint({"x", "z"})
    assert S.fingerprint(frozenset({1})) != S.fingerprint(frozenset({2}))
    assert S.fingerprint({"b": [1], "a": {2}}) == S.fingerprint({"a": {2}, "b": [1]})
    assert S.fingerprint({"x", "y", "z"}) == S.fingerprint(set(reversed(["x", "y", "z"])))
