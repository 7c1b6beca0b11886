"""The SQLite journal file: opening and checking it, connections, fenced write transactions.

The file is a contract (``sqlite_schema.sql``): ``PRAGMA application_id`` marks our files
(``0x54444531``, "TDE1"), ``PRAGMA user_version`` is :data:`SCHEMA_VERSION`. A foreign
database, a newer schema and a damaged row each raise their own error; nothing is ever
overwritten. Schema history:

* 1 — first version: ``execution_log`` (the seed's columns plus kind, fingerprint, error,
  error_text, site, updated), ``flows`` (lease, fencing token, wake-up, wait) and ``signals``.
* 2 — ``flows.failures``: consecutive failed runs (recovery backs off; at the cap, FAILED).
* 3 — ``execution_log.lineage``: an async flow's call identity (slot ident, docs/async.md).

Migrations (``sqlite_migrations.sql``) run when a writer opens an older journal, in one
transaction under ``BEGIN IMMEDIATE``, so processes opening it together migrate it once.

Design points (each pinned by a test):

* **WAL**, ``BEGIN IMMEDIATE`` for every write (a deferred transaction that read first gets
  ``SQLITE_BUSY_SNAPSHOT`` at once, ignoring the busy timeout), a busy timeout. Threads of
  one process queue on a lock of ours before ``BEGIN IMMEDIATE`` (see :class:`_Write`).
* **One connection per thread**, opened lazily and never carried across ``fork()``: a
  connection made by another pid is dropped, not used.
* **Durability.** Connections run ``synchronous=NORMAL``: a commit survives a process crash
  once it returns. ``durability="full"`` adds :meth:`SQLiteFile.sync` after the commits that
  matter (a step's result, a flow's end, a timer, a signal): one ``fsync`` of the WAL file,
  shared by every thread that committed before it started (group commit). A step's *intent*
  is not fsynced on its own: losing it to a power cut only loses the attempt count, since a
  step without a recorded result runs again anyway. So a step costs one fsync, not two.
* **Fencing.** Every write of a flow's rows first reads ``flows`` for the flow's owner and
  fencing token, in the same ``BEGIN IMMEDIATE`` transaction (so nothing can change them
  before COMMIT); if another process took the flow over, the write is refused with
  :class:`LeaseLost` and nothing is committed. A read, not a lease renewal: a step's commit
  then changes only its own page of ``execution_log`` (one WAL frame instead of two; the
  heartbeat renews leases, see ``renew``).
* **Checkpoints** run on a thread of their own (:mod:`.sqlite_checkpoint`), not inside a
  step's COMMIT.
* **Read-only** files (``readonly=True``) are opened through read-only connections and never
  created, initialised or switched to WAL.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import sys
import threading
import time
import urllib.parse
from typing import Any

from .. import _faults, _ownership
from ..errors import (
    CorruptJournalError,
    ForeignDatabaseError,
    JournalIOError,
    JournalPermissionError,
    NotADatabaseError,
    SchemaTooNewError,
)
from .base import Fence, LeaseLost
from .sqlite_checkpoint import CHECKPOINT_EVERY, Checkpointer
from .sqlite_sql import APPLICATION_ID, MIGRATIONS, SCHEMA, SCHEMA_VERSION, Q

SQLITE_HEADER = b"SQLite format 3\x00"


#: SQLite result codes (primary) that mean the file is damaged, not busy or out of space.
_CORRUPT_CODES = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB
_CORRUPT_WORDS = ("malformed", "not a database", "corrupt")


def is_corruption(exc: BaseException) -> bool:
    """Does this SQLite error mean a damaged file (as opposed to a lock, a full disk, I/O)?"""
    code = getattr(exc, "sqlite_errorcode", None)  # 3.11+
    if isinstance(code, int):
        return code & 0xFF in _CORRUPT_CODES
    return isinstance(exc, sqlite3.DatabaseError) and any(w in str(exc).lower() for w in _CORRUPT_WORDS)


def _debug_sql() -> bool:
    return "sql" in os.environ.get("TDE_DEBUG", "").split(",")


def _statements(script: str) -> list[str]:
    """Split a script into statements (``;`` inside comments and strings is not an end)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    return out


def _identity(con: sqlite3.Connection) -> tuple[int, int, set[str]]:
    app_id = con.execute("PRAGMA application_id").fetchone()[0]
    version = con.execute("PRAGMA user_version").fetchone()[0]
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    return int(app_id), int(version), tables


class _Write:
    """The write transaction behind :meth:`SQLiteFile.write` (a class: it is on every step's path).

    Threads of one process take the journal's write lock before ``BEGIN IMMEDIATE``: they
    queue on it instead of meeting in SQLite's busy handler, which backs off in sleeps of
    1 ms and more (measured to cap concurrent flows at the single-flow rate). Other
    processes still meet there, under the busy timeout.
    """

    __slots__ = ("con", "fence", "journal", "label")

    def __init__(self, journal: SQLiteFile, fence: Fence | None, label: str | None) -> None:
        self.journal, self.fence, self.label = journal, fence, label

    def __enter__(self) -> sqlite3.Connection:
        journal = self.journal
        con = self.con = journal.conn()
        journal._write_lock.acquire()
        try:
            con.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            journal._write_lock.release()
            if isinstance(exc, sqlite3.DatabaseError):
                raise journal._io_error("BEGIN IMMEDIATE", exc) from exc
            raise
        fence = self.fence
        if fence is not None:
            try:
                if con.execute(Q["fence"], (fence.flow_id, fence.owner, fence.token)).fetchone() is None:
                    raise LeaseLost(fence.flow_id)
            except BaseException as exc:
                self._rollback()
                if isinstance(exc, sqlite3.DatabaseError):
                    raise journal._io_error("write", exc) from exc
                raise
        return con

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        journal = self.journal
        if exc is not None:
            self._rollback()
            if isinstance(exc, sqlite3.DatabaseError):
                raise journal._io_error("write", exc) from exc
            return  # the exception propagates
        try:
            if self.label:
                _faults.point(self.label)  # a named crash point: inside the transaction, before COMMIT
            self.con.execute("COMMIT")
        except BaseException as failure:
            self._rollback()
            if isinstance(failure, sqlite3.DatabaseError):
                raise journal._io_error("write", failure) from failure
            raise
        journal._commit_gen += 1  # under the write lock: sync() reads it to know what to cover
        if not journal._commit_gen % CHECKPOINT_EVERY:
            journal.checkpointer.poke()
        journal._write_lock.release()

    def _rollback(self) -> None:
        try:
            if self.con.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.con.execute("ROLLBACK")
        finally:
            self.journal._write_lock.release()


def ro_uri(path: str) -> str:
    """A read-only SQLite URI for ``path``: every character that means something in a URI is quoted.

    (``file:{path}?mode=ro`` unquoted turns ``?`` or ``#`` in a path into a query or fragment,
    and SQLite then opens, or creates, another file.)
    """
    return f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"


def classify(app_id: int, version: int, tables: set[str]) -> str:
    """``ours``, ``empty`` (ours to initialise), ``too-new`` or ``foreign``.

    Our schema and its application id are written in one transaction, so a database with
    tables but not our id was never ours, whatever its tables are called.
    """
    if app_id == APPLICATION_ID:
        return "too-new" if version > SCHEMA_VERSION else "ours"
    if app_id == 0 and version == 0 and not tables:
        return "empty"
    return "foreign"


def check_modes(path: str, tighten: bool) -> None:
    """Refuse a journal whose file, -wal or -shm any local user may write (they could run code).

    With ``tighten``, an *empty* journal file of ours (created by someone in advance, e.g. with
    ``touch``) is first brought to mode 0600, the mode of files we create.
    """
    for suffix in ("", "-wal", "-shm"):
        p = path + suffix
        try:
            st = os.stat(p)
        except FileNotFoundError:
            continue
        mode = stat.S_IMODE(st.st_mode)
        if suffix == "" and tighten and st.st_size == 0 and mode & 0o077:
            if st.st_uid != os.geteuid():
                raise JournalPermissionError(
                    path=p,
                    mode=mode,
                    detail="it is empty and belongs to another user, so its mode cannot be tightened",
                )
            os.chmod(p, 0o600)
            continue
        if mode & 0o002:
            raise JournalPermissionError(path=p, mode=mode, detail="any local user can write it")


class SQLiteFile:
    """One journal file. Thread-safe: each thread gets its own connection.

    ``readonly=True`` opens it for inspection (``list``, ``show``): through read-only
    connections, never creating, initialising or switching the file to WAL, so reading a
    journal never writes to it. An empty file reads as a journal with no flows.
    """

    def __init__(
        self, path: str, durability: str = "full", busy_timeout: float = 10.0, readonly: bool = False
    ) -> None:
        if durability not in ("full", "process"):
            raise ValueError(f"durability must be 'full' or 'process', not {durability!r}")
        self.path = os.path.abspath(path)
        self.durability = durability
        self.busy_timeout = busy_timeout
        self.readonly = readonly
        self.empty = False
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.checkpointer = Checkpointer(self.path, busy_timeout, self._write_lock)
        self._commit_gen = 0
        self._synced_gen = 0
        self._wal_fd: int | None = None
        self._wal_ino: tuple[int, int] | None = None
        self._pid = os.getpid()
        if readonly:
            self._check_readonly()
        else:
            self._check_and_init()

    # ------------------------------------------------------------------ opening

    def _check_readonly(self) -> None:
        path = self.path
        if not os.path.exists(path):
            raise JournalIOError(path=path, operation="open", detail="no such file")
        if os.path.getsize(path) == 0:
            self.empty = True
            return
        with open(path, "rb") as f:
            if f.read(16) != SQLITE_HEADER:
                raise NotADatabaseError(path=path)
        self.empty = self._refuse_foreign(path) == "empty"

    def _check_and_init(self) -> None:
        path = self.path
        check_modes(path, tighten=True)
        if os.path.exists(path) and os.path.getsize(path) > 0:
            with open(path, "rb") as f:
                head = f.read(16)
            if head != SQLITE_HEADER:
                raise NotADatabaseError(path=path)
            # Look before touching: opening our way switches the file to WAL, which rewrites its
            # header, so a foreign or too-new database is refused through a read-only connection.
            self._refuse_foreign(path)
        else:
            # Create it ourselves with mode 0600: SQLite gives -wal/-shm the same mode.
            parent = os.path.dirname(path)
            if parent:
                os.makedirs(parent, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        con = self.conn()
        # One read transaction: another process may be creating the schema right now, and
        # reading its application id before and its tables after would look like a foreign file.
        con.execute("BEGIN")
        try:
            app_id, version, tables = _identity(con)
        finally:
            con.execute("COMMIT")
        kind = classify(app_id, version, tables)
        if kind == "too-new":
            raise SchemaTooNewError(path=path, found=version, supported=SCHEMA_VERSION)
        if kind == "foreign":
            raise ForeignDatabaseError(path=path, application_id=app_id)
        if kind == "ours":
            if version < SCHEMA_VERSION:
                self._migrate(con, version)
            return
        with self.write() as c:
            # Not executescript(): it would COMMIT our BEGIN IMMEDIATE half-way.
            for stmt in _statements(SCHEMA):
                c.execute(stmt)
            c.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        # A schema only in the WAL is lost with the WAL; checkpoint it into the main file once.
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _refuse_foreign(self, path: str) -> str:
        try:
            ro = sqlite3.connect(ro_uri(path), uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._io_error("open", exc) from exc
        try:
            ro.execute("BEGIN")  # one snapshot, as in _check_and_init
            app_id, version, tables = _identity(ro)
            ro.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc):
                raise NotADatabaseError(path=path) from exc
            raise self._io_error("open", exc) from exc
        finally:
            ro.close()
        kind = classify(app_id, version, tables)
        if kind == "too-new":
            raise SchemaTooNewError(path=path, found=version, supported=SCHEMA_VERSION)
        if kind == "foreign":
            raise ForeignDatabaseError(path=path, application_id=app_id)
        return kind

    def _migrate(self, con: sqlite3.Connection, version: int) -> None:
        """Bring an older schema up to date, in one write transaction (all steps or none)."""
        with self.write(label="journal.migrate") as c:
            found = int(c.execute("PRAGMA user_version").fetchone()[0])  # another process may have done it
            for target in range(found + 1, SCHEMA_VERSION + 1):
                script = MIGRATIONS.get(target)
                if script is None:
                    raise SchemaTooNewError(
                        f"{self.path}: journal schema version {found} has no migration to {target}",
                        path=self.path,
                        found=found,
                        supported=SCHEMA_VERSION,
                    )
                for stmt in _statements(script):
                    c.execute(stmt)
            c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def conn(self) -> sqlite3.Connection:
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is not None and self._local.pid == _ownership.pid():
            return con
        try:
            if self.readonly:
                con = sqlite3.connect(
                    ro_uri(self.path),
                    uri=True,
                    timeout=self.busy_timeout,
                    isolation_level=None,
                    check_same_thread=False,
                )
            else:
                con = sqlite3.connect(
                    self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
                )
                self._wal_mode(con)
                con.execute("PRAGMA synchronous=NORMAL")
                con.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer's thread does it
            con.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            con.execute("PRAGMA trusted_schema=OFF")
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc) or "file is not a database" in str(exc):
                raise NotADatabaseError(path=self.path) from exc
            raise self._io_error("open", exc) from exc
        if _debug_sql():
            con.set_trace_callback(lambda s: print(f"[tde sql {threading.get_ident()}] {s}", file=sys.stderr))
        self._local.con = con
        self._local.pid = _ownership.pid()
        with self._lock:
            self._all.append(con)
        return con

    def _wal_mode(self, con: sqlite3.Connection) -> None:
        """Switch to WAL, waiting (up to the busy timeout) while another process creates the file.

        Switching a new file's journal mode needs an exclusive lock, and SQLite answers "database
        is locked" at once, without its busy handler, while another connection writes the
        schema: processes started together on a fresh journal would fail. So retry here.
        """
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                if con.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() == "wal":
                    return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise
            else:
                if time.monotonic() >= deadline:
                    raise sqlite3.OperationalError("could not switch the journal to WAL mode")
            time.sleep(0.005)

    def close(self) -> None:
        """Close every connection this journal opened (in this process)."""
        self.checkpointer.close()
        with self._lock:
            cons, self._all = self._all, []
        for con in cons:
            with contextlib.suppress(Exception):
                con.close()
        self._local = threading.local()
        if self._wal_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._wal_fd)
            self._wal_fd = None

    # ------------------------------------------------------------------ transactions

    def _io_error(self, operation: str, exc: BaseException) -> JournalIOError | CorruptJournalError:
        """The error a failed SQLite call means: damage (restore a backup) or I/O (retry later)."""
        if is_corruption(exc):
            return CorruptJournalError(path=self.path, detail=f"SQLite reports {exc} (while {operation})")
        return JournalIOError(path=self.path, operation=operation, detail=f"{type(exc).__name__}: {exc}")

    def write(self, fence: Fence | None = None, label: str | None = "journal.commit") -> _Write:
        """A ``BEGIN IMMEDIATE`` transaction; with a ``fence`` it is fenced: it first renews the
        flow's lease, which succeeds only while owner and fencing token are still ours (see the
        module docstring). ``label`` is the crash point just before its COMMIT (None: none, for
        the heartbeat, whose timing would make crash sweeps non-deterministic).

        Used as ``with journal.write(...) as con:``; commits on success, rolls back on any
        exception (an ``OperationalError`` becomes :class:`JournalIOError`).
        """
        if self.readonly:
            raise TypeError(f"journal {self.path} was opened read-only")
        return _Write(self, fence, label)

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        if self.empty:
            return []  # an empty file opened read-only: a journal with nothing in it yet
        try:
            return self.conn().execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._io_error("read", exc) from exc

    # ------------------------------------------------------------------ durability

    def sync(self) -> None:
        """Make every commit made so far power-loss durable (no-op in 'process' mode).

        Group commit: a thread whose commit is already covered by an fsync that *started*
        after it returns at once; concurrent flows share one fsync (16 flows: about 0.25 fsync
        per step, measured; waiting for more commits to gather was tried and gained nothing
        measurable).
        """
        if self.durability != "full":
            return
        mine = self._commit_gen  # this thread's own commits are counted in it
        if self._synced_gen >= mine:
            return
        with self._sync_lock:
            if self._synced_gen >= mine:
                return
            target = self._commit_gen  # every commit counted so far is in the WAL file
            try:
                fd = self._wal()
                if fd is not None:
                    os.fsync(fd)
            except OSError as exc:
                raise self._io_error("fsync", exc) from exc
            self._synced_gen = target

    def _wal(self) -> int | None:
        wal = self.path + "-wal"
        try:
            st = os.stat(wal)
        except FileNotFoundError:
            return None
        ino = (st.st_dev, st.st_ino)
        if self._wal_fd is None or self._wal_ino != ino or _ownership.pid() != self._pid:
            if self._wal_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._wal_fd)
            self._wal_fd = os.open(wal, os.O_RDONLY)
            self._wal_ino = ino
            self._pid = os.getpid()
            # A new WAL file's directory entry must be durable too.
            dfd = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return self._wal_fd
