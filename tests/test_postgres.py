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
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from helpers import query

from transparent_de import Engine
from transparent_de.errors import ForeignDatabaseError, SchemaTooNewError

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX only (signals)")


# Imported when used, not here: without psycopg (the README's test venv) this module must still
# be collected, so that its tests are skipped with the reason rather than fail to import.
def parse_url(url: str) -> Any:
    from transparent_de._store.postgres_db import parse_url

    return parse_url(url)


def channel(schema: str) -> str:
    from transparent_de._store.postgres_wake import channel

    return channel(schema)


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
    pg: Any,
    flow_module: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
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


# --------------------------------------------------------------------------- wake-up hints (LISTEN/NOTIFY)

PARKING = """
import time
import transparent_de

RAN = []

class Approval:
    __flow__ = "run"

    def run(self, who):
        return [self.ask(who), transparent_de.wait_for(self.answer)]

    def ask(self, who):
        return who

    def answer(self, yes):
        return yes

class Nap:
    __flow__ = "run"

    def run(self, seconds):
        time.sleep(seconds)
        return self.wake()

    def wake(self):
        RAN.append(time.monotonic())
        return "awake"
"""

#: Far longer than any wake-up the tests allow: a flow resumed in time was woken by a hint.
SLOW_POLL = 5.0


def _engine(url: str, poll: float = SLOW_POLL, durability: str = "process") -> Engine:
    return Engine(url, durability=durability, poll_interval=poll, park_after=0.1, hmac_key=None)


def _listening(pg: Any, url: str) -> int:
    """Listener connections on the journal's channel, as the server sees them."""
    schema = parse_url(url).schema
    rows = pg.admin(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'transparent_de:listen' AND query = %s",
        (f'LISTEN "{channel(schema)}"',),
        dbname="tde",
    )
    return int(rows[0][0])


def _until(what: str, check: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def _parked(url: str, fid: str) -> bool:
    return query(url, "SELECT waiting_for, owner FROM flows WHERE flow_id=?", (fid,)) == [("answer", None)]


def test_a_signal_from_another_engine_wakes_a_parked_flow_at_once(pg: Any, flow_module: Any) -> None:
    """Engine B signals a flow parked in engine A: A resumes it on B's NOTIFY, far sooner than
    its poll (every 5 s here; it last polled when the flow parked, just before the signal)."""
    m = flow_module(PARKING)
    url = pg.url()
    a, b = _engine(url), _engine(url)
    try:
        for i in range(3):
            h = a.start(m.Approval().run, f"ann{i}", flow_id=f"ap{i}")
            _until("the flow did not park", lambda i=i: _parked(url, f"ap{i}"))
            sent = time.monotonic()
            b.signal(
                f"ap{i}", "answer", True
            )  # from another engine (another host, for all the journal knows)
            assert h.result(timeout=10) == [f"ann{i}", True]
            assert time.monotonic() - sent < 1.0
        assert _listening(pg, url) == 1  # one connection per engine with a scheduler: A's (B never ran one)
    finally:
        a.close()
        b.close()
    assert _listening(pg, url) == 0  # closed with its engine


def test_hints_about_flows_this_engine_does_not_hold_are_harmless(pg: Any, flow_module: Any) -> None:
    """Junk on the channel, and hints about a flow parked by an engine that is gone, change nothing
    here: the flow is left parked (this engine never recovered, so it is not its to run), and the
    listener goes on (a later hint, delivered after them in order, still wakes A's own flow)."""
    m = flow_module(PARKING)
    url = pg.url()
    a, b, c = _engine(url), _engine(url), _engine(url)
    try:
        c.start(m.Approval().run, "them", flow_id="theirs")
        _until("their flow did not park", lambda: _parked(url, "theirs"))
        c.close()
        h = a.start(m.Approval().run, "me", flow_id="mine")
        _until("my flow did not park", lambda: _parked(url, "mine"))
        name = channel(parse_url(url).schema)
        junk = [
            "garbage",
            "{}",
            '{"k":"s"}',
            '{"k":"s","f":7}',
            '{"k":"x","f":"mine"}',
            '{"k":"p","f":"mine","w":"soon"}',
        ]
        hints = [
            '{"k":"p","f":"theirs","w":null,"l":null,"s":"answer","o":"elsewhere:1:x"}',
            '{"k":"s","f":"theirs"}',
        ]
        for payload in junk + hints:
            pg.admin("SELECT pg_notify(%s, %s)", (name, payload), dbname="tde")
        b.signal("theirs", "answer", False)  # a real signal for a flow A does not hold
        sent = time.monotonic()
        b.signal("mine", "answer", True)
        assert h.result(timeout=10) == ["me", True]
        assert time.monotonic() - sent < 1.0
        assert _parked(url, "theirs")
        assert query(url, "SELECT consumed_step FROM signals WHERE flow_id='theirs'") == [(None,)]
    finally:
        a.close()
        b.close()


def test_a_recovering_engine_wakes_a_flow_another_engine_parked_and_left(pg: Any, flow_module: Any) -> None:
    """The park's NOTIFY: engine C parks a flow on a 1 s timer and closes; engine W, which ran
    recover() before the flow existed and polls nothing after, wakes it on time."""
    m = flow_module(PARKING)
    url = pg.url()
    w, c = _engine(url), _engine(url)
    try:
        assert w.recover() == []  # nothing yet; from now on W adopts what others park
        _until("W does not listen", lambda: _listening(pg, url) == 1)
        started = time.monotonic()
        c.start(m.Nap().run, 1.0, flow_id="nap")
        _until(
            "the flow did not park",
            lambda: query(url, "SELECT owner FROM flows WHERE flow_id='nap'") == [(None,)],
        )
        c.close()
        assert w.handle("nap").result(timeout=10) == "awake"
        (woke,) = m.RAN
        assert 0.9 <= woke - started < 3.0, woke - started
    finally:
        w.close()
        c.close()


def test_the_listener_comes_back_after_a_server_restart(pg: Any, flow_module: Any) -> None:
    """The listener's connection dies with the server and is made again (with backoff); a signal
    sent afterwards wakes the flow parked before the restart by NOTIFY, not by a poll (30 s)."""
    m = flow_module(PARKING)
    url = pg.url()
    a, b = _engine(url, 30.0, "full"), _engine(url, 30.0, "full")  # what they wrote survives the restart
    try:
        h = a.start(m.Approval().run, "ann", flow_id="rs")
        _until("the flow did not park", lambda: _parked(url, "rs"))
        _until("A does not listen", lambda: _listening(pg, url) == 1)
        pg.restart()
        _until("A's listener did not come back", lambda: _listening(pg, url) == 1, timeout=30)
        a.flows(), b.flows()  # each pool drops its connections the restart broke (a read is retried)
        sent = time.monotonic()
        b.signal("rs", "answer", True)
        assert h.result(timeout=10) == ["ann", True]
        assert time.monotonic() - sent < 2.0
    finally:
        a.close()
        b.close()


def test_the_channel_is_the_schemas_and_fits_an_identifier() -> None:
    pytest.importorskip("psycopg", reason="the PostgreSQL store needs psycopg (pip install -e '.[test,postgres]')")
    assert channel("billing") == "transparent_de:billing"
    long_a, long_b = "a" * 60 + "x", "a" * 60 + "y"
    assert len(channel(long_a).encode()) <= 63 and channel(long_a) != channel(long_b)
    assert len(channel("é" * 31).encode()) <= 63


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


def test_the_suite_is_collected_without_psycopg(tmp_path: Path) -> None:
    """The README's test command runs in a venv without the `postgres` extra: every test module
    must still import there (PostgreSQL tests then skip with the reason), so no test module may
    import psycopg, or a module that does, at its top."""
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for name in ("psycopg", "psycopg_pool"):
        (blocked / f"{name}.py").write_text(f"raise ImportError('{name} is blocked for this test')\n")
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", str(root / "tests")],
        env=env, capture_output=True, text=True, timeout=120, cwd=root,
    )
    assert p.returncode == 0 and " error" not in p.stdout.splitlines()[-1], p.stdout[-3000:] + p.stderr[-2000:]
