"""Journal backends behind one interface (:class:`~.base.Store`), chosen by the database string.

``open_store(database)`` takes what users pass to ``configure(database=...)``,
``TRANSPARENT_DE_DB`` or ``--db``: a file path (SQLite), ``sqlite:///path``, or a URL of
another backend. A string is a URL only when it has a scheme (``name://``); an unknown
scheme is an error naming the ones we know, never a file of that name.
"""

from __future__ import annotations

import contextlib
import os
import re

from .base import Health, Store

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.S)
SCHEMES = ("sqlite", "postgresql", "postgres")


def parse(database: str | os.PathLike[str]) -> tuple[str, str]:
    """``(backend, location)``: ``("sqlite", path)`` or ``("postgresql", url)``."""
    text = os.fspath(database)
    m = _URL.match(text)
    if m is None:
        return "sqlite", text
    scheme, rest = m.group(1).lower(), m.group(2)
    if scheme == "sqlite":
        if not rest:
            raise ValueError("sqlite:// needs a path: sqlite:///absolute/path.db or sqlite://relative.db")
        return "sqlite", rest
    if scheme in ("postgresql", "postgres"):
        return "postgresql", text
    raise ValueError(
        f"unknown journal URL scheme {scheme!r} in {text!r}: use a file path, sqlite:///path, "
        "or postgresql://user@host/db"
    )


def open_store(
    database: str | os.PathLike[str],
    durability: str = "full",
    busy_timeout: float = 10.0,
    readonly: bool = False,
) -> Store:
    backend, location = parse(database)
    if backend == "postgresql":
        _need_psycopg()
        from .postgres import PostgresStore

        return PostgresStore(location, durability, busy_timeout, readonly=readonly)
    from .sqlite import SQLiteStore

    return SQLiteStore(location, durability, busy_timeout, readonly=readonly)


def inspect(database: str | os.PathLike[str]) -> Health:
    """What ``doctor`` reports about a journal, read without changing or refusing anything.

    Raises ``sqlite3.Error`` (or the backend's error) when the journal cannot be read at all.
    """
    backend, location = parse(database)
    if backend == "postgresql":
        _need_psycopg()
        from .postgres import inspect as inspect_postgres

        return inspect_postgres(location)
    from .sqlite import inspect as inspect_sqlite

    return inspect_sqlite(location)


def exists(database: str | os.PathLike[str]) -> bool:
    """Is there a journal at ``database`` (a file; a schema of ours)? Creates nothing."""
    backend, location = parse(database)
    if backend == "postgresql":
        _need_psycopg()
        from .postgres import exists as exists_postgres

        return exists_postgres(location)
    return os.path.exists(location)


def display(database: str | os.PathLike[str]) -> str:
    """The database string for messages: an absolute path, or a URL without its password."""
    backend, location = parse(database)
    if backend == "postgresql":
        _need_psycopg()
        from .postgres_db import parse_url

        return parse_url(location).display
    return os.path.abspath(location)


def schema_sql(database: str | os.PathLike[str]) -> str:
    """The SQL that creates this journal's schema, for a DBA to review or run by hand."""
    backend, location = parse(database)
    if backend == "postgresql":
        from .postgres_db import parse_url, schema_script

        return schema_script(parse_url(location).schema)
    from .sqlite_sql import APPLICATION_ID, SCHEMA, SCHEMA_VERSION

    return f"{SCHEMA.strip()}\nPRAGMA application_id = {APPLICATION_ID};\nPRAGMA user_version = {SCHEMA_VERSION};\n"


def sibling(database: str | os.PathLike[str], name: str) -> str:
    """Another journal beside ``database``: a file ``name.db`` in its folder, or, on PostgreSQL,
    the schema ``<schema>_<name>`` of the same database (crash sweeps make one per crash point)."""
    backend, location = parse(database)
    if backend == "postgresql":
        _need_psycopg()
        from .postgres import with_schema

        return with_schema(location, name)
    return os.path.join(os.path.dirname(os.path.abspath(location)), f"{name}.db")


def drop(database: str | os.PathLike[str]) -> None:
    """Delete a journal made by :func:`sibling` (its file, or its schema), if it exists."""
    backend, location = parse(database)
    if backend == "postgresql":
        _need_psycopg()
        from .postgres import drop_schema

        drop_schema(location)
        return
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(location + suffix)


def _need_psycopg() -> None:
    """The PostgreSQL backend, imported only when a URL asks for it (psycopg is an extra)."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"a postgresql:// journal needs psycopg 3 and psycopg_pool, which are not installed ({exc}). "
            "Install them with: pip install 'transparent-de[postgres]'"
        ) from None
