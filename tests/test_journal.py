"""The journal file as a contract: bad inputs, damaged values, locks, a full disk, signing."""

from __future__ import annotations

import os
import pickle
import sqlite3
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from helpers import query

import transparent_de
from transparent_de import Engine, errors
from transparent_de._serialization import encode
from transparent_de._store.sqlite_file import SQLiteFile
from transparent_de._store.sqlite_sql import APPLICATION_ID, SCHEMA_VERSION
from transparent_de.errors import (
    CorruptJournalError,
    ForeignDatabaseError,
    JournalIOError,
    NotADatabaseError,
    SchemaTooNewError,
    SerializationError,
)

SOURCE = """
import threading

EFFECTS = []
FAIL = set()


class J:
    __flow__ = "run"

    def run(self, x, big=0):
        a = self.one(x)
        return self.two(a, big)

    def one(self, x):
        EFFECTS.append("one")
        return x + 1

    def two(self, a, big):
        EFFECTS.append("two")
        if "two" in FAIL:
            raise RuntimeError("two fails")
        return [a * 2, "x" * big]


class Locky:
    __flow__ = "run"

    def run(self):
        self.one()
        return self.use(threading.Lock())

    def one(self):
        return 1

    def use(self, lock):
        return 2
"""


def dump(engine: Engine) -> list[tuple[object, ...]]:
    return query(engine, "SELECT * FROM execution_log ORDER BY flow_id, step")


def test_text_file_is_not_a_database_and_is_left_untouched(tmp_path: Path) -> None:
    p = tmp_path / "notes.txt"
    p.write_text("hello, these are my notes\n" * 20)
    before = p.read_bytes()
    with pytest.raises(NotADatabaseError) as ei:
        SQLiteFile(str(p))
    assert ei.value.path == str(p)
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_foreign_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    p = tmp_path / "other.db"
    con = sqlite3.connect(p)
    con.execute("CREATE TABLE foo (x)")
    con.execute("INSERT INTO foo VALUES (1)")
    con.commit()
    con.close()
    before = p.read_bytes()
    with pytest.raises(ForeignDatabaseError):
        _ = Engine(p).store
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["other.db"]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "j.db"
    SQLiteFile(str(p)).close()
    con = sqlite3.connect(p)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(SchemaTooNewError) as ei:
        SQLiteFile(str(p))
    assert ei.value.found == SCHEMA_VERSION + 1 and ei.value.supported == SCHEMA_VERSION


def test_new_journal_mode_and_ids(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "j.db"
    j = SQLiteFile(str(p))
    try:
        j.read("SELECT 1")
        assert os.stat(p).st_mode & 0o777 == 0o600
        for extra in ("-wal", "-shm"):
            if os.path.exists(str(p) + extra):
                assert os.stat(str(p) + extra).st_mode & 0o777 == 0o600
    finally:
        j.close()
    con = sqlite3.connect(p)
    try:
        assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        con.close()


def _corrupt(engine: Engine, flow_id: str, step: int, blob: bytes) -> None:
    query(engine, "UPDATE execution_log SET return_value=? WHERE flow_id=? AND step=?", (blob, flow_id, step))


def _return_value(engine: Engine, flow_id: str, step: int) -> bytes:
    rows = query(engine, "SELECT return_value FROM execution_log WHERE flow_id=? AND step=?", (flow_id, step))
    return bytes(rows[0][0])


def test_corrupt_return_value_stops_replay_without_rerunning(engine, flow_module) -> None:
    m = flow_module(SOURCE)
    m.FAIL.add("two")
    with pytest.raises(RuntimeError):
        transparent_de.run(m.J().run, 1, flow_id="c1")
    blob = bytearray(_return_value(engine, "c1", 1))
    blob[-2] ^= 0xFF
    _corrupt(engine, "c1", 1, bytes(blob))
    m.FAIL.clear()
    m.EFFECTS.clear()
    with pytest.raises(CorruptJournalError) as ei:
        transparent_de.run(m.J().run, 1, flow_id="c1")
    assert ei.value.flow_id == "c1" and ei.value.step == 1
    assert "c1" in str(ei.value) and "step 1" in str(ei.value)
    assert m.EFFECTS == []  # the damaged step was not taken as 'not done'


def test_hmac_detects_a_tampered_blob(engine, flow_module, monkeypatch) -> None:
    monkeypatch.setenv("TRANSPARENT_DE_HMAC_KEY", "s3cret")
    m = flow_module(SOURCE)
    m.FAIL.add("two")
    with pytest.raises(RuntimeError):
        transparent_de.run(m.J().run, 1, flow_id="h1")
    # A well-framed blob (valid CRC) signed with another key: only the HMAC can tell.
    _corrupt(engine, "h1", 1, encode(99, b"h1\x001\x00r", b"other key"))
    m.FAIL.clear()
    m.EFFECTS.clear()
    with pytest.raises(CorruptJournalError, match="HMAC") as ei:
        transparent_de.run(m.J().run, 1, flow_id="h1")
    assert ei.value.flow_id == "h1" and ei.value.step == 1
    assert m.EFFECTS == []
    # An untampered signed flow replays fine.
    assert transparent_de.run(m.J().run, 2, flow_id="h2") == [6, ""]
    assert transparent_de.run(m.J().run, 2, flow_id="h2") == [6, ""]


def test_unpicklable_step_argument(engine, flow_module) -> None:
    m = flow_module(SOURCE)
    with pytest.raises(SerializationError) as ei:
        transparent_de.run(m.Locky().run, flow_id="s1")
    err = ei.value
    assert err.flow_id == "s1" and err.step == 2 and err.method == "use"
    assert "Locky" in str(err) and "use" in str(err) and "step 2" in str(err)
    steps = [(r[1], r[4], r[6]) for r in dump(engine) if r[1] > 0]
    assert [s[:2] for s in steps] == [(1, "one")]  # nothing was written for step 2


def test_lock_held_by_another_process_then_flow_completes(tmp_path: Path, flow_module) -> None:
    m = flow_module(SOURCE)
    db = tmp_path / "j.db"
    eng = Engine(db, durability="process", busy_timeout=0.2)
    try:
        query(eng, "SELECT 1")
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sqlite3, sys\n"
                f"con = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
                "con.execute('BEGIN IMMEDIATE')\n"
                "print('locked', flush=True)\n"
                "sys.stdin.read()\n"
                "con.execute('ROLLBACK')\n",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            with pytest.raises(JournalIOError) as ei:
                eng.run(m.J().run, 3, flow_id="l1")
            assert ei.value.path == str(db) and "lock" in ei.value.detail
        finally:
            holder.communicate(timeout=30)
        m.EFFECTS.clear()
        assert eng.run(m.J().run, 3, flow_id="l1") == [8, ""]
        assert m.EFFECTS == ["one", "two"]
    finally:
        eng.close()


def test_disk_full_is_an_io_error_and_loses_nothing(tmp_path: Path, flow_module) -> None:
    m = flow_module(SOURCE)
    db = tmp_path / "j.db"
    eng = Engine(db, durability="process")
    try:
        assert eng.run(m.J().run, 1, flow_id="ok") == [4, ""]
        con = eng.store.file.conn()  # max_page_count is per connection: cap the engine's own
        pages = con.execute("PRAGMA page_count").fetchone()[0]
        con.execute(f"PRAGMA max_page_count = {pages + 2}")
        with pytest.raises(JournalIOError) as ei:
            eng.run(m.J().run, 1, 200_000, flow_id="big")
        assert "full" in ei.value.detail
        assert eng.run(m.J().run, 1, flow_id="ok") == [4, ""]  # nothing lost
        con.execute("PRAGMA max_page_count = 1073741823")
        m.EFFECTS.clear()
        assert eng.run(m.J().run, 1, 200_000, flow_id="big") == [4, "x" * 200_000]
        assert m.EFFECTS == ["two"]  # step one's committed result survived the full disk
    finally:
        eng.close()
    con2 = sqlite3.connect(db)
    try:
        assert con2.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        con2.close()


def test_sql_injection_text_is_an_ordinary_flow_id(engine, flow_module) -> None:
    m = flow_module(SOURCE)
    fid = "x'); DROP TABLE flows;--"
    assert transparent_de.run(m.J().run, 1, flow_id=fid) == [4, ""]
    assert transparent_de.run(m.J().run, 1, flow_id=fid) == [4, ""]
    assert [f.flow_id for f in engine.flows()] == [fid]
    assert [s.method_name for s in engine.steps(fid)] == ["run", "one", "two"]


ERRORS = [
    errors.NonDeterminismError(flow_id="f", flow_class="C", step=3, recorded="a", current="b", reason="r"),
    errors.SerializationError(flow_id="f", flow_class="C", step=2, method="m", what="w", detail="d"),
    errors.NotADatabaseError(path="/p"),
    errors.ForeignDatabaseError(path="/p", application_id=7),
    errors.SchemaTooNewError(path="/p", found=9, supported=1),
    errors.CorruptJournalError(path="/p", flow_id="f", step=4, detail="crc"),
    errors.JournalIOError(path="/p", operation="write", detail="full"),
    errors.FlowBusyError(flow_id="f", owner="h:1:t"),
    errors.FlowNotFoundError(flow_id="f", path="/p"),
    errors.FlowFailedError(flow_id="f", flow_class="C", error="E: x"),
    errors.FlowCancelledError(flow_id="f"),
    errors.SignalError(flow_id="f", step="s", reason="r"),
    errors.WaitTimeoutError(flow_id="f", step="s", timeout=1.5),
    errors.FlowNotRewrittenError(flow_class="m.C", module="m"),
    errors.TransparentDEError("plain message"),
]


@pytest.mark.parametrize("err", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_pickle_round_trip(err: errors.TransparentDEError) -> None:
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert str(back) == str(err) and back.args == err.args
    assert back.fields == err.fields
    for k, v in err.fields.items():
        assert getattr(back, k) == v


def test_database_strings_are_parsed_never_taken_for_odd_file_names(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    url_path = tmp_path / "via-url.db"
    eng = Engine(f"sqlite://{url_path}", durability="process")
    try:
        assert eng.store.path == str(url_path) and url_path.exists()
    finally:
        eng.close()
    # A PostgreSQL URL is a server to reach, never a path; its password stays out of messages.
    nowhere = urllib.parse.quote(str(tmp_path / "no-server-here"), safe="")
    with pytest.raises((JournalIOError, ImportError)) as ei:
        _ = Engine(f"postgresql://user:hunter2@{nowhere}/db", busy_timeout=1).store
    assert "hunter2" not in str(ei.value)
    if isinstance(ei.value, ImportError):
        assert "pip install 'transparent-de[postgres]'" in str(ei.value)
    else:
        assert ei.value.path == f"postgresql://user@{nowhere}/db"
    for bad, match in (
        ("mysql://user@localhost/db", "unknown journal URL scheme 'mysql'"),
        ("sqlite://", "needs a path"),
    ):
        with pytest.raises(ValueError, match=match):
            _ = Engine(bad).store
    assert sorted(os.listdir(tmp_path)) == ["via-url.db"]  # no folder named 'postgresql:'


def test_a_version_1_journal_is_migrated_in_place_and_its_flows_resume(tmp_path: Path, flow_module) -> None:
    m = flow_module(SOURCE)
    db = tmp_path / "v1.db"
    eng = Engine(db, durability="process", hmac_key=None)
    m.FAIL.add("two")
    with pytest.raises(RuntimeError):
        eng.run(m.J().run, 1, flow_id="old")
    eng.close()
    con = sqlite3.connect(db)  # what a version-1 journal is: no flows.failures (nor lineage)
    con.execute("ALTER TABLE flows DROP COLUMN failures")
    con.execute("ALTER TABLE execution_log DROP COLUMN lineage")
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()
    m.FAIL.clear()
    m.EFFECTS.clear()
    eng = Engine(db, durability="process", hmac_key=None)
    try:
        assert eng.run(m.J().run, 1, flow_id="old") == [4, ""]
        assert m.EFFECTS == ["two"]  # step one's result survived the migration
    finally:
        eng.close()
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        assert con.execute("SELECT failures FROM flows WHERE flow_id='old'").fetchone() == (0,)
        assert con.execute("SELECT count(lineage) FROM execution_log").fetchone() == (0,)
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        con.close()
