"""Our own pyc cache in its corner cases, the debug dump, and the refusal of unknown interpreters."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import transparent_de
from transparent_de import _hook
from transparent_de import _versions as V
from transparent_de.errors import UnsupportedPythonError

SOURCE = b"""
class F:
    __flow__ = "run"

    def run(self, x):
        return self.step(x) + 1

    def step(self, x):
        return x * 2
"""


@pytest.fixture
def writable_bytecode(monkeypatch: pytest.MonkeyPatch) -> None:
    # PYTHONDONTWRITEBYTECODE=1 may be set here: without this no cache file is ever written.
    monkeypatch.setattr(sys, "dont_write_bytecode", False)


def _module(tmp_path: Path) -> Path:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    src = pkg / "flows.py"
    src.write_bytes(SOURCE)
    return src


def _rewritten(code: object) -> bool:
    """Does the compiled module hold a rewritten flow method (one that reads ``__tde__``)?"""
    stack = [code]
    while stack:
        c = stack.pop()
        if V.RUNTIME_NAME in getattr(c, "co_names", ()):
            return True
        stack += [k for k in getattr(c, "co_consts", ()) if hasattr(k, "co_names")]
    return False


def test_cache_is_keyed_by_rewriter_version(tmp_path: Path, writable_bytecode: None, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _module(tmp_path)
    pyc = Path(_hook.cache_path(str(src)))
    code = _hook.rewrite_source(SOURCE, str(src))
    assert _rewritten(code) and pyc.exists()
    first = pyc.read_bytes()
    assert _hook._read_cache(str(pyc), SOURCE) is not None  # a hit

    # A new rewriter format (or bytecode release, or capture table) changes the key: a miss,
    # then the file is rewritten with the new key.
    monkeypatch.setattr(_hook, "_cache_key", lambda: b"newer-fm")
    assert _hook._read_cache(str(pyc), SOURCE) is None
    assert _rewritten(_hook.rewrite_source(SOURCE, str(src)))
    assert pyc.read_bytes() != first
    assert pyc.read_bytes()[16:24] == b"newer-fm"


def test_unwritable_cache_dir_still_rewrites(tmp_path: Path, writable_bytecode: None) -> None:
    src = _module(tmp_path)
    (src.parent / "__pycache__").write_text("a file where the cache directory would go")
    code = _hook.rewrite_source(SOURCE, str(src))
    assert _rewritten(code)
    assert (src.parent / "__pycache__").is_file()  # untouched, and no temp files left behind
    assert sorted(p.name for p in src.parent.iterdir()) == ["__pycache__", "flows.py"]


def test_dont_write_bytecode_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    src = _module(tmp_path)
    assert _rewritten(_hook.rewrite_source(SOURCE, str(src)))
    assert not (src.parent / "__pycache__").exists()


def test_debug_rewrite_prints_dis_before_and_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TDE_DEBUG", "rewrite")
    src = _module(tmp_path)
    _hook.rewrite_source(SOURCE, str(src), cache=False)
    err = capsys.readouterr().err
    assert "--- transparent_de: F.run before" in err or "--- transparent_de: run before" in err
    before, _, after = err.partition("after")
    assert V.RUNTIME_NAME not in before and V.RUNTIME_NAME in after


def test_debug_off_prints_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("TDE_DEBUG", raising=False)
    _hook.rewrite_source(SOURCE, str(_module(tmp_path)), cache=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("version", "advice"),
    [((3, 9), r"Use CPython 3\.10 or newer"), ((3, 16), r"A newer transparent_de release may support it")],
)
def test_unknown_interpreter_is_refused_at_install(
    monkeypatch: pytest.MonkeyPatch, version: tuple[int, int], advice: str
) -> None:
    """The newest interpreter not supported (3.9) and the first not known (3.16) are refused."""
    monkeypatch.setattr(V, "PY", version)
    before = list(sys.meta_path)
    with pytest.raises(UnsupportedPythonError, match=r"supports CPython 3\.10, 3\.11, 3\.12, 3\.13, 3\.14, 3\.15; ") as info:
        transparent_de.install("anything")
    assert sys.meta_path == before  # nothing was hooked
    assert f"this is cpython {version[0]}.{version[1]} (" in str(info.value)
    assert info.match(advice)


def test_import_and_a_cache_hit_never_import_bytecode(tmp_path: Path) -> None:
    """``bytecode`` (15-20 ms to import) is needed only to rewrite: not to import us, nor on a hit."""
    import os
    import subprocess

    src = _module(tmp_path)
    (src.parent / "__init__.py").write_text("")
    script = (
        "import sys, transparent_de\n"
        "before = 'bytecode' in sys.modules\n"
        f"sys.path.insert(0, {str(tmp_path)!r}); transparent_de.install('pkg')\n"
        "import pkg.flows\n"
        "print(before, 'bytecode' in sys.modules, hasattr(pkg.flows.F, '__tde_spec__'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "TRANSPARENT_DE_CACHE")}

    def run() -> str:
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        return out.stdout.strip()

    assert run() == "False True True"  # a miss: the rewrite needs bytecode
    assert run() == "False False True"  # a hit: it does not
