"""multiprocessing 'spawn' children get the hook when install() is at the main module's top level."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

MAIN = """
import multiprocessing, sys
import transparent_de
transparent_de.install("spawnflows")   # top level: spawn children re-run this before unpickling
from spawnflows.flows import Twice

def work(i):
    return transparent_de.run(Twice().run, i, flow_id=f"child-{i}")

if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        print(pool.map(work, [1, 2, 3]))
"""

FLOWS = """
class Twice:
    __flow__ = "run"

    def run(self, i):
        return self.double(i)

    def double(self, i):
        return 2 * i
"""


def test_spawn_children_journal_their_flows(tmp_path: Path) -> None:
    (tmp_path / "spawnflows").mkdir()
    (tmp_path / "spawnflows" / "__init__.py").write_text("")
    (tmp_path / "spawnflows" / "flows.py").write_text(textwrap.dedent(FLOWS))
    (tmp_path / "main.py").write_text(textwrap.dedent(MAIN))
    db = tmp_path / "j.db"
    out = subprocess.run(
        [sys.executable, "main.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=dict(os.environ, TRANSPARENT_DE_DB=str(db)),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[2, 4, 6]"
    import sqlite3

    con = sqlite3.connect(db)
    rows = con.execute(
        "SELECT flow_id, step, method_name, status FROM execution_log ORDER BY flow_id, step"
    ).fetchall()
    con.close()
    assert rows == [
        (f"child-{i}", s, m, "COMPLETE") for i in (1, 2, 3) for s, m in ((0, "run"), (1, "double"))
    ]
