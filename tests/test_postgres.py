"""The PostgreSQL journal as such: its schema as a contract, a server restart under load, and many
workers on one database with SIGKILLs and a partitioned (SIGSTOPped) owner.

Workers are separate processes with owner ids of their own *hosts* (``_ownership.HOST`` is set
per worker), so a dead worker's flows can only be taken over by watching its lease for one
lease length, as across machines. (The behavioural tests of the engine run on Postgres too,
through the ``database`` fixture of conftest.py.)
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from helpers import query

import transparent_de
from transparent_de import Engine
from transparent_de.errors import ForeignDatabaseError, SchemaTooNewError

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX only (signals)")


@pytest.fixture
def pg(pg_cluster: Any) -> Any:
    return pg_cluster


# --------------------------------------------------------------------------- the schema


def test_the_schema_is_created_once_and_foreign_or_newer_ones_are_refused(pg: Any) -> None:
    url = pg.url("tde_contract")
    eng = Engine(url, durability="process")
    try:
        assert eng.store.path == url and eng.store.describe()["schema"] == "tde_contract"
    finally:
        eng.close()
    assert query(url, "SELECT application_id, schema_version FROM journal_meta") == [(0x54444531, 2)]
    # Someone else's tables in a schema of that name: refused, nothing created in it.
    pg.admin("CREATE SCHEMA theirs; CREATE TABLE theirs.orders (id int)", dbname="tde")
    with pytest.raises(ForeignDatabaseError):
        _ = Engine(pg.url("theirs")).store
    tables = pg.admin("SELECT tablename FROM pg_tables WHERE schemaname = 'theirs'", dbname="tde")
    assert tables == [("orders",)]
    # A newer schema version: refused.
    query(url, "UPDATE journal_meta SET schema_version = 3")
    with pytest.raises(SchemaTooNewError) as ei:
        _ = Engine(url).store
    assert ei.value.found == 3 and ei.value.supported == 2


def test_a_version_1_schema_gets_the_lineage_column_and_its_flows_resume(pg: Any) -> None:
    url = pg.url("tde_v1")
    eng = Engine(url, durability="process")
    try:
        _ = eng.store
    finally:
        eng.close()
    # What a version-1 schema is: no execution_log.lineage.
    query(url, "ALTER TABLE execution_log DROP COLUMN lineage")
    query(url, "UPDATE journal_meta SET schema_version = 1")
    eng = Engine(url, durability="process")
    try:
        _ = eng.store
    finally:
        eng.close()
    assert query(url, "SELECT schema_version FROM journal_meta") == [(2,)]
    assert query(url, "SELECT count(lineage) FROM execution_log") == [(0,)]


def test_a_read_only_store_creates_nothing(pg: Any) -> None:
    url = pg.url("tde_ro")
    eng = Engine(url, readonly=True)
    try:
        assert eng.flows() == []
    finally:
        eng.close()
    assert pg.admin("SELECT 1 FROM pg_namespace WHERE nspname = 'tde_ro'", dbname="tde") == []


def test_a_postgres_url_without_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ImportError, match=r"pip install 'transparent-de\[postgres\]'"):
        _ = Engine("postgresql://u@localhost/db").store


# --------------------------------------------------------------------------- a server restart

RESTART = """
import os, time

def effect(line):
    fd = os.open(os.environ["TDE_EFFECTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)

class Busy:
    __flow__ = "run"

    def run(self, n):
        return [self.step(n, k) for k in range(6)]

    def step(self, n, k):
        time.sleep(0.05)
        effect(f"{n}:{k}")
        return n * 10 + k
"""


def test_a_server_restart_under_load_unwinds_flows_and_they_resume(
    pg: Any, flow_module: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="transparent_de")
    fx = tmp_path / "effects"
    monkeypatch.setenv("TDE_EFFECTS", str(fx))
    m = flow_module(RESTART)
    url = pg.url()
    eng = Engine(url, durability="full", lease_seconds=1.0, poll_interval=0.05, hmac_key=None)
    handles = [eng.start(m.Busy().run, n, flow_id=f"r{n}") for n in range(12)]
    time.sleep(0.15)
    pg.restart()  # every connection dropped, mid-flow
    try:
        # The flows that met the restart unwound as after a crash and resume in this engine once
        # the server is back: every handle gets its result.
        for n, h in enumerate(handles):
            assert h.result(timeout=60) == [n * 10 + k for k in range(6)]
        assert query(url, "SELECT count(*) FROM flows WHERE status <> 'COMPLETE'") == [(0,)]
    finally:
        eng.close()
    assert eng.refused == {}
    met = [r for r in caplog.records if "resuming it in" in r.getMessage()]
    assert met, "the restart did not fall inside any flow"
    runs = defaultdict(int)
    for line in fx.read_text().split():
        runs[line] += 1
    assert set(runs) == {f"{n}:{k}" for n in range(12) for k in range(6)}
    reran = {k: v for k, v in runs.items() if v > 1}
    # Only a step in flight when the server went away runs again: at most one per flow.
    assert all(v == 2 for v in reran.values()), reran
    assert len({k.split(":")[0] for k in reran}) == len(reran), reran


# --------------------------------------------------------------------------- many workers

WORKFLOWS = """
import os, random, time
from transparent_de import _ownership

def effect(n, k):
    line = f"{n}:{k}:{_ownership.HOST}:{os.getpid()}\\n"
    fd = os.open(os.environ["TDE_EFFECTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)

class Job:
    __flow__ = "run"

    def run(self, n, steps):
        return [self.step(n, k) for k in range(steps)]

    def step(self, n, k):
        time.sleep(float(os.environ.get("TDE_STEP_SECONDS", "0.02")) * (0.5 + random.random()))
        effect(n, k)   # after the work: a step whose effect is written may still lose its commit
        return f"{n}.{k}@{_ownership.HOST}"
"""

WORKER = """
import os, sys, threading, time
sys.path.insert(0, sys.argv[1])
from transparent_de import _engine, _ownership
host = sys.argv[3]
_ownership.HOST = _engine.HOST = host    # an owner id of another machine: only its lease tells
import transparent_de
transparent_de.install(sys.argv[2].split(".")[0])
import importlib
m = importlib.import_module(sys.argv[2])
eng = transparent_de.configure(durability="process", lease_seconds=float(os.environ["TDE_LEASE"]),
                               poll_interval=0.05, park_after=0.2, hmac_key=None, max_workers=8)
print("ready", flush=True)
while not os.path.exists(os.environ["TDE_GO"]):  # the fleet starts its flows together
    time.sleep(0.01)
for spec in sys.argv[4:]:
    fid, n, steps = spec.split(":")
    transparent_de.start(m.Job().run, int(n), int(steps), flow_id=fid)
print("started", flush=True)
stop = threading.Event()
def watch():
    while not os.path.exists(os.environ["TDE_STOP"]):
        time.sleep(0.05)
    stop.set()
threading.Thread(target=watch, daemon=True).start()
transparent_de.worker(stop)
eng.close()
"""


class Fleet:
    """Worker processes on one database, each with a host name of its own."""

    def __init__(self, tmp: Path, module: Any, url: str, lease: float, step_seconds: float) -> None:
        self.tmp, self.url = tmp, url
        self.root = str(Path(module.__file__).parent.parent)
        self.module = module.__name__
        (tmp / "worker.py").write_text(textwrap.dedent(WORKER))
        self.fx, self.stopfile, self.gofile = tmp / "effects", tmp / "stop", tmp / "go"
        self.env = dict(
            os.environ,
            TRANSPARENT_DE_DB=url,
            TDE_EFFECTS=str(self.fx),
            TDE_STOP=str(self.stopfile),
            TDE_GO=str(self.gofile),
            TDE_LEASE=str(lease),
            TDE_STEP_SECONDS=str(step_seconds),
        )
        self.env.pop("TRANSPARENT_DE_HMAC_KEY", None)
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.killed: set[int] = set()

    def spawn(self, host: str, *flows: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, str(self.tmp / "worker.py"), self.root, self.module, host, *flows],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", (
            p.stderr.read() if p.stderr else ""
        )
        self.procs[host] = p
        return p

    def go(self) -> None:
        """Let every worker start its flows (and wait until they did)."""
        self.gofile.touch()
        for p in self.procs.values():
            assert p.stdout is not None and p.stdout.readline().strip() == "started"

    def kill(self, host: str) -> None:
        p = self.procs.pop(host)
        p.kill()
        p.wait(10)
        self.killed.add(p.pid)

    def wait_all_complete(self, total: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while query(self.url, "SELECT count(*) FROM flows WHERE status = 'COMPLETE'") != [(total,)]:
            assert time.monotonic() < deadline, query(
                self.url, "SELECT status, owner, count(*) FROM flows GROUP BY status, owner"
            )
            time.sleep(0.2)

    def stop(self) -> None:
        self.stopfile.touch()
        for p in self.procs.values():
            _out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err[-3000:]

    def executions(self) -> dict[tuple[int, int], list[tuple[str, int]]]:
        """(flow n, step k) -> [(host, pid) of each execution, in order]."""
        runs: dict[tuple[int, int], list[tuple[str, int]]] = defaultdict(list)
        for line in self.fx.read_text().split():
            n, k, host, pid = line.split(":")
            runs[int(n), int(k)].append((host, int(pid)))
        return runs


def _results(url: str, module: Any, flows: dict[str, tuple[int, int]]) -> dict[str, list[str]]:
    """Each flow's journaled result (read through an engine here: memoized, nothing runs)."""
    eng = Engine(url, durability="process", hmac_key=None)
    try:
        return {fid: eng.run(module.Job().run, n, steps, flow_id=fid) for fid, (n, steps) in flows.items()}
    finally:
        eng.close()


def test_four_workers_fifty_flows_each_with_random_sigkills(
    pg: Any, flow_module: Any, tmp_path: Path
) -> None:
    m = flow_module(WORKFLOWS)
    url = pg.url()
    fleet = Fleet(tmp_path, m, url, lease=1.0, step_seconds=0.08)
    steps = 6  # ~0.5 s a flow, 8 at a time per worker: ~3 s of work each
    flows = {f"w{w}-{j}": (w * 100 + j, steps) for w in range(4) for j in range(50)}
    for w in range(4):
        fleet.spawn(
            f"host{w}", *(f"{fid}:{n}:{s}" for fid, (n, s) in flows.items() if fid.startswith(f"w{w}-"))
        )
    fleet.go()
    rng = random.Random(15)
    kills = []
    try:
        for round_ in range(5):
            time.sleep(rng.uniform(0.2, 0.5))
            host = rng.choice(sorted(fleet.procs))
            fleet.kill(host)
            kills.append(host)
            if round_ > 0:  # the first one stays dead: other hosts must take its flows over
                time.sleep(rng.uniform(0.0, 0.3))
                fleet.spawn(host)
        dead = kills[0]
        fleet.wait_all_complete(len(flows), timeout=120)
    finally:
        fleet.stop()
    results = _results(url, m, flows)
    for fid, (n, s) in flows.items():
        assert [r.split("@")[0] for r in results[fid]] == [f"{n}.{k}" for k in range(s)], fid
    runs = fleet.executions()
    assert set(runs) == {(n, k) for n, s in flows.values() for k in range(s)}
    for (n, k), execs in runs.items():
        # Every execution but the last was by a process that was then killed: a step whose
        # executor lived to commit it never ran again.
        assert all(pid in fleet.killed for _h, pid in execs[:-1]), ((n, k), execs, fleet.killed)
    # The worker killed first was not restarted: flows it held were finished on other hosts.
    taken = [
        fid
        for fid, r in results.items()
        if any(x.endswith(f"@{dead}") for x in r) and not r[-1].endswith(f"@{dead}")
    ]
    assert taken, f"no flow of {dead} was taken over"


def test_a_partitioned_owner_loses_its_flows_and_its_late_commits_are_refused(
    pg: Any, flow_module: Any, tmp_path: Path
) -> None:
    m = flow_module(WORKFLOWS)
    url = pg.url()
    lease = 1.0
    fleet = Fleet(tmp_path, m, url, lease=lease, step_seconds=0.4)
    flows = {f"p{j}": (j, 6) for j in range(4)}
    a = fleet.spawn("hostA", *(f"{fid}:{n}:{s}" for fid, (n, s) in flows.items()))
    fleet.go()
    try:
        deadline = time.monotonic() + 30
        while not fleet.fx.exists() or len(fleet.fx.read_text().split()) < 4:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        a.send_signal(signal.SIGSTOP)  # partitioned: alive, silent, mid-step
        stopped_at = len(fleet.fx.read_text().split())
        fleet.spawn("hostB")
        fleet.wait_all_complete(len(flows), timeout=60)
        a.send_signal(signal.SIGCONT)
        time.sleep(3 * lease)  # A wakes inside its steps, finishes them, and tries to commit
    finally:
        a.send_signal(signal.SIGCONT)
        fleet.stop()
    lines = fleet.fx.read_text().split()
    late = [ln.split(":") for ln in lines[stopped_at:] if ln.split(":")[2] == "hostA"]
    assert late, "A did not wake inside a step"
    results = _results(url, m, flows)
    assert set(fleet.executions()) == {(n, k) for n, s in flows.values() for k in range(s)}
    for n, k, _host, _pid in late:
        fid = f"p{n}"
        # A's late step is not in the journal: B's execution of it is (A's commit was refused) ...
        assert results[fid][int(k)].endswith("@hostB"), (fid, k, results[fid])
        # ... and A went no further in that flow.
        assert not any(x[0] == n and int(x[1]) > int(k) for x in late), late
    for fid, (n, s) in flows.items():
        assert [r.split("@")[0] for r in results[fid]] == [f"{n}.{k}" for k in range(s)]
        assert any(r.endswith("@hostB") for r in results[fid]), results[fid]


def test_a_signal_to_a_flow_parked_on_another_host_resumes_it(
    pg: Any, flow_module: Any, tmp_path: Path
) -> None:
    m = flow_module(
        """
import transparent_de

class Approval:
    __flow__ = "run"

    def run(self, who):
        return [self.ask(who), transparent_de.wait_for(self.answer)]

    def ask(self, who):
        return who

    def answer(self, yes):
        return yes
"""
    )
    url = pg.url()
    a = Engine(url, durability="process", poll_interval=0.05, park_after=0.1, hmac_key=None)
    b = Engine(url, durability="process", poll_interval=0.05, park_after=0.1, hmac_key=None)
    stop = threading.Event()
    t = threading.Thread(target=a.worker, args=(stop,))
    try:
        h = a.start(m.Approval().run, "ann", flow_id="ap")
        t.start()
        deadline = time.monotonic() + 20
        while query(url, "SELECT waiting_for, owner FROM flows WHERE flow_id='ap'") != [("answer", None)]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        sent = time.monotonic()
        b.signal("ap", "answer", True)  # from another engine (another host, for all the journal knows)
        assert h.result(timeout=10) == ["ann", True]
        assert time.monotonic() - sent < 2.0
    finally:
        stop.set()
        t.join(10)
        a.close()
        b.close()
        transparent_de._api._default = None


# --------------------------------------------------------------------------- the command line


def test_the_cli_runs_lists_shows_and_checks_a_postgres_journal(pg: Any, tde: Any) -> None:
    url = pg.url("tde_cli")
    env = dict(tde.env, TRANSPARENT_DE_DB=url)
    p = tde("list", env=env)
    assert p.returncode == 2 and "no journal at" in p.stderr and "nothing was created" in p.stderr
    p = tde("--db", url, "run", "clitestflows.flows:Order.run", "7", "--flow-id", "o7", env=env)
    assert p.returncode == 0, p.stderr
    p = tde("list", "--json", env=env)
    assert p.returncode == 0, p.stderr
    (flow,) = __import__("json").loads(p.stdout)
    assert (flow["flow_id"], flow["status"], flow["steps"]) == ("o7", "COMPLETE", 2)
    p = tde("show", "o7", env=env)
    assert p.returncode == 0 and "price" in p.stdout, p.stderr
    p = tde("doctor", env=env)
    assert "schema       2 (supported 2)" in p.stdout and "server       PostgreSQL " in p.stdout, p.stdout
    assert "file mode    n/a" in p.stdout and "flows        COMPLETE 1" in p.stdout, p.stdout
    p = tde("migrate", "--print-sql", env=env)
    assert p.returncode == 0 and 'CREATE SCHEMA IF NOT EXISTS "tde_cli"' in p.stdout
    assert "CREATE TABLE execution_log" in p.stdout and p.stdout.rstrip().endswith("COMMIT;")
    p = tde("migrate", env=dict(env, TRANSPARENT_DE_DB=pg.url("tde_cli2")))
    assert p.returncode == 0 and "schema version 2" in p.stdout, p.stderr
    # The printed SQL is what the store creates: run by hand, the store takes the schema as its own.
    sql = tde("migrate", "--print-sql", env=dict(env, TRANSPARENT_DE_DB=pg.url("tde_by_hand"))).stdout
    pg.admin(sql, dbname="tde")
    eng = Engine(pg.url("tde_by_hand"), durability="process")
    try:
        assert eng.flows() == []
    finally:
        eng.close()
