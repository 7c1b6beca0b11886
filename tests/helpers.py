"""Small helpers shared by the tests (importable: tests/ is on sys.path under pytest)."""

from __future__ import annotations

import sqlite3
from typing import Any

import transparent_de


def is_postgres(engine_or_db: Any) -> bool:
    text = engine_or_db.database if isinstance(engine_or_db, transparent_de.Engine) else str(engine_or_db)
    return text.startswith(("postgresql://", "postgres://"))


def query(engine: transparent_de.Engine | str, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Rows of ``sql`` run on the journal through a connection of the test's own, on either backend.

    The SQL is written for SQLite (``?`` placeholders); on PostgreSQL the placeholders become
    ``%s`` and the connection's search_path is the journal's schema, so one statement serves both.
    """
    db = engine.database if isinstance(engine, transparent_de.Engine) else engine
    if is_postgres(db):
        import psycopg
        from psycopg import sql as pgsql

        from transparent_de._store.postgres_db import parse_url

        loc = parse_url(db)
        with psycopg.connect(loc.conninfo, autocommit=True) as con:
            con.execute(pgsql.SQL("SET search_path TO {}").format(pgsql.Identifier(loc.schema)))
            cur = con.execute(sql.replace("?", "%s"), params)
            return [tuple(r) for r in cur.fetchall()] if cur.description else []
    con = sqlite3.connect(db)
    try:
        rows = con.execute(sql, params).fetchall()
        con.commit()
        return rows
    finally:
        con.close()
