"""The journal is untrusted input: attacks by whoever can write the file, and what stops them.

Each test is a real attack on a real journal (a forged row, a crafted pickle, a rewritten
column, a planted file) whose evidence is a marker file the attacker's code would create.
"""

from __future__ import annotations

import logging
import os
import pickle
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from helpers import query

import transparent_de
from transparent_de import Engine, _engine, _faults
from transparent_de._serialization import encode
from transparent_de._store.sqlite_file import SQLiteFile
from transparent_de.errors import (
    CorruptJournalError,
    ForeignDatabaseError,
    JournalKeyError,
    JournalPermissionError,
)

if TYPE_CHECKING:
    from conftest import CLI

KEY = "s3cret-signing-key"

SOURCE = """
import transparent_de

EFFECTS = []


class Approve:
    __flow__ = ("run", "fails")

    def run(self, who):
        self.prepare(who)
        answer = transparent_de.wait_for(self.confirm)
        return self.finish(who, answer)

    def fails(self, who):
        self.prepare(who)
        return self.explode(who)

    def prepare(self, who):
        EFFECTS.append(("prepare", who))
        return who

    def confirm(self, answer):
        EFFECTS.append(("confirm", answer))
        return answer

    def finish(self, who, answer):
        return f"{who}:{answer}"

    def explode(self, who):
        raise RuntimeError("not yet")
"""


class Evil:
    """A pickle that, when loaded, creates ``marker``: the evidence that journal content ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def _sql(path: str | Path, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """What an attacker does: write the journal with a plain driver (sqlite3, psycopg), no key."""
    return query(str(path), statement, params)


def _wait_status(engine: Engine, fid: str, status: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if query(engine, "SELECT status FROM flows WHERE flow_id=?", (fid,)) == [(status,)]:
            return
        time.sleep(0.02)
    raise AssertionError(f"flow {fid} never became {status}")


# --------------------------------------------------------------------------- 1. signals


def test_forged_signal_is_refused_not_unpickled(engine, flow_module, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TRANSPARENT_DE_HMAC_KEY", KEY)
    m = flow_module(SOURCE)
    handle = transparent_de.start(m.Approve().run, "ann", flow_id="s1")
    _wait_status(engine, "s1", "WAITING_FOR_SIGNAL")
    marker = tmp_path / "PWNED-signal"
    _sql(
        engine.store.path,
        "INSERT INTO signals (flow_id, step_name, payload, sent) VALUES ('s1', 'confirm', ?, 0)",
        (encode(Evil(marker)),),
    )
    with pytest.raises(CorruptJournalError) as ei:
        handle.result(timeout=10)
    assert ei.value.flow_id == "s1" and "signed" in str(ei.value)
    assert not marker.exists()
    assert ("confirm", None) not in m.EFFECTS and not any(e[0] == "confirm" for e in m.EFFECTS)


def test_a_signal_moved_to_another_flow_does_not_verify(engine, flow_module, monkeypatch) -> None:
    monkeypatch.setenv("TRANSPARENT_DE_HMAC_KEY", KEY)
    m = flow_module(SOURCE)
    first = transparent_de.start(m.Approve().run, "ann", flow_id="m1")
    _wait_status(engine, "m1", "WAITING_FOR_SIGNAL")
    transparent_de.signal("m1", "confirm", "yes")
    assert first.result(timeout=10) == "ann:yes"
    second = transparent_de.start(m.Approve().run, "bob", flow_id="m2")
    _wait_status(engine, "m2", "WAITING_FOR_SIGNAL")
    # A genuine, signed payload copied into a new row: its MAC is bound to flow m1's row.
    _sql(
        engine.store.path,
        "INSERT INTO signals (flow_id, step_name, payload, sent) "
        "SELECT 'm2', step_name, payload, sent FROM signals WHERE flow_id = 'm1'",
    )
    with pytest.raises(CorruptJournalError, match="HMAC"):
        second.result(timeout=10)


# --------------------------------------------------------------------------- 2. identity columns


EVIL_MODULE = """
open({marker!r}, "w").close()


class Boom:
    def run(self, *args, **kwargs):
        open({marker!r} + "-ran", "w").close()
"""


def _resumable_flow(engine: Engine, m: Any, fid: str) -> None:
    with pytest.raises(RuntimeError, match="not yet"):
        transparent_de.run(m.Approve().fails, "ann", flow_id=fid)
    assert query(engine, "SELECT status FROM flows WHERE flow_id=?", (fid,)) == [("PENDING",)]


@pytest.mark.parametrize(
    "tamper",
    [
        "UPDATE flows SET module = ?, qualname = 'Boom'",
        "UPDATE flows SET module = ?, qualname = 'Boom', instance = NULL",
        "UPDATE flows SET method_name = 'run', module = module || substr(?, 1, 0)",
    ],
    ids=["module", "module-and-null-instance", "method"],
)
def test_rewritten_identity_columns_are_refused_before_import(
    engine, flow_module, monkeypatch, tmp_path, tamper
) -> None:
    monkeypatch.setenv("TRANSPARENT_DE_HMAC_KEY", KEY)
    m = flow_module(SOURCE)
    marker = tmp_path / "PWNED-import"
    evil = f"tdeevil{os.getpid()}"
    (tmp_path / "src" / f"{evil}.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    _resumable_flow(engine, m, "i1")
    _sql(engine.store.path, tamper + " WHERE flow_id = 'i1'", (evil,))
    for attempt in (lambda: [h.result(timeout=10) for h in transparent_de.recover()],
                    lambda: transparent_de.signal("i1", "confirm", "x")):  # fmt: skip
        with pytest.raises(CorruptJournalError) as ei:
            attempt()
        assert ei.value.flow_id == "i1" and "i1" in str(ei.value)
    assert not marker.exists() and not Path(str(marker) + "-ran").exists()
    assert evil not in sys.modules
    assert not any(e == ("prepare", "ann") for e in m.EFFECTS[1:])  # nothing re-ran either


def test_untampered_signed_flow_resumes(engine, flow_module, monkeypatch) -> None:
    monkeypatch.setenv("TRANSPARENT_DE_HMAC_KEY", KEY)
    m = flow_module(SOURCE)
    handle = transparent_de.start(m.Approve().run, "ann", flow_id="ok1")
    _wait_status(engine, "ok1", "WAITING_FOR_SIGNAL")
    transparent_de.signal("ok1", "confirm", "yes")
    assert handle.result(timeout=10) == "ann:yes"
    assert transparent_de.run(m.Approve().run, "ann", flow_id="ok1") == "ann:yes"


def test_signed_journal_without_the_key_says_so(engine, flow_module, monkeypatch) -> None:
    monkeypatch.setenv("TRANSPARENT_DE_HMAC_KEY", KEY)
    m = flow_module(SOURCE)
    _resumable_flow(engine, m, "k1")
    other = Engine(engine.store.path, durability="process", hmac_key=None)
    try:
        with pytest.raises(JournalKeyError, match="TRANSPARENT_DE_HMAC_KEY") as ei:
            other.run(m.Approve().fails, "ann", flow_id="k1")
        assert ei.value.flow_id == "k1"
    finally:
        other.close()


# --------------------------------------------------------------------------- 3. read-only tools


def _plant(tde: CLI, blob: bytes) -> None:
    assert tde("run", "clitestflows.flows:Order.run", "7", "--flow-id", "o1").returncode == 0
    _sql(tde.db, "UPDATE execution_log SET return_value=? WHERE flow_id='o1' AND step=1", (blob,))


def test_show_list_doctor_never_run_journal_content(tde: CLI, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED-show"
    _plant(tde, encode(Evil(marker)))
    text = tde("show", "o1")
    assert text.returncode == 0, text.stderr
    assert "open(" in text.stdout  # what the blob would call, named, not called
    step = tde.json("show", "o1")["steps"][1]
    assert step["result_value"] is None and "open(" in step["result"]
    assert tde("list").returncode == 0
    assert tde("doctor").returncode in (0, 1)
    refused = tde("show", "o1", "--unsafe-decode")
    assert refused.returncode == 2 and "TRANSPARENT_DE_HMAC_KEY" in refused.stderr
    signed_env = dict(tde.env, TRANSPARENT_DE_HMAC_KEY=KEY)
    verified = tde("show", "o1", "--unsafe-decode", "--json", env=signed_env)
    assert verified.returncode == 0, verified.stderr  # the forged blob is refused, shown as an error
    assert not marker.exists()
    # Plain data still reads as data in JSON, without unpickling.
    assert tde.json("show", "o1")["steps"][2]["result_value"] == 12.5
    # The explicit acknowledgement really decodes (so the tests above could have failed).
    assert tde("show", "o1", "--unsafe-decode", "--no-verify").returncode == 0
    assert marker.exists()


# --------------------------------------------------------------------------- 4. no key: said once


def test_unsigned_journal_is_reported_once_per_process(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.delenv("TRANSPARENT_DE_HMAC_KEY", raising=False)
    monkeypatch.setattr(_engine, "_unsigned_warned", False)
    caplog.set_level(logging.WARNING, logger="transparent_de.journal")
    engines = [Engine(tmp_path / f"j{i}.db", durability="process") for i in range(2)]
    for e in engines:
        _ = e.store
    reader = Engine(tmp_path / "j0.db", readonly=True)
    _ = reader.store
    warnings = [r for r in caplog.records if r.name == "transparent_de.journal"]
    assert len(warnings) == 1 and "not signed" in warnings[0].getMessage()
    for e in [*engines, reader]:
        e.close()


def test_doctor_reports_signing(tde: CLI) -> None:
    assert tde("run", "clitestflows.flows:Order.run", "1").returncode == 0
    off = tde.json("doctor")
    assert off["signing"] is False and off["unsigned_flows"] == 1
    assert "OFF" in tde("doctor").stdout
    signed_env = dict(tde.env, TRANSPARENT_DE_HMAC_KEY=KEY)
    p = tde("doctor", "--json", env=signed_env)
    assert p.returncode == 1 and "not signed" in p.stdout  # an unsigned flow under a key: refused later


# --------------------------------------------------------------------------- 5. files


def test_pre_created_world_writable_file_is_tightened(tmp_path) -> None:
    p = tmp_path / "j.db"
    p.touch()
    os.chmod(p, 0o666)
    j = SQLiteFile(str(p), durability="process")
    try:
        with j.write() as con:
            con.execute("SELECT 1")
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(f"{p}{suffix}"):
                assert stat.S_IMODE(os.stat(f"{p}{suffix}").st_mode) == 0o600, suffix
    finally:
        j.close()


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_world_writable_journal_files_are_refused(tmp_path, suffix) -> None:
    p = tmp_path / "j.db"
    SQLiteFile(str(p), durability="process").close()
    target = Path(f"{p}{suffix}")
    if not target.exists():
        target.write_bytes(b"")
    os.chmod(target, 0o666)
    before = p.read_bytes()
    with pytest.raises(JournalPermissionError) as ei:
        SQLiteFile(str(p), durability="process")
    assert ei.value.path == str(target) and "0666" in str(ei.value) and "chmod 600" in str(ei.value)
    assert p.read_bytes() == before


def test_reading_an_empty_file_writes_nothing(tde: CLI) -> None:
    tde.db.touch()
    p = tde("list")
    assert p.returncode == 0 and "no flows" in p.stdout
    assert tde("show", "x").returncode == 2
    assert tde.db.stat().st_size == 0
    assert sorted(os.listdir(tde.tmp)) == ["journal.db", "src"]


def test_a_foreign_database_named_like_ours_is_never_written(tmp_path) -> None:
    p = tmp_path / "other.db"
    _sql(p, "CREATE TABLE flows (flow_id TEXT, owner TEXT)")
    _sql(p, "INSERT INTO flows VALUES ('x', 'someone')")
    before = p.read_bytes()
    for opener in (lambda: SQLiteFile(str(p)), lambda: SQLiteFile(str(p), readonly=True)):
        with pytest.raises(ForeignDatabaseError):
            opener()
    assert p.read_bytes() == before  # not switched to WAL, no schema added
    assert sorted(os.listdir(tmp_path)) == ["other.db"]


def test_uri_characters_in_a_path_are_quoted(tde: CLI) -> None:
    odd = tde.tmp / "we?ird#name.db"
    env = dict(tde.env, TRANSPARENT_DE_DB=str(odd))
    assert tde("run", "clitestflows.flows:Order.run", "1", env=env).returncode == 0
    report = tde("doctor", "--json", env=env)
    assert '"integrity": [\n    "ok"' in report.stdout and '"COMPLETE": 1' in report.stdout
    # The only files are that journal and the -wal/-shm a WAL reader needs (no file "we", no "ird").
    assert {f.replace("-wal", "").replace("-shm", "") for f in os.listdir(tde.tmp)} == {"src", odd.name}


# --------------------------------------------------------------------------- 6. delivery crashes


def _child(fn: Any) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_signal_delivery_crashes_never_leave_a_signed_flow_stuck(flow_module, tmp_path) -> None:
    """A kill at every point of delivering a signal and running its step, signing on."""
    m = flow_module(SOURCE)

    def journal(k: int) -> str:
        return str(tmp_path / f"deliver-{k}.db")

    def prepare(db: str) -> None:
        def park() -> None:
            eng = Engine(db, durability="process", park_after=0.0, poll_interval=0.01, hmac_key=KEY)
            eng.start(m.Approve().run, "ann", flow_id="d1")
            deadline = time.monotonic() + 10
            while query(eng, "SELECT waiting_for FROM flows WHERE flow_id='d1'") != [("confirm",)]:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            eng.close()  # first: an engine with the parked flow would resume it on the signal
            sender = Engine(db, durability="process", hmac_key=KEY)
            sender.signal("d1", "confirm", "yes")
            sender.close()

        assert _child(park) == 0

    def resume(db: str, plan: _faults.FaultPlan | None) -> None:
        _faults.install(plan)
        eng = Engine(db, durability="process", poll_interval=0.01, hmac_key=KEY)
        try:
            result = eng.run(m.Approve().run, "ann", flow_id="d1")
            with open(db + ".result", "wb") as f:
                pickle.dump((result, dict(plan.labels) if plan else {}), f)
        finally:
            eng.close()

    prepare(journal(0))
    assert _child(lambda: resume(journal(0), _faults.FaultPlan())) == 0
    with open(journal(0) + ".result", "rb") as f:
        result, labels = pickle.load(f)
    assert result == "ann:yes" and labels.get("signal.deliver.mid_txn") == 1
    points = sum(labels.values())
    for k in range(1, points + 1):
        db = journal(k)
        prepare(db)
        code = _child(lambda db=db, k=k: resume(db, _faults.FaultPlan(at=k, action="exit")))
        assert code == _faults.CRASH_EXIT_CODE, k
        assert _child(lambda db=db: resume(db, None)) == 0, f"recovery after a crash at point {k} failed"
        with open(db + ".result", "rb") as f:
            assert pickle.load(f)[0] == "ann:yes", k
        consumed = _sql(db, "SELECT count(*) FROM signals WHERE flow_id='d1' AND consumed_step IS NOT NULL")
        assert consumed == [(1,)], k


# --------------------------------------------------------------------------- 7. no switch in the package


def test_no_environment_variable_turns_durability_off(flow_module, tmp_path) -> None:
    """The planted bugs of the fuzz suite cannot be switched on from outside the process."""
    m = flow_module(SOURCE)
    root = os.path.dirname(os.path.dirname(m.__file__))
    code = f"""
import os, sys
sys.path.insert(0, {root!r})
import transparent_de
transparent_de.install({m.__name__.split(".")[0]!r})
from {m.__name__} import Approve
fsyncs = []
real = os.fsync
os.fsync = lambda fd: (fsyncs.append(fd), real(fd))[1]
engine = transparent_de.Engine({str(tmp_path / "j.db")!r}, durability="full", hmac_key=None)
try:
    engine.run(Approve().fails, "x", flow_id="f")
except RuntimeError:
    pass
print(len(fsyncs))
"""
    env = dict(os.environ, TDE_PLANTED_BUG="skip-sync")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) >= 2  # the prepare step's result and the failure were fsynced
    source = Path(transparent_de.__file__).parent
    assert not [p for p in source.rglob("*.py") if "PLANTED" in p.read_text()]
