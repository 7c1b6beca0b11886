"""The pytest plugin of transparent_de (registered through the ``pytest11`` entry point).

* the fixture ``tde_engine``: the default engine on a temporary journal, closed afterwards
  (a SQLite file in ``tmp_path``, or, with ``--tde-database postgresql://...``, a schema of
  its own in that database, dropped afterwards: the same tests on the backend you deploy);
* flow classes defined *in test modules* rewritten at collection time, without taking the
  module away from pytest's assertion rewriting (both rewrites compose).

Flows in your own package still need ``transparent_de.install("yourpkg")`` in
``conftest.py``, before the tests import them (docs/testing.md).
"""

from __future__ import annotations

import inspect
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import _api, _store
from ._engine import Engine
from ._hook import finalize_module
from ._trampoline import RUNTIME
from ._versions import RUNTIME_NAME


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("transparent_de")
    group.addoption(
        "--tde-database",
        default=None,
        help="journal for the tde_engine fixture: a postgresql:// URL gives each test a schema of "
        "its own there (dropped afterwards); default: a SQLite file in the test's tmp_path "
        "(also settable as the ini option tde_database or TRANSPARENT_DE_TEST_DB)",
    )
    parser.addini("tde_database", "default of --tde-database", default="")


def pytest_configure(config: Any) -> None:
    base = _test_database(config)
    if base and _store.parse(base)[0] != "postgresql":
        raise pytest.UsageError(
            f"--tde-database / tde_database / TRANSPARENT_DE_TEST_DB must be a postgresql:// URL, not "
            f"{base!r} (without it, each test gets a SQLite journal in its tmp_path)"
        )


def _test_database(config: Any) -> str:
    return str(
        config.getoption("tde_database") or config.getini("tde_database") or os.environ.get("TRANSPARENT_DE_TEST_DB", "")
    )


@pytest.fixture
def tde_engine(request: Any, tmp_path: Path) -> Iterator[Engine]:
    """The default engine on a fresh journal (durability 'process': fast), closed afterwards.

    A fresh journal per test, whatever the backend, so tests never see each other's flows;
    on PostgreSQL that is a schema beside the configured one, so the configured database
    needs no cleaning and parallel test runs do not collide.
    """
    base = _test_database(request.config)
    database: str | Path = tmp_path / "journal.db"
    if base:
        database = _store.sibling(base, "test_" + uuid.uuid4().hex[:12])
    eng = _api.configure(database=database, durability="process", poll_interval=0.02)
    try:
        yield eng
    finally:
        eng.close()
        _api._default = None
        if isinstance(database, str):
            _store.drop(database)


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
