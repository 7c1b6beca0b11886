"""A throwaway PostgreSQL cluster for the tests: Debian's server binaries, a temp dir, a Unix socket.

PostgreSQL refuses to run as root, so when the tests run as root the cluster belongs to the
``postgres`` user the package creates (``runuser``). It listens on a Unix socket in its own
directory only (no TCP port to collide with), with ``fsync=off``: a cluster for tests, never
for data. ``python tests/pg.py`` starts one and prints its URL (for trying things by hand).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from typing import Any


def binaries() -> str | None:
    """The newest ``/usr/lib/postgresql/*/bin`` with initdb and pg_ctl, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4].split(".")[0])
    )
    for initdb in reversed(found):
        bindir = os.path.dirname(initdb)
        if os.access(os.path.join(bindir, "pg_ctl"), os.X_OK):
            return bindir
    return shutil.which("initdb") and os.path.dirname(shutil.which("initdb") or "")


def unavailable() -> str | None:
    """Why no cluster can be started here (one line), or None if one can."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        return "psycopg / psycopg_pool not installed (pip install -e '.[test,postgres]')"
    if binaries() is None:
        return "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb; apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root without runuser(1) to start the server as 'postgres'"
    return None


class Cluster:
    """One running cluster; :meth:`url` gives a URL of a fresh schema in its database ``tde``."""

    def __init__(self) -> None:
        bindir = binaries()
        assert bindir is not None
        self.bindir = bindir
        self.dir = tempfile.mkdtemp(prefix="tde-pg-")
        self.data = os.path.join(self.dir, "data")
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.dir, 0o755)
        self._ids = itertools.count()
        started = time.monotonic()
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", self.user, "-E", "UTF8", "--no-sync")
        self.start()
        self.admin("CREATE DATABASE tde")
        self.start_seconds = time.monotonic() - started

    def _run(self, tool: str, *args: str) -> None:
        cmd = [os.path.join(self.bindir, tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, cwd=self.dir, timeout=120)

    def start(self) -> None:
        opts = (
            f"-c listen_addresses='' -c unix_socket_directories={self.dir} -c fsync=off "
            "-c full_page_writes=off -c max_connections=300 -c shared_buffers=32MB"
        )
        self._run("pg_ctl", "-D", self.data, "-o", opts, "-l", os.path.join(self.dir, "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """Stop the server (every connection dropped) and start it again."""
        self.stop("immediate")
        self.start()

    def conninfo(self, dbname: str = "tde") -> str:
        return f"host={self.dir} user={self.user} dbname={dbname}"

    def admin(self, sql: str, params: tuple[Any, ...] = (), dbname: str = "postgres") -> list[Any]:
        import psycopg

        with psycopg.connect(self.conninfo(dbname), autocommit=True) as con:
            cur = con.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def url(self, schema: str | None = None) -> str:
        """``postgresql://`` URL of a schema of its own in database ``tde`` (created by the store)."""
        schema = schema or f"t{next(self._ids)}_{os.getpid()}"
        host = urllib.parse.quote(self.dir, safe="")
        return f"postgresql://{self.user}@{host}/tde?schema={schema}"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


if __name__ == "__main__":
    why = unavailable()
    if why:
        raise SystemExit(why)
    c = Cluster()
    print(f"started in {c.start_seconds:.2f}s: {c.url()}  (dir {c.dir}; Ctrl-C stops it)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        c.close()
