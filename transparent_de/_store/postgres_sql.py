"""The PostgreSQL journal's SQL, loaded once: the schema, its migrations, every named statement.

They live in ``.sql`` files beside this module (``postgres_schema.sql``, ``postgres_queries.sql``,
``postgres_migrations.sql``), in the format of the SQLite ones, so that each backend's SQL
reads as one contract and a DBA can review it.
"""

from __future__ import annotations

import importlib.resources

from .sqlite_sql import APPLICATION_ID, load_migrations, load_queries

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA", "SCHEMA_VERSION", "Q"]

#: History: 1 — first version (the SQLite journal's version 2 tables and columns, and the
#: ``tde_fence`` / ``tde_consume`` functions); 2 — ``execution_log.lineage`` (an async
#: flow's call identity, docs/async.md), as the SQLite journal's version 3.
SCHEMA_VERSION = 2


def _text(name: str) -> str:
    return importlib.resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


SCHEMA = _text("postgres_schema.sql")
MIGRATIONS = load_migrations(_text("postgres_migrations.sql"))
Q = load_queries(_text("postgres_queries.sql"))
