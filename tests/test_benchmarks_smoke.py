"""The benchmark runner works (timings are never asserted)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_smoke_prints_a_table() -> None:
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "| workload |" in p.stdout
    assert "step cost, process" in p.stdout
    assert "SQLite" in p.stdout


def test_postgres_benchmark_smoke_prints_a_table() -> None:
    """benchmarks/postgres.py --smoke: its own durable cluster, every row once, small."""
    import pg

    why = pg.unavailable()
    if why and os.environ.get("TDE_REQUIRE_POSTGRES"):  # CI: a missing server is a failure, not a skip
        pytest.fail(f"TDE_REQUIRE_POSTGRES is set but no PostgreSQL cluster can run here: {why}")
    if why:
        pytest.skip(f"PostgreSQL benchmarks skipped: {why}")
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "postgres.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "| workload |" in p.stdout
    assert "fsync=on" in p.stdout
    for row in ("1. step, `full`", "1. step, `process`", "server transactions", "3. 2 worker", "4. recovery"):
        assert row in p.stdout, row
