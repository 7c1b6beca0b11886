"""The ``transparent-de`` command line, run in subprocesses against a real journal."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transparent_de import cli

if TYPE_CHECKING:
    from conftest import CLI

ROOT = Path(__file__).resolve().parent.parent


def test_run_prints_result_and_is_memoized(tde: CLI) -> None:
    p = tde("run", "clitestflows.flows:Order.run", "7", "2", "--flow-id", "o1")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"order": 7, "total": 25.0}
    again = tde.json("run", "clitestflows.flows:Order.run", "7", "2", "--flow-id", "o1")
    assert again == {"flow_id": "o1", "result": {"order": 7, "total": 25.0}}
    fresh = tde.json("run", "clitestflows.flows:Order.run", "abc")  # not JSON: a string
    assert fresh["result"] == {"order": "abc", "total": 12.5}
    assert len(fresh["flow_id"]) == 32


def test_run_flow_failure_and_bad_target(tde: CLI) -> None:
    p = tde("run", "clitestflows.flows:Order.boom", "--flow-id", "b1")
    assert p.returncode == 1
    assert "kaboom" in p.stderr and "Traceback" not in p.stderr
    for target in ("nonsense", "clitestflows.flows:Nope.run", "no_such_module_x:A.b"):
        p = tde("run", target)
        assert p.returncode == 2, (target, p.stderr)
        assert "Traceback" not in p.stderr


def test_list_and_show(tde: CLI) -> None:
    assert tde("run", "clitestflows.flows:Order.run", "7", "--flow-id", "o1").returncode == 0
    assert tde("run", "clitestflows.flows:Order.boom", "--flow-id", "b1").returncode == 1
    p = tde("list")
    assert p.returncode == 0
    assert "o1" in p.stdout and "clitestflows.flows.Order.run" in p.stdout and "COMPLETE" in p.stdout
    flows = {f["flow_id"]: f for f in tde.json("list")}
    assert flows["o1"]["status"] == "COMPLETE" and flows["o1"]["steps"] == 2
    assert [f["flow_id"] for f in tde.json("list", "--status", "complete")] == ["o1"]
    assert tde("list", "--status", "bogus").returncode == 2

    shown = tde.json("show", "o1")
    steps = shown["steps"]
    assert [s["method"] for s in steps] == ["run", "load", "price"]
    assert steps[1]["arguments"] == "7" and steps[1]["result_value"] == {"id": 7}
    assert steps[0]["result_codec"] == "pickle"
    text = tde("show", "o1").stdout
    assert "price" in text and "{'id': 7}" in text


def test_unknown_flow_and_missing_journal(tde: CLI) -> None:
    missing = tde.tmp / "missing.db"
    for args in (["list"], ["show", "x"], ["doctor"], ["signal", "x", "confirm"], ["cancel", "x"]):
        p = tde("--db", str(missing), *args)
        assert p.returncode == 2, (args, p.stderr)
        assert "no journal" in p.stderr and "Traceback" not in p.stderr
        assert not missing.exists()
    assert tde("run", "clitestflows.flows:Order.run", "1").returncode == 0
    for args in (["show", "nope"], ["cancel", "nope"], ["signal", "nope", "confirm", "1"]):
        p = tde(*args)
        assert p.returncode == 2, (args, p.stderr)
        assert "nope" in p.stderr and "Traceback" not in p.stderr
    assert tde("no-such-command").returncode == 2


def test_signal_a_waiting_flow(tde: CLI) -> None:
    proc = tde.popen("run", "clitestflows.flows:Order.approval", '"bob"', "--flow-id", "w1", "--json")
    try:
        info = tde.wait_for_flow("w1")
        assert info["status"] in ("PENDING", "WAITING_FOR_SIGNAL")
        p = tde("signal", "w1", "confirm", "true", "--json")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["args"] == [True]
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert json.loads(out)["result"] == {"who": {"id": "bob"}, "ok": True}
    # The flow is finished: a second signal is refused as bad input.
    p = tde("signal", "w1", "confirm", "true")
    assert p.returncode == 2 and "COMPLETE" in p.stderr


def test_cancel(tde: CLI) -> None:
    assert tde("run", "clitestflows.flows:Order.boom", "--flow-id", "b1").returncode == 1
    p = tde("cancel", "b1", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"flow_id": "b1", "status": "CANCELLED"}
    assert tde.json("list", "--status", "cancelled")[0]["flow_id"] == "b1"
    p = tde("cancel", "b1")
    assert p.returncode == 2 and "CANCELLED" in p.stderr


def _crash(tde: CLI, flow_id: str) -> None:
    env = dict(tde.env, CLI_TEST_CRASH="1")
    p = tde("run", "clitestflows.flows:Order.crashy", "21", "--flow-id", flow_id, env=env)
    assert p.returncode == 3, p.stderr  # the process died inside a step


def test_recover(tde: CLI) -> None:
    _crash(tde, "c1")
    # The dead process's lease: recover() takes over once the owner pid is gone.
    results = tde.json("recover", "--wait", "30")
    assert results == [{"flow_id": "c1", "status": "COMPLETE", "result": 42}]
    assert tde.json("list")[0]["status"] == "COMPLETE"
    p = tde("recover")
    assert p.returncode == 0 and "no unfinished flows" in p.stdout


def test_worker_until_idle(tde: CLI) -> None:
    _crash(tde, "c2")
    p = tde("worker", "--until-idle", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["finished"] == ["c2"]
    assert tde.json("list")[0]["status"] == "COMPLETE"


def test_worker_stops_on_sigint(tde: CLI) -> None:
    assert tde("run", "clitestflows.flows:Order.run", "1").returncode == 0
    proc = tde.popen("worker")
    try:
        assert proc.stdout is not None
        assert "worker on" in proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "worker stopped" in out and "Traceback" not in err


def test_doctor(tde: CLI) -> None:
    assert tde("run", "clitestflows.flows:Order.run", "1").returncode == 0
    report = tde.json("doctor")
    assert report["ours"] is True and report["integrity"] == ["ok"]
    assert report["schema_version"] == report["supported_schema"]
    assert report["flows"] == {"COMPLETE": 1}
    assert report["interpreter_supported"] is True and report["problems"] == []
    assert tde("doctor").returncode == 0
    other = tde.tmp / "other.db"
    import sqlite3

    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.close()
    p = tde("--db", str(other), "doctor")
    assert p.returncode == 1 and "not a transparent_de journal" in p.stdout


def test_cache_clear(tde: CLI) -> None:
    env = dict(tde.env)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    assert tde("run", "clitestflows.flows:Order.run", "1", env=env).returncode == 0
    cache = tde.tmp / "src" / "clitestflows" / "__pycache__"
    ours = [p for p in cache.iterdir() if "-tde" in p.name]
    assert ours, list(cache.iterdir())
    (cache / "other.cpython-399-tde1.pyc").write_bytes(b"")  # another interpreter's
    (cache / "plain.cpython-399.pyc").write_bytes(b"")
    data = tde.json("cache", "clear", str(tde.tmp / "src"))
    assert sorted(data["removed"]) == sorted(str(p) for p in ours)
    assert not any(p.exists() for p in ours)
    assert (cache / "other.cpython-399-tde1.pyc").exists()
    tde("cache", "clear", "--all-interpreters")  # default DIR: the working directory
    assert not (cache / "other.cpython-399-tde1.pyc").exists()
    assert (cache / "plain.cpython-399.pyc").exists()


def _commands(parser: Any, prefix: str = "") -> list[str]:
    import argparse

    names = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix}{name}"
                nested = _commands(sub, full + " ")
                names += nested or [full]
    return names


def test_every_command_is_documented() -> None:
    commands = _commands(cli.build_parser())
    assert "run" in commands and "cache clear" in commands
    doc = (ROOT / "docs" / "cli.md").read_text()
    headings = set(re.findall(r"^### `transparent-de ([a-z ]+?)`", doc, re.M))
    assert set(commands) <= headings, set(commands) - headings
    assert headings <= set(commands), headings - set(commands)  # no docs for removed commands
