"""transparent_de.testing.crash_sweep / assert_recovers on a user's own flow."""

from __future__ import annotations

import pytest
from helpers import is_postgres

from transparent_de._store.sqlite_sql import Q
from transparent_de.testing import assert_recovers, crash_sweep

SOURCE = """
import time, uuid

class Checkout:
    __flow__ = "run"

    def run(self, n):
        key = str(uuid.uuid4())
        total = 0
        for i in range(n):
            total += self.price(i)
        try:
            self.flaky_discount()
        except ValueError:
            total -= 1
        return self.charge(total, key)[0]

    def price(self, i):
        return 10 * (i + 1)

    def flaky_discount(self):
        raise ValueError("no discount today")

    def charge(self, total, key):
        return (total, len(key))
"""


def test_every_crash_point_recovers_to_the_same_result(flow_module, tmp_path, database, request):
    m = flow_module(SOURCE)
    seen = []
    pg = is_postgres(database)  # then each run gets a schema of its own beside this one's, dropped after
    report = assert_recovers(
        m.Checkout().run, 3, workdir=str(tmp_path), progress=lambda k, n: seen.append(k), database=database if pg else None
    )
    if pg:
        left = request.getfixturevalue("pg_cluster").admin(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (database.split("schema=")[1] + "_sweep%",), dbname="tde"
        )
        assert left == []
    assert report.crash_points >= 20 and report.crashes_injected == report.crash_points
    assert report.recoveries == report.crash_points and seen == list(range(1, report.crash_points + 1))
    assert {"step.intent.after_commit", "step.result.carried", "flow.complete.mid_txn"} <= set(report.labels)


def test_the_sweep_catches_a_broken_engine(flow_module, tmp_path, monkeypatch):
    m = flow_module(SOURCE)
    # A broken engine: PENDING steps read back as COMPLETE, so a crashed step is never re-run.
    broken = Q["load_steps"].replace("status,", "CASE status WHEN 'PENDING' THEN 'COMPLETE' ELSE status END,", 1)
    monkeypatch.setitem(Q, "load_steps", broken)
    report = crash_sweep(m.Checkout().run, 2, workdir=str(tmp_path))
    assert report.failures, report.summary()
    with pytest.raises(AssertionError, match="divergences"):
        assert_recovers(m.Checkout().run, 2, workdir=str(tmp_path / "again"), max_points=12)


def test_cli_fuzz_runs_the_sweep_on_a_users_flow(tmp_path):
    import os
    import subprocess
    import sys
    import textwrap

    pkg = tmp_path / "sweepcli"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "flows.py").write_text(textwrap.dedent(SOURCE))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "transparent_de",
            "fuzz",
            "sweepcli.flows:Checkout.run",
            "2",
            "--max-points",
            "15",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TRANSPARENT_DE_DB=str(tmp_path / "unused.db")),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "15 passed, 0 failed"
    assert "divergences 0" in out.stdout


SIGNALLED = """
import transparent_de

class Signup:
    __flow__ = "run"

    def run(self, email):
        self.send(email)
        token = transparent_de.wait_for(self.confirm)
        return self.activate(email, token)

    def send(self, email):
        return email

    def confirm(self, token):
        return token

    def activate(self, email, token):
        return f"{email}:{token}"
"""


def test_a_flow_waiting_for_a_signal_is_swept_with_the_signals_it_is_sent(flow_module, tmp_path):
    m = flow_module(SIGNALLED)
    report = assert_recovers(m.Signup().run, "a@b", signals=[("confirm", "tok")], workdir=str(tmp_path))
    assert report.crash_points >= 10 and "signal.deliver.mid_txn" in report.labels


def test_a_flow_that_cannot_run_fails_the_sweep(tmp_path):
    import types

    mod = types.ModuleType("tde_unrewritten")
    exec(
        "class Plain:\n    __flow__ = 'run'\n    def run(self):\n        return self.step()\n"
        "    def step(self):\n        return 1\n",
        mod.__dict__,
    )
    report = crash_sweep(mod.Plain().run, workdir=str(tmp_path))
    assert report.crash_points == 0 and report.failures
    assert "FlowNotRewrittenError" in report.failures[0]
    with pytest.raises(AssertionError, match="cannot run"):
        assert_recovers(mod.Plain().run, workdir=str(tmp_path / "again"))


def test_the_testing_tools_do_not_need_pytest(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['pytest'] = None\n"  # as if pytest were not installed
        "import transparent_de.testing, transparent_de.cli\n"
        "from transparent_de.testing import assert_recovers, crash_sweep\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
