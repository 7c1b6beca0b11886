"""Small helpers shared by the tests (importable: tests/ is on sys.path under pytest)."""

from __future__ import annotations

import sqlite3
from typing import Any

import transparent_de


def query(engine: transparent_de.Engine, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Rows of ``sql`` run on the engine's journal through a connection of the test's own."""
    con = sqlite3.connect(engine.store.path)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()
