"""The pytest plugin of transparent_de (registered through the ``pytest11`` entry point).

* the fixture ``tde_engine``: the default engine on a temporary journal, closed afterwards;
* flow classes defined *in test modules* rewritten at collection time, without taking the
  module away from pytest's assertion rewriting (both rewrites compose).

Flows in your own package still need ``transparent_de.install("yourpkg")`` in
``conftest.py``, before the tests import them (docs/testing.md).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import _api
from ._engine import Engine
from ._hook import finalize_module
from ._trampoline import RUNTIME
from ._versions import RUNTIME_NAME


@pytest.fixture
def tde_engine(tmp_path: Path) -> Iterator[Engine]:
    """The default engine on a fresh journal in ``tmp_path`` (durability 'process': fast)."""
    eng = _api.configure(database=tmp_path / "journal.db", durability="process", poll_interval=0.02)
    try:
        yield eng
    finally:
        eng.close()
        _api._default = None


def pytest_collection_modifyitems(session: Any, config: Any, items: list[Any]) -> None:
    """Rewrite flow classes defined in collected test modules (their loader is pytest's)."""
    seen: set[int] = set()
    for item in items:
        mod = getattr(item, "module", None)
        if mod is None or id(mod) in seen:
            continue
        seen.add(id(mod))
        if any(
            inspect.isclass(v) and getattr(v, "__flow__", None) and v.__module__ == mod.__name__
            for v in vars(mod).values()
        ):
            mod.__dict__.setdefault(RUNTIME_NAME, RUNTIME)
            finalize_module(mod)
