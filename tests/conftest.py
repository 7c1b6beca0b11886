"""Shared fixtures: a fresh journal per test and a way to import flow source through the real hook."""

from __future__ import annotations

import importlib
import itertools
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

import transparent_de
from transparent_de import _api

_counter = itertools.count()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[transparent_de.Engine]:
    """The default engine, on a journal in this test's tmp dir (process durability: fast)."""
    eng = transparent_de.configure(
        database=tmp_path / "journal.db", durability="process", poll_interval=0.02, park_after=0.2
    )
    yield eng
    eng.close()
    _api._default = None


@pytest.fixture
def flow_module(tmp_path: Path) -> Iterator[Callable[[str], ModuleType]]:
    """Write source into a fresh package under tmp_path and import it through the hook."""
    handles = []
    added: list[str] = []

    def load(source: str, name: str | None = None) -> ModuleType:
        pkg = f"tdeflows{next(_counter)}"
        root = tmp_path / "src"
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("")
        (root / pkg / f"{name or 'flows'}.py").write_text(textwrap.dedent(source))
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
            added.append(str(root))
        handles.append(transparent_de.install(pkg))
        importlib.invalidate_caches()
        return importlib.import_module(f"{pkg}.{name or 'flows'}")

    yield load
    for h in handles:
        h.uninstall()
    for p in added:
        sys.path.remove(p)
