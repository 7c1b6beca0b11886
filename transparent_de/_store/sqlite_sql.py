"""The SQLite journal's SQL, loaded once: the schema and every named statement.

Both live in ``.sql`` files beside this module (``sqlite_schema.sql``, ``sqlite_queries.sql``)
so that the journal reads as a contract, for people and for any SQLite tool.
"""

from __future__ import annotations

import importlib.resources
import re

APPLICATION_ID = 0x54444531  # "TDE1"
SCHEMA_VERSION = 3


def _text(name: str) -> str:
    return importlib.resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def load_queries(text: str) -> dict[str, str]:
    """``-- name: key`` blocks of a .sql file -> {key: statement} (comment lines dropped)."""
    queries: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.M)[1:]:
        name, _, body = block.partition("\n")
        lines = [ln for ln in body.splitlines() if ln.strip() and not ln.lstrip().startswith("--")]
        queries[name.strip()] = "\n".join(lines)
    return queries


SCHEMA = _text("sqlite_schema.sql")


def load_migrations(text: str) -> dict[int, str]:
    """``-- migrate: N`` blocks -> {N: script that brings version N-1 to N}."""
    out: dict[int, str] = {}
    for block in re.split(r"^-- migrate: ", text, flags=re.M)[1:]:
        version, _, body = block.partition("\n")
        out[int(version)] = body
    return out


MIGRATIONS = load_migrations(_text("sqlite_migrations.sql"))

#: Every statement the SQLite store runs, by name. (The fuzz suite plants its engine bugs by
#: replacing entries here in forked children; nothing in the package can.)
Q = load_queries(_text("sqlite_queries.sql"))
