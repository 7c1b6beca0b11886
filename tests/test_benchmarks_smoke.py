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


def test_async_benchmark_quick_prints_every_row() -> None:
    """benchmarks/async_flows.py --quick: each workload once, small (DBOS only if its venv is cached)."""
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "async_flows.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "| workload |" in p.stdout
    for row in (
        "1. step cost, process",
        "1. step cost, full",
        "1. syscalls per step",
        "2. 50 flows x 4 steps of 10 ms I/O, full: steps/s",
        "against our own 50 threads",
        "engine's default pool",
        "3. loop lateness, 1 ms ticker, idle loop",
        "writes on the loop: ",
        "4. ",
        "5. 200 async flows asleep",
        "left PENDING, unowned, resumable: 200",
    ):
        assert row in p.stdout, row
