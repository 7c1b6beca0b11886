"""Shared fixtures: a fresh journal per test, flow source imported through the real hook, the CLI."""

from __future__ import annotations

import importlib
import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import transparent_de
from transparent_de import _api

_counter = itertools.count()


# --------------------------------------------------------------------------- journal backends
#
# Every test that takes `database` (or `engine`, built on it) runs on each backend with the same
# assertions: SQLite, and PostgreSQL on a throwaway cluster (tests/pg.py) started once per
# session, a schema of its own per test. Without server binaries the PostgreSQL runs are skipped
# with the reason. TDE_TEST_BACKENDS=sqlite (or =postgres) runs one of them only. A test marked
# `sqlite_only` (file modes, WAL, damaged files) runs on SQLite alone.

BACKENDS = [b for b in os.environ.get("TDE_TEST_BACKENDS", "sqlite,postgres").split(",") if b]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: the test is about the SQLite file itself")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        backend = params.params.get("database") if params is not None else None
        if backend == "postgres" and item.get_closest_marker("sqlite_only"):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """One PostgreSQL cluster for the session (skipped, with the reason, where none can run)."""
    import pg

    why = pg.unavailable()
    if why and os.environ.get("TDE_REQUIRE_POSTGRES"):  # CI: a missing server is a failure, not a skip
        pytest.fail(f"TDE_REQUIRE_POSTGRES is set but no PostgreSQL cluster can run here: {why}")
    if why:
        pytest.skip(f"PostgreSQL tests skipped: {why}")
    cluster = pg.Cluster()
    print(f"\n[postgres cluster started in {cluster.start_seconds:.2f}s at {cluster.dir}]")
    yield cluster
    cluster.close()


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh journal's database string: a file in tmp_path, or a schema of its own in Postgres."""
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_cluster").url())
    return str(tmp_path / "journal.db")


@pytest.fixture
def fresh_database(database: str, request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """More fresh journals on the test's backend: ``fresh_database("name")`` -> a database string."""

    def make(name: str) -> str:
        if database.startswith("postgresql://"):
            return str(request.getfixturevalue("pg_cluster").url())
        return str(tmp_path / f"{name}.db")

    return make


@pytest.fixture
def engine(database: str) -> Iterator[transparent_de.Engine]:
    """The default engine, on a fresh journal (process durability: fast), on each backend."""
    eng = transparent_de.configure(database=database, durability="process", poll_interval=0.02, park_after=0.2)
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


# --------------------------------------------------------------------------- the CLI

ROOT = Path(__file__).resolve().parent.parent

FLOWS = """
import os
import transparent_de


class Order:
    __flow__ = ("run", "approval", "boom", "crashy")

    def run(self, order_id, qty=1):
        order = self.load(order_id)
        return {"order": order_id, "total": self.price(order, qty)}

    def approval(self, who):
        x = self.load(who)
        ok = transparent_de.wait_for(self.confirm)
        return {"who": x, "ok": ok}

    def boom(self):
        self.load(1)
        raise ValueError("kaboom")

    def crashy(self, n):
        self.load(n)
        self.maybe_die()
        return n * 2

    def load(self, order_id):
        return {"id": order_id}

    def price(self, order, qty):
        return 12.5 * qty

    def confirm(self, answer):
        return answer

    def maybe_die(self):
        if os.environ.get("CLI_TEST_CRASH"):
            os._exit(3)
        return "alive"
"""


class CLI:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.db = tmp / "journal.db"
        pkg = tmp / "src" / "clitestflows"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "flows.py").write_text(textwrap.dedent(FLOWS))
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join([str(tmp / "src"), str(ROOT)])
        self.env["TRANSPARENT_DE_DB"] = str(self.db)
        self.env.pop("CLI_TEST_CRASH", None)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "transparent_de", *args]

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            env=env or self.env,
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def json(self, *args: str) -> Any:
        p = self(*args, "--json")
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            env=self.env,
            cwd=self.tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_for_flow(self, flow_id: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.db.exists():
                p = self("list", "--json")
                if p.returncode == 0:
                    for f in json.loads(p.stdout):
                        if f["flow_id"] == flow_id and f["steps"] >= 1:
                            return f  # type: ignore[no-any-return]
            time.sleep(0.2)
        raise AssertionError(f"flow {flow_id} did not appear")


@pytest.fixture
def tde(tmp_path: Path) -> CLI:
    return CLI(tmp_path)
