"""Checkpoints off the step path: the WAL is copied into the database file by a thread of its own.

By default SQLite checkpoints inside the COMMIT that takes the WAL past 1,000 pages, so every
few hundred steps one step's commit stalled for milliseconds while it copied pages. Our
connections turn that off (``PRAGMA wal_autocheckpoint=0``) and every
:data:`CHECKPOINT_EVERY` commits wake this thread, which runs a ``PASSIVE`` checkpoint on its
own connection: it copies what no reader still needs while flows go on committing. A WAL
is only rewound (started again from its beginning) by a writer that finds it fully copied,
which a checkpoint racing a busy writer never is; so a second, short pass follows under this
process's write lock, copying just the frames written during the first. Flows wait only for
that pass (the pages of a few commits), not for a whole checkpoint. A crash during a
checkpoint is harmless (SQLite's design: the WAL keeps every frame until it is rewound).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading

from .. import _ownership

#: Commits between two checkpoints: about the WAL size of SQLite's default (1,000 pages) at
#: one or two pages per step.
CHECKPOINT_EVERY = 512

log = logging.getLogger("transparent_de")


class Checkpointer:
    """One thread per journal and process, started by the first :meth:`poke`."""

    def __init__(self, path: str, busy_timeout: float, write_lock: threading.Lock) -> None:
        self.path = path
        self.write_lock = write_lock
        self.busy_timeout = busy_timeout
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = _ownership.pid()
        self.done = 0  # checkpoints run (tests)

    def poke(self) -> None:
        """Ask for a checkpoint soon (cheap; called under the journal's write lock)."""
        if self._pid != _ownership.pid():  # a forked child: the parent's thread is not here
            self._pid, self._thread = _ownership.pid(), None
            self._wake, self._stop = threading.Event(), threading.Event()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, args=(self._wake, self._stop), name="tde-checkpoint", daemon=True
            )
            self._thread.start()
        self._wake.set()

    def _loop(self, wake: threading.Event, stop: threading.Event) -> None:
        con = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            con.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            while True:
                wake.wait()
                wake.clear()
                if stop.is_set():
                    return
                try:
                    con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    with self.write_lock:  # the frames of the commits made meanwhile: see the module doc
                        con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.done += 1
                except sqlite3.Error:  # busy, or I/O: the next poke tries again; commits are unaffected
                    log.debug("checkpoint of %s skipped", self.path, exc_info=True)
        finally:
            with contextlib.suppress(sqlite3.Error):
                con.close()

    def close(self) -> None:
        """Stop the thread; a later :meth:`poke` (the journal used again) starts a new one."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and self._pid == _ownership.pid() and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._thread = None
        self._wake, self._stop = threading.Event(), threading.Event()
