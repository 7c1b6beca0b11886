"""Real crashes: SIGKILL inside steps and os._exit at every crash point, then recovery elsewhere.

Properties checked after every recovery: the result equals an uncrashed run's, every step
whose COMPLETE was committed before the crash ran exactly once, the step that was running
when the process died ran at most once more, and the journal passes ``integrity_check``.
Step executions are counted in an effects file opened with O_APPEND inside the steps.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import query

from transparent_de import Engine, _faults
from transparent_de._store import exists as store_exists
from transparent_de._store import inspect

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX only (fork, SIGKILL)")

FLOWS = """
import os
import signal


def effect(name):
    fd = os.open(os.environ["TDE_EFFECTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (name + "\\n").encode())
    finally:
        os.close(fd)
    if os.environ.get("TDE_KILL") == name:
        os.kill(os.getpid(), signal.SIGKILL)


class Pipeline:
    __flow__ = "run"

    def run(self, n):
        a = self.load(n)
        b = self.double(a)
        c = self.add(b, 3)
        return self.finish(c)

    def load(self, n):
        effect("load")
        return n + 1

    def double(self, a):
        effect("double")
        return a * 2

    def add(self, b, k):
        effect("add")
        return b + k

    def finish(self, c):
        effect("finish")
        return {"total": c}


class Tags:
    __flow__ = "run"

    def run(self, tags, opts):
        a = self.norm(tags)
        b = self.count(set(a), opts)
        return self.join(a, b, opts)

    def norm(self, tags):
        effect("norm")
        return sorted(tags)

    def count(self, s, opts):
        effect("count")
        return len(s) + len(opts)

    def join(self, a, b, opts):
        effect("join")
        return ",".join(a) + f"|{b}|" + ",".join(f"{k}={opts[k]}" for k in sorted(opts))
"""

DRIVER = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
import transparent_de
transparent_de.install("crashflows")
from crashflows.flows import Pipeline, Tags

mode, db = sys.argv[2], sys.argv[3]
eng = transparent_de.configure(database=db, durability="process", poll_interval=0.02, park_after=0.2)
TAGS = {f"tag{i}" for i in range(40)}
if mode == "pipeline":
    print(json.dumps(transparent_de.run(Pipeline().run, int(sys.argv[5]), flow_id=sys.argv[4])))
elif mode == "tags":
    keys = [f"k{i}" for i in range(20)]
    if sys.argv[5] == "reversed":
        keys.reverse()
    opts = {k: int(k[1:]) for k in keys}
    print(json.dumps(transparent_de.run(Tags().run, set(TAGS), opts, flow_id=sys.argv[4])))
elif mode == "recover":
    handles = transparent_de.recover()
    out = {}
    for h in handles:
        out[h.id] = h.result(timeout=30)
    print(json.dumps(out))
eng.close()
"""


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "crashflows").mkdir(parents=True)
    (src / "crashflows" / "__init__.py").write_text("")
    (src / "crashflows" / "flows.py").write_text(textwrap.dedent(FLOWS))
    (tmp_path / "driver.py").write_text(textwrap.dedent(DRIVER))
    return tmp_path


def child(proj: Path, *args: str, seed: int = 0, kill: str | None = None, effects: str = "effects") -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONHASHSEED=str(seed), TDE_EFFECTS=str(proj / effects))
    env.pop("TDE_KILL", None)
    env.pop("TRANSPARENT_DE_HMAC_KEY", None)
    if kill:
        env["TDE_KILL"] = kill
    return subprocess.Popen(
        [sys.executable, str(proj / "driver.py"), str(proj / "src"), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(p: subprocess.Popen[str], rc: int = 0) -> str:
    out, err = p.communicate(timeout=60)
    assert p.returncode == rc, err
    return out


def effects(path: Path) -> Counter[str]:
    return Counter(path.read_text().split()) if path.exists() else Counter()


def journal_state(db: str, flow_id: str) -> dict[str, str]:
    if not store_exists(db):
        return {}  # crashed before the schema was created
    try:
        return dict(query(db, "SELECT method_name, status FROM execution_log WHERE flow_id=? AND step>0", (flow_id,)))
    except sqlite3.OperationalError as exc:
        assert "no such table" in str(exc)
        return {}  # crashed while creating the schema (the file exists, its tables not yet)


def integrity_ok(db: str) -> None:
    assert inspect(db).integrity == ["ok"]  # SQLite: PRAGMA integrity_check


def check_recovered(before_fx: Counter[str], committed: set[str], after_fx: Counter[str], steps: list[str]) -> None:
    for name in committed:
        assert after_fx[name] == 1, (name, after_fx)
    reran = [s for s in steps if after_fx[s] == 2]
    for s in steps:
        assert 1 <= after_fx[s] <= 2, (s, after_fx)
    # Only a step that was started but whose result was not committed may run twice.
    assert len(reran) <= 1, after_fx
    for s in reran:
        assert s not in committed and before_fx[s] == 1


PIPE_STEPS = ["load", "double", "add", "finish"]
PIPE_RESULT = {"total": 15}  # n=5: (5+1)*2+3


@pytest.mark.parametrize("kill", ["load", "add", "finish"])
def test_sigkill_in_step_then_recover_in_fresh_process(proj: Path, kill: str, database: str) -> None:
    db = database
    p = child(proj, "pipeline", str(db), "p1", "5", seed=1, kill=kill)
    finish(p, rc=-9)
    before = effects(proj / "effects")
    committed = {m for m, s in journal_state(db, "p1").items() if s == "COMPLETE"}
    assert kill not in committed and before[kill] == 1
    out = json.loads(finish(child(proj, "recover", str(db), seed=2)))
    assert out == {"p1": PIPE_RESULT}
    after = effects(proj / "effects")
    check_recovered(before, committed, after, PIPE_STEPS)
    assert after[kill] == 2
    assert set(journal_state(db, "p1").values()) == {"COMPLETE"}
    # Re-running with the same id returns the memoized result and executes nothing.
    assert json.loads(finish(child(proj, "pipeline", str(db), "p1", "5", seed=3))) == PIPE_RESULT
    assert effects(proj / "effects") == after
    integrity_ok(db)


def test_exhaustive_crash_point_sweep_with_fork(
    proj: Path, monkeypatch: pytest.MonkeyPatch, fresh_database: Callable[[str], str]
) -> None:
    import transparent_de

    monkeypatch.syspath_prepend(str(proj / "src"))
    handle = transparent_de.install("crashflows")
    try:
        from crashflows.flows import Pipeline  # type: ignore[import-not-found]

        k = 0
        fired = 0
        while True:
            k += 1
            assert k < 200, "the sweep does not terminate"
            db = fresh_database(f"sweep{k}")
            fx = proj / f"fx{k}"
            monkeypatch.setenv("TDE_EFFECTS", str(fx))
            for t in threading.enumerate():  # a closed engine's threads end soon: fork without them
                if t.name.startswith("tde-"):
                    t.join(timeout=5)
            pid = os.fork()
            if pid == 0:  # child: crash at the k-th crash point, never return into pytest
                code = 3
                try:
                    _faults.install(_faults.FaultPlan(at=k, action="exit"))
                    eng = Engine(db, durability="process")
                    eng.run(Pipeline().run, 5, flow_id="sweep")
                    code = 0
                except BaseException:
                    code = 4
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            assert code in (0, _faults.CRASH_EXIT_CODE), (k, code)
            before = effects(fx)
            committed = (
                {m for m, s in journal_state(db, "sweep").items() if s == "COMPLETE"}
            )
            if code == 0:
                assert before == Counter(PIPE_STEPS)
                break
            fired += 1
            # Recover in the parent with a new engine on the same file.
            eng = Engine(db, durability="process", poll_interval=0.01)
            try:
                handles = eng.recover() if k % 2 else []
                if handles:
                    assert [h.id for h in handles] == ["sweep"]
                    result = handles[0].result(timeout=10)
                else:
                    result = eng.run(Pipeline().run, 5, flow_id="sweep")
                assert result == PIPE_RESULT, k
                assert eng.run(Pipeline().run, 5, flow_id="sweep") == PIPE_RESULT
            finally:
                eng.close()
            after = effects(fx)
            check_recovered(before, committed, after, PIPE_STEPS)
            integrity_ok(db)
        assert fired >= 30, fired  # every journal boundary of a 4-step flow was hit
        print(f"crash points swept: {fired}")
    finally:
        handle.uninstall()
        for name in [m for m in sys.modules if m == "crashflows" or m.startswith("crashflows.")]:
            del sys.modules[name]


@pytest.mark.parametrize("nproc", [2, 4])
def test_concurrent_recover_runs_each_flow_once(proj: Path, nproc: int, database: str) -> None:
    db = database
    kills = ["load", "double", "add", "finish"]
    for i in range(4):  # four flows, each killed inside another step
        finish(child(proj, "pipeline", str(db), f"c{i}", "5", seed=i, kill=kills[i]), rc=-9)
    before = effects(proj / "effects")
    committed = {f"c{i}": {m for m, s in journal_state(db, f"c{i}").items() if s == "COMPLETE"} for i in range(4)}
    procs = [child(proj, "recover", str(db), seed=10 + j) for j in range(nproc)]
    outs = [json.loads(finish(p)) for p in procs]
    seen = {fid: v for out in outs for fid, v in out.items()}
    assert set(seen) <= {f"c{i}" for i in range(4)}
    assert all(v == PIPE_RESULT for v in seen.values())
    after = effects(proj / "effects")
    # All four flows share one effects file: each step ran once per flow, plus once more for
    # the one flow killed inside it; nothing committed ran again, each flow finished once.
    for i, c in committed.items():
        assert kills[int(i[1:])] not in c
    for s in PIPE_STEPS:
        assert before[s] == 1 + sum(PIPE_STEPS.index(k) > PIPE_STEPS.index(s) for k in kills)
        assert after[s] == 5, (s, before, after)
    assert query(db, "SELECT flow_id, status FROM flows ORDER BY flow_id") == [(f"c{i}", "COMPLETE") for i in range(4)]
    integrity_ok(db)


def test_set_and_dict_arguments_are_stable_across_hash_seeds(proj: Path, database: str) -> None:
    db = database
    finish(child(proj, "tags", str(db), "t1", "forward", seed=1, kill="join"), rc=-9)
    committed = {m for m, s in journal_state(db, "t1").items() if s == "COMPLETE"}
    assert committed == {"norm", "count"}
    # Re-run by id: different hash seed (set order) and a dict built in the reverse order.
    out = json.loads(finish(child(proj, "tags", str(db), "t1", "reversed", seed=2)))
    assert out.startswith("tag0,tag1,") and "|60|" in out
    assert effects(proj / "effects") == Counter({"norm": 1, "count": 1, "join": 2})
    # And through recover() under yet another seed.
    finish(child(proj, "tags", str(db), "t2", "reversed", seed=3, kill="join", effects="fx2"), rc=-9)
    rec = json.loads(finish(child(proj, "recover", str(db), seed=4, effects="fx2")))
    assert rec == {"t2": out}
    assert effects(proj / "fx2") == Counter({"norm": 1, "count": 1, "join": 2})
    integrity_ok(db)


CHILD_FLOWS = """
import time

class Shipping:
    __flow__ = "ship"

    def ship(self, n):
        label = self.label(n)
        return self.dispatch(label)

    def label(self, n):
        return f"L{n}"

    def dispatch(self, label):
        time.sleep(0.3)  # plain: inside a step; the child is mid-way for a while
        return label + "-sent"


class Order:
    __flow__ = "run"

    def run(self, n):
        order = self.order(n)
        sum(range(3_000_000))  # flow-level work: a child scheduled on its own would get there first
        return [order, Shipping().ship(order)]

    def order(self, n):
        return n * 10
"""


def test_recover_resumes_a_crashed_child_through_its_parent(
    flow_module, fresh_database: Callable[[str], str]
) -> None:
    """A crash inside a child flow leaves parent and child unfinished: recover() resumes the
    child from its parent's child step only (scheduling both raced: the parent's run failed with
    FlowBusyError and backed off, counting towards its dead letter)."""
    m = flow_module(CHILD_FLOWS)
    for t in threading.enumerate():
        if t.name.startswith("tde-"):
            t.join(timeout=5)
    for attempt in range(3):
        db = fresh_database(f"child{attempt}")
        pid = os.fork()
        if pid == 0:  # crash once the child's first result is committed (with its second intent)
            code = 3
            try:
                # intents: the parent's order (1) and child step (2), the child's label (3), dispatch (4)
                _faults.install(_faults.FaultPlan(at=4, label="step.intent.after_commit", action="exit"))
                Engine(db, durability="process").run(m.Order().run, 4, flow_id="o")
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == _faults.CRASH_EXIT_CODE
        assert journal_state(db, "o.2") != {}, "the crash did not fall inside the child"
        eng = Engine(db, durability="process", poll_interval=0.01)
        try:
            handles = {h.id: h for h in eng.recover()}
            assert set(handles) == {"o", "o.2"}
            assert handles["o"].result(timeout=20) == [40, "L40-sent"]
            assert handles["o.2"].result(timeout=20) == "L40-sent"
            assert eng.store.status("o") == eng.store.status("o.2") == "COMPLETE"
            assert eng.failed_runs == 0, "the parent failed on its own child (FlowBusyError) and backed off"
        finally:
            eng.close()
