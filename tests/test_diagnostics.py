"""Errors that say what happened, and a CLI that reads well: damaged journals, flow ids, the
determinism check's messages, `list`/`show` on a terminal."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from helpers import query

import transparent_de
from transparent_de import Engine
from transparent_de.errors import CorruptJournalError, NonDeterminismError

if TYPE_CHECKING:
    from conftest import CLI

SOURCE = """
EFFECTS = []
OFFSET = [0]
FAIL = [False]


class Calc:
    __flow__ = "run"

    def run(self, x, scale=1):
        a = self.add(x + OFFSET[0], y=2)
        return self.mul(a, scale)

    def add(self, x, y=2):
        EFFECTS.append("add")
        return x + y

    def mul(self, a, b):
        EFFECTS.append("mul")
        if FAIL[0]:
            raise RuntimeError("mul fails")
        return a * b
"""


# --------------------------------------------------------------------------- damaged journals


def _journal_with_flows(tmp_path: Path, flow_module, n: int = 30) -> tuple[Path, object]:
    m = flow_module(SOURCE)
    db = tmp_path / "j.db"
    eng = Engine(db, durability="process", hmac_key=None)
    for i in range(n):
        eng.run(m.Calc().run, i, flow_id=f"f{i}")
    eng.close()
    return db, m


def test_a_damaged_page_is_corruption_not_an_io_error(tmp_path, flow_module, tde):
    db, m = _journal_with_flows(tmp_path, flow_module)
    with open(db, "r+b") as f:  # garble the b-tree page headers after the first page
        size = os.path.getsize(db)
        for off in range(4096, size, 4096):
            f.seek(off)
            f.write(b"\xff" * 16)
    eng = Engine(db, durability="process", hmac_key=None)
    try:
        with pytest.raises(CorruptJournalError) as ei:
            eng.run(m.Calc().run, 1, flow_id="f1")
        assert "restore" in str(ei.value).lower() and "doctor" in str(ei.value)
    finally:
        eng.close()
    for args in (["list"], ["show", "f1"]):
        p = tde("--db", str(db), *args)
        assert p.returncode == 2 and "Traceback" not in p.stderr and "corrupt" in p.stderr, (args, p.stderr)


def test_a_truncated_journal_is_corruption(tmp_path, flow_module):
    db, m = _journal_with_flows(tmp_path, flow_module)
    with open(db, "r+b") as f:
        f.truncate(os.path.getsize(db) // 2)
    eng = Engine(db, durability="process", hmac_key=None)
    try:
        with pytest.raises(CorruptJournalError):
            for i in range(30):
                eng.run(m.Calc().run, i, flow_id=f"f{i}")
    finally:
        eng.close()


def test_doctor_reads_every_value_and_names_the_damaged_flow(tmp_path, flow_module, tde):
    db, _ = _journal_with_flows(tmp_path, flow_module, 3)
    con = sqlite3.connect(db)
    blob = bytearray(con.execute("SELECT return_value FROM execution_log WHERE flow_id='f1' AND step=2").fetchone()[0])
    blob[-1] ^= 0x55  # a garbled cell: integrity_check cannot see it, the CRC can
    con.execute("UPDATE execution_log SET return_value=? WHERE flow_id='f1' AND step=2", (bytes(blob),))
    con.commit()
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()
    p = tde("--db", str(db), "doctor")
    assert p.returncode == 1 and "f1 step 2" in p.stdout and "CRC" in p.stdout, p.stdout


# --------------------------------------------------------------------------- flow ids


@pytest.mark.parametrize(
    "bad",
    ["", "a\x00b", "del\x7f", "c1\x85", "line\u2028sep", "bidi\u202eflip", "lone\ud800", "x" * 256, 7],
)
def test_flow_ids_are_printable_text(engine, flow_module, bad):
    m = flow_module(SOURCE)
    with pytest.raises(ValueError) as ei:
        transparent_de.run(m.Calc().run, 1, flow_id=bad)
    message = str(ei.value)
    assert len(message) < 300 and message.isprintable()  # never echoed whole, never raw


def test_a_long_flow_id_is_not_echoed_whole(engine, flow_module):
    m = flow_module(SOURCE)
    with pytest.raises(ValueError) as ei:
        transparent_de.run(m.Calc().run, 1, flow_id="y" * 1_000_000)
    assert len(str(ei.value)) < 300


# --------------------------------------------------------------------------- the determinism check


def test_equivalent_calls_have_one_fingerprint(engine, flow_module):
    """`add(x)`, `add(x, y=2)` and `add(x=x)` with y's default are one call (bound arguments)."""
    m = flow_module(SOURCE)
    assert transparent_de.run(m.Calc().run, 1, flow_id="eq") == 3
    ((fp,),) = query(engine, "SELECT fingerprint FROM execution_log WHERE flow_id='eq' AND step=1")
    from transparent_de._entries import canonical_call
    from transparent_de._serialization import fingerprint

    fn = type(m.Calc()).add
    for args, kwargs in (((1,), {}), ((1,), {"y": 2}), ((), {"x": 1}), ((1, 2), {})):
        assert fingerprint(canonical_call(fn, m.Calc(), args, kwargs)) == fp
    assert transparent_de.run(m.Calc().run, 1, flow_id="eq") == 3
    assert transparent_de.run(m.Calc().run, x=1, scale=1, flow_id="eq") == 3  # the entry too


def test_a_changed_argument_is_shown_not_hashed(engine, flow_module):
    m = flow_module(SOURCE)
    m.FAIL[0] = True
    with pytest.raises(RuntimeError):
        transparent_de.run(m.Calc().run, 5, flow_id="ch")
    m.FAIL[0], m.OFFSET[0] = False, 1  # the code now computes another argument for step 1
    with pytest.raises(NonDeterminismError) as ei:
        transparent_de.run(m.Calc().run, 5, flow_id="ch")
    text = str(ei.value)
    assert "add(5, y=2)" in text and "add(6, y=2)" in text and "<args" not in text


# --------------------------------------------------------------------------- the CLI on a terminal


def test_list_into_a_closed_pipe_is_quiet(tde: CLI):
    assert tde("run", "clitestflows.flows:Order.run", "1", "--flow-id", "p0").returncode == 0
    con = sqlite3.connect(tde.db)  # many flows, so that `head` closes the pipe while list still writes
    con.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) "
        "INSERT INTO flows (flow_id, module, qualname, method_name, instance, status, created, updated) "
        "SELECT 'bulk' || i, module, qualname, method_name, instance, status, created, updated "
        "FROM flows, n WHERE flow_id = 'p0'"
    )
    con.commit()
    con.close()
    shell = f"{sys.executable} -m transparent_de list | head -3"
    p = subprocess.run(shell, shell=True, env=tde.env, cwd=tde.tmp, capture_output=True, text=True, timeout=60)
    assert len(p.stdout.splitlines()) == 3
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr


def test_show_fits_80_columns_unless_wide(tde: CLI):
    assert tde("run", "clitestflows.flows:Order.run", '"' + "w" * 300 + '"', "--flow-id", "long").returncode == 0
    narrow = tde("show", "long").stdout.splitlines()
    assert max(len(line) for line in narrow) <= 80, narrow
    wide = tde("show", "long", "--wide").stdout
    assert "TIMESTAMP" in wide and max(len(line) for line in wide.splitlines()) > 200


def test_list_marks_a_dead_owner(tde: CLI):
    env = dict(tde.env, CLI_TEST_CRASH="1")
    assert tde("run", "clitestflows.flows:Order.crashy", "3", "--flow-id", "dead", env=env).returncode == 3
    assert "(dead)" in tde("list").stdout
    assert tde.json("list")[0]["owner_alive"] is False


def test_run_with_missing_arguments_starts_nothing(tde: CLI):
    p = tde("run", "clitestflows.flows:Order.run", "--flow-id", "nothing")
    assert p.returncode == 2 and "order_id" in p.stderr and "no flow was started" in p.stderr
    assert not tde.db.exists() or tde.json("list") == []


def test_a_fresh_id_while_unfinished_flows_wait_points_at_recover(engine, flow_module, caplog):
    m = flow_module(SOURCE)
    with pytest.raises(TypeError):
        transparent_de.run(m.Calc().run, "a", flow_id="stuck")  # "a" + 2: the flow fails, stays unfinished
    caplog.set_level(logging.WARNING, logger="transparent_de")
    m.Calc().run(1)
    m.Calc().run(2)
    warned = [r.getMessage() for r in caplog.records if "fresh flow id" in r.getMessage()]
    assert len(warned) == 1 and "recover()" in warned[0] and "1 unfinished" in warned[0]
    assert query(engine, "SELECT count(*) FROM flows WHERE status='COMPLETE'") == [(2,)]
