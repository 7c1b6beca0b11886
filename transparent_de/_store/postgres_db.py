"""The PostgreSQL journal database: the URL, the pool, the schema, fenced write transactions.

:class:`PostgresDB` is to :class:`~.postgres.PostgresStore` what ``SQLiteFile`` is to the SQLite
store. Design points (docs/postgres.md has the user's side):

* **The URL.** ``postgresql://user:password@host:port/db?schema=name&pool_size=n`` and every
  other form libpq accepts (``?host=/run/postgresql`` for a socket, ``sslmode=``...). ``schema``
  (default ``transparent_de``) and ``pool_size`` (default 8) are ours and are taken out before
  the rest goes to libpq. :attr:`PostgresDB.display` is the URL without its password, for messages.
* **The schema** lives in a Postgres schema of its own. A writer creates or migrates it in one
  transaction under ``pg_advisory_xact_lock`` (processes starting together on a fresh database
  create it once); a schema that holds tables but no ``journal_meta`` is someone else's and is
  refused, as is a newer version. A read-only store never creates anything.
* **Connections** come from a ``psycopg_pool.ConnectionPool`` (autocommit; each transaction is
  an explicit ``BEGIN ... COMMIT``). Each connection sets once: ``search_path`` to our schema,
  ``synchronous_commit`` (``on`` for ``durability="full"``: a commit returns once the server's
  WAL is flushed; ``off`` for ``"process"``), ``lock_timeout`` and
  ``idle_in_transaction_session_timeout`` (the busy timeout: a process stopped inside a
  transaction must not hold its flows' rows for ever), and
  ``default_transaction_read_only`` for read-only stores (the server refuses their writes too).
* **One round trip per commit.** ``BEGIN``, the fence, the statements and ``COMMIT`` go in one
  pipeline. The fence (``tde_fence``) and a conditional signal take (``tde_consume``) raise on
  the server, so a lost lease aborts the transaction without the client having to look at a
  row count first. Only while a crash plan is installed (tests, fuzzing) does a commit stop
  before ``COMMIT`` to call ``_faults.point(label)``, as the SQLite store does.
* **Failures.** A dropped connection, a server restart, a pool that cannot connect: the
  operation raises :class:`~transparent_de.errors.JournalIOError`, the transaction is rolled back
  on the server, and the engine unwinds the flow as after a crash (it is resumed later). A
  read is idempotent and is tried once more on a fresh connection first; the pool is checked,
  so that the other broken connections are dropped at once rather than one failure at a time.
* **fork()**: a pool made by another pid is never used (its sockets are the parent's); the
  child opens its own, lazily, and leaves the parent's untouched (psycopg closes a connection
  only in the pid that opened it).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg_pool
from psycopg import sql

from .. import _clock, _faults
from ..errors import ForeignDatabaseError, JournalIOError, SchemaTooNewError
from .base import Conflict, Fence, LeaseLost
from .postgres_sql import APPLICATION_ID, MIGRATIONS, SCHEMA, SCHEMA_VERSION, Q

DEFAULT_SCHEMA = "transparent_de"
DEFAULT_POOL_SIZE = 8
_LEASE_LOST = "TD001"  # raised by tde_fence
_CONSUMED = "TD002"  # raised by tde_consume
_OURS = ("schema", "pool_size")

#: A statement of a transaction: SQL and its parameters (a list of tuples: executemany).
Statement = tuple[str, "tuple[Any, ...] | list[tuple[Any, ...]]"]


@dataclass(frozen=True)
class Location:
    """A parsed ``postgresql://`` URL."""

    conninfo: str  # for libpq: the URL without our own parameters
    schema: str
    pool_size: int
    display: str  # the URL without its password


def parse_url(url: str) -> Location:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in _OURS}
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k not in _OURS])
    schema = ours.get("schema", DEFAULT_SCHEMA)
    if not schema or len(schema) > 63:
        raise ValueError(f"{url!r}: schema must be 1 to 63 characters")
    try:
        pool_size = int(ours.get("pool_size", DEFAULT_POOL_SIZE))
    except ValueError:
        raise ValueError(f"{url!r}: pool_size must be a whole number") from None
    if pool_size < 1:
        raise ValueError(f"{url!r}: pool_size must be at least 1")
    netloc = parts.netloc
    if "@" in netloc:
        cred, host = netloc.rsplit("@", 1)
        netloc = f"{cred.split(':', 1)[0]}@{host}"
    display = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    conninfo = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment))
    return Location(conninfo, schema, pool_size, display)


def _debug_sql() -> bool:
    return "sql" in os.environ.get("TDE_DEBUG", "").split(",")


class PostgresDB:
    """One journal schema in one PostgreSQL database, through a pool. Thread-safe."""

    def __init__(
        self, url: str, durability: str = "full", busy_timeout: float = 10.0, readonly: bool = False
    ) -> None:
        if durability not in ("full", "process"):
            raise ValueError(f"durability must be 'full' or 'process', not {durability!r}")
        self.location = loc = parse_url(url)
        self.path = loc.display
        self.durability = durability
        self.busy_timeout = busy_timeout
        self.readonly = readonly
        self.empty = False  # read-only on a database without our schema: a journal with no flows
        self._lock = threading.Lock()
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] | None = None
        self._pid = os.getpid()
        self._forked: list[Any] = []  # other pids' pools: kept, never used, never closed here
        self._debug = _debug_sql()
        self._check_and_init()

    # ------------------------------------------------------------------ the schema

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            con = psycopg.connect(
                self.location.conninfo, autocommit=True, connect_timeout=max(1, int(self.busy_timeout))
            )
        except psycopg.Error as exc:
            raise self.io_error("connect", exc) from exc
        self._configure(con)
        return con

    def _check_and_init(self) -> None:
        schema = self.location.schema
        with contextlib.closing(self._connect()) as con:
            try:
                meta = self._meta(con)
                if meta is not None and meta[1] == SCHEMA_VERSION:
                    return self._check_meta(meta)
                if self.readonly:
                    if meta is None:
                        self._refuse_foreign(con)
                        self.empty = True
                        return None
                    return self._check_meta(meta)
                with con.transaction():
                    con.execute(Q["lock_schema"], (schema,))
                    con.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
                    meta = self._meta(con)  # another process may have created it meanwhile
                    if meta is None:
                        self._refuse_foreign(con)
                        con.execute(SCHEMA)
                        con.execute(Q["set_meta"], (APPLICATION_ID, SCHEMA_VERSION))
                        return None
                    self._check_meta(meta)
                    self._migrate(con, meta[1])
            except psycopg.Error as exc:
                raise self.io_error("open", exc) from exc
        return None

    def _meta(self, con: psycopg.Connection[Any]) -> tuple[int, int] | None:
        qualified = sql.Identifier(self.location.schema, "journal_meta").as_string(con)
        row = con.execute(Q["has_meta"], (qualified,)).fetchone()
        if not row or not row[0]:
            return None
        meta = con.execute(Q["meta"]).fetchone()
        return (int(meta[0]), int(meta[1])) if meta else (0, 0)

    def _check_meta(self, meta: tuple[int, int]) -> None:
        app_id, version = meta
        if app_id != APPLICATION_ID:
            raise ForeignDatabaseError(path=self.path, application_id=app_id)
        if version > SCHEMA_VERSION:
            raise SchemaTooNewError(path=self.path, found=version, supported=SCHEMA_VERSION)

    def _refuse_foreign(self, con: psycopg.Connection[Any]) -> None:
        """Tables in the schema but no ``journal_meta``: not ours, never written to."""
        row = con.execute(Q["tables_in_schema"], (self.location.schema,)).fetchone()
        if row and int(row[0]):
            raise ForeignDatabaseError(
                f"{self.path}: schema {self.location.schema!r} holds tables that are not a transparent_de "
                "journal (no journal_meta table); it was left untouched. Choose another with ?schema=name",
                path=self.path,
            )

    def _migrate(self, con: psycopg.Connection[Any], found: int) -> None:
        for target in range(found + 1, SCHEMA_VERSION + 1):
            script = MIGRATIONS.get(target)
            if script is None:
                raise SchemaTooNewError(
                    f"{self.path}: journal schema version {found} has no migration to {target}",
                    path=self.path,
                    found=found,
                    supported=SCHEMA_VERSION,
                )
            con.execute(script)
        con.execute(Q["update_meta"], (SCHEMA_VERSION,))

    # ------------------------------------------------------------------ connections

    def _configure(self, con: psycopg.Connection[Any]) -> None:
        search_path = sql.SQL("{}, pg_catalog").format(sql.Identifier(self.location.schema)).as_string(con)
        con.execute(
            Q["configure"],
            (
                search_path,
                "on" if self.durability == "full" else "off",
                f"{int(self.busy_timeout * 1000)}ms",
                f"{int(max(self.busy_timeout, 1.0) * 1000)}ms",
                "on" if self.readonly else "off",
                "transparent_de",
            ),
        )

    @property
    def pool(self) -> psycopg_pool.ConnectionPool[psycopg.Connection[Any]]:
        pool = self._pool
        if pool is not None and self._pid == os.getpid():
            return pool
        with self._lock:
            if self._pid != os.getpid():
                if self._pool is not None:
                    self._forked.append(self._pool)
                self._pool, self._pid = None, os.getpid()
            if self._pool is None:
                self._pool = psycopg_pool.ConnectionPool(
                    self.location.conninfo,
                    kwargs={"autocommit": True},
                    min_size=1,
                    max_size=self.location.pool_size,
                    configure=self._configure,
                    timeout=max(self.busy_timeout, 1.0),
                    open=False,
                    name=f"transparent_de:{self.location.schema}",
                )
                self._pool.open(wait=False)
            return self._pool

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):
                pool.close(timeout=5)

    def io_error(self, operation: str, exc: BaseException) -> JournalIOError:
        return JournalIOError(
            path=self.path, operation=operation, detail=f"{type(exc).__name__}: {exc}".strip()
        )

    def _broken(self, exc: BaseException) -> None:
        """After a connection failure: drop the pool's other broken connections now."""
        if isinstance(exc, psycopg.OperationalError):
            with contextlib.suppress(Exception):
                self.pool.check()

    def _getconn(self) -> psycopg.Connection[Any]:
        try:
            return self.pool.getconn()
        except psycopg_pool.PoolTimeout as exc:
            raise self.io_error("connect", exc) from exc

    # ------------------------------------------------------------------ statements

    def read(self, query: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Rows of one statement (its own implicit transaction); tried twice on connection loss."""
        if self.empty:
            return []
        for attempt in (1, 2):
            con = self._getconn()
            try:
                if self._debug:
                    print(f"[tde sql {threading.get_ident()}] {query} {params!r}", file=sys.stderr)
                return con.execute(query, params).fetchall()
            except psycopg.OperationalError as exc:
                self._broken(exc)
                if attempt == 2:
                    raise self.io_error("read", exc) from exc
            except psycopg.Error as exc:
                raise self.io_error("read", exc) from exc
            finally:
                self.pool.putconn(con)
        raise AssertionError("unreachable")

    def write(
        self,
        statements: Sequence[Statement],
        fence: Fence | None = None,
        label: str | None = "journal.commit",
    ) -> list[psycopg.Cursor[Any]]:
        """Run ``statements`` in one transaction, fenced by ``fence``; return their cursors (row
        counts, rows). Raises :class:`LeaseLost` or :class:`Conflict` (nothing written) when the
        fence or a conditional statement refuses, :class:`JournalIOError` on failure."""
        if self.readonly:
            raise TypeError(f"journal {self.path} was opened read-only")
        con = self._getconn()
        plan = _faults.current()
        try:
            cursors = []
            with con.pipeline() as pipe:
                con.execute("BEGIN")
                if fence is not None:
                    t = _clock.now_ms()
                    con.execute(Q["fence"], (fence.flow_id, fence.owner, fence.token, t + fence.lease_ms, t))
                for query, params in statements:
                    if self._debug:
                        print(f"[tde sql {threading.get_ident()}] {query} {params!r}", file=sys.stderr)
                    cur = con.cursor()
                    if isinstance(params, list):
                        cur.executemany(query, params)
                    else:
                        cur.execute(query, params)
                    cursors.append(cur)
                if plan is not None and label is not None:
                    pipe.sync()  # the statements ran; the crash point is between them and COMMIT
                    _faults.point(label)
                con.execute("COMMIT")
            return cursors
        except psycopg.Error as exc:
            state = getattr(exc, "sqlstate", None)
            self._rollback(con)
            if state == _LEASE_LOST and fence is not None:
                raise LeaseLost(fence.flow_id) from None
            if state == _CONSUMED:
                raise Conflict(str(exc.diag.message_primary or exc)) from None
            self._broken(exc)
            raise self.io_error("write", exc) from exc
        except BaseException:
            self._rollback(con)
            raise
        finally:
            self.pool.putconn(con)

    def _rollback(self, con: psycopg.Connection[Any]) -> None:
        if con.broken or con.closed:
            return
        if con.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                con.execute("ROLLBACK")

    def settings(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.read(Q["settings"])} if not self.empty else {}


def schema_script(schema: str = DEFAULT_SCHEMA) -> str:
    """The SQL a DBA runs to create the journal's schema by hand (``migrate --print-sql``)."""
    ident = '"' + schema.replace('"', '""') + '"'
    return (
        f"-- transparent_de journal, schema version {SCHEMA_VERSION}, in schema {ident}\n"
        "BEGIN;\n"
        f"SELECT pg_advisory_xact_lock(hashtext('transparent_de:' || '{schema.replace(chr(39), chr(39) * 2)}'));\n"
        f"CREATE SCHEMA IF NOT EXISTS {ident};\n"
        f"SET LOCAL search_path TO {ident}, pg_catalog;\n"
        f"{SCHEMA.strip()}\n"
        f"INSERT INTO journal_meta (application_id, schema_version) VALUES ({APPLICATION_ID}, {SCHEMA_VERSION});\n"
        "COMMIT;\n"
    )
