"""Journal backends behind one interface (:class:`~.base.Store`), chosen by the database string.

``open_store(database)`` takes what users pass to ``configure(database=...)``,
``TRANSPARENT_DE_DB`` or ``--db``: a file path (SQLite), ``sqlite:///path``, or a URL of
another backend. A string is a URL only when it has a scheme (``name://``); an unknown
scheme is an error naming the ones we know, never a file of that name.
"""

from __future__ import annotations

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
        raise ValueError(
            f"{location!r}: the PostgreSQL journal is not part of this version of transparent_de; "
            "use a SQLite file path"
        )
    from .sqlite import SQLiteStore

    return SQLiteStore(location, durability, busy_timeout, readonly=readonly)


def inspect(database: str | os.PathLike[str]) -> Health:
    """What ``doctor`` reports about a journal, read without changing or refusing anything.

    Raises ``sqlite3.Error`` (or the backend's error) when the journal cannot be read at all.
    """
    backend, location = parse(database)
    if backend != "sqlite":
        raise ValueError(f"{location!r}: only SQLite journals can be inspected by this version")
    from .sqlite import inspect as inspect_sqlite

    return inspect_sqlite(location)
