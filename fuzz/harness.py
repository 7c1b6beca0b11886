"""Crash-recovery harness: oracle run, crashed runs in forked children, recovery, properties.

The parent never holds an open SQLite connection while it forks: every Engine is created in
a child (which ends with ``os._exit``); the parent only opens the journal with ``sqlite3``
to check it after the last child is gone.
"""

from __future__ import annotations

import collections
import importlib
import itertools
import os
import pickle
import shutil
import sqlite3
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import transparent_de
from transparent_de import _faults

FLOW_ID = "fuzz-flow"
_pkg_counter = itertools.count()


@dataclass
class Stats:
    flows: int = 0
    crash_points: int = 0
    crashes: int = 0
    divergences: int = 0
    lost_flows: int = 0
    duplicate_effects: int = 0
    corrupt_journals: int = 0

    def line(self) -> str:
        return (
            f"fuzz: flows run {self.flows}, crash points hit {self.crash_points}, crashes injected "
            f"{self.crashes}, divergences {self.divergences}, lost flows {self.lost_flows}, "
            f"duplicate committed effects {self.duplicate_effects}, corrupt journals {self.corrupt_journals}"
        )


STATS = Stats()


class PropertyFailure(AssertionError):
    pass


# ---------------------------------------------------------------- oracle


def _effects(path: str) -> list[str]:
    try:
        with open(path) as f:
            return [ln.rstrip("\n") for ln in f]
    except FileNotFoundError:
        return []


@dataclass
class Oracle:
    result: Any
    sequence: list[tuple[str, str]]  # (method, status) of each step call of the successful run
    last_counts: collections.Counter[str]
    all_counts: collections.Counter[str]


def oracle(source: str, workdir: str) -> Oracle:
    """The same class executed as plain Python (no hook), re-run after an escaped exception."""
    effects = os.path.join(workdir, "oracle-effects")
    ns: dict[str, Any] = {"__name__": "fuzz_oracle"}
    exec(compile(source, "<fuzz-oracle>", "exec"), ns)
    ns["EFFECTS"] = effects
    for _ in range(3):
        before = len(_effects(effects))
        try:
            result = ns["Flow"]().run()
        except Exception:
            continue
        lines = _effects(effects)[before:]
        seq = [(ln.split("|")[0], "FAILED" if ln.startswith("boom|") else "COMPLETE") for ln in lines]
        return Oracle(result, seq, collections.Counter(lines), collections.Counter(_effects(effects)))
    raise RuntimeError("oracle flow never succeeded")


# ---------------------------------------------------------------- durable runs in children


def load_module(source: str, workdir: str) -> ModuleType:
    pkg = f"tdefuzz{os.getpid()}_{next(_pkg_counter)}"
    root = os.path.join(workdir, "src")
    os.makedirs(os.path.join(root, pkg))
    with open(os.path.join(root, pkg, "__init__.py"), "w"):
        pass
    with open(os.path.join(root, pkg, "flows.py"), "w") as f:
        f.write(source)
    sys.path.insert(0, root)
    try:
        handle = transparent_de.install(pkg)
        importlib.invalidate_caches()
        try:
            return importlib.import_module(f"{pkg}.flows")
        finally:
            handle.uninstall()
    finally:
        sys.path.remove(root)


@dataclass
class Outcome:
    status: str  # "ok", "crash", "error"
    value: Any = None
    trace: list[str] = field(default_factory=list)


def run_in_child(module: ModuleType, db: str, workdir: str, at: int | None, planted: str | None) -> Outcome:
    """Run (or resume) the flow in a forked child with ``FaultPlan(at=at)``."""
    out = os.path.join(workdir, "outcome.pickle")
    if os.path.exists(out):
        os.unlink(out)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            if planted is not None:
                _faults.planted_bug = planted
            plan = _faults.FaultPlan(at=at)

            def crash(label: str, hit: int) -> None:
                with open(out, "wb") as f:
                    pickle.dump(Outcome("crash", None, list(plan.trace)), f)
                os._exit(_faults.CRASH_EXIT_CODE)

            plan.action = crash
            _faults.install(plan)
            engine = transparent_de.Engine(database=db, durability="process")
            try:
                result = engine.run(module.Flow().run, flow_id=FLOW_ID)
                outcome = Outcome("ok", result, list(plan.trace))
            except Exception as exc:
                outcome = Outcome("error", f"{type(exc).__name__}: {exc}", list(plan.trace))
            finally:
                _faults.install(None)
                engine.close()
            with open(out, "wb") as f:
                pickle.dump(outcome, f)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, _faults.CRASH_EXIT_CODE) or not os.path.exists(out):
        raise PropertyFailure(f"child died unexpectedly (exit {code})")
    with open(out, "rb") as fin:
        loaded: Outcome = pickle.load(fin)
    return loaded


# ---------------------------------------------------------------- the property


def count_points(source: str, planted: str | None = None) -> int:
    """Crash points hit by one fault-free run of the flow (a counting FaultPlan)."""
    workdir = tempfile.mkdtemp(prefix="tdefuzz-")
    try:
        module = load_module(source, workdir)
        module.EFFECTS = os.path.join(workdir, "effects")  # type: ignore[attr-defined]
        db = os.path.join(workdir, "journal.db")
        for _ in range(3):
            outcome = run_in_child(module, db, workdir, None, planted)
            if outcome.status == "ok":
                return len(outcome.trace)
        raise PropertyFailure(f"fault-free run did not complete: {outcome.value}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def check(source: str, schedule: list[int], planted: str | None = None) -> None:
    """Crash at each hit number in ``schedule`` (one per run), then finish; assert the properties."""
    workdir = tempfile.mkdtemp(prefix="tdefuzz-")
    STATS.flows += 1
    try:
        orc = oracle(source, workdir)
        module = load_module(source, workdir)
        effects = os.path.join(workdir, "effects")
        module.EFFECTS = effects  # type: ignore[attr-defined]
        db = os.path.join(workdir, "journal.db")
        crashes = 0
        outcomes: list[Outcome] = []
        for at in [*schedule, None, None, None]:
            outcome = run_in_child(module, db, workdir, at, planted)
            outcomes.append(outcome)
            STATS.crash_points += len(outcome.trace)
            if outcome.status == "crash":
                crashes += 1
                STATS.crashes += 1
            if outcome.status == "ok" and at is None:
                break
        final = outcomes[-1]
        if final.status != "ok":
            STATS.divergences += 1
            raise PropertyFailure(f"flow did not complete after recovery: {final.value}")
        _check_result(final.value, orc)
        _check_journal(db, orc, outcomes)
        _check_effects(effects, orc, crashes + sum(o.status == "error" for o in outcomes))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _check_result(value: Any, orc: Oracle) -> None:
    if value != orc.result:
        STATS.divergences += 1
        raise PropertyFailure(
            f"result diverges from the oracle:\n  got      {value!r}\n  expected {orc.result!r}"
        )


def _check_journal(db: str, orc: Oracle, outcomes: list[Outcome]) -> None:
    con = sqlite3.connect(db)
    try:
        ok = con.execute("PRAGMA integrity_check").fetchone()[0]
        if ok != "ok":
            STATS.corrupt_journals += 1
            raise PropertyFailure(f"integrity_check: {ok}")
        flow = con.execute("SELECT status FROM flows WHERE flow_id = ?", (FLOW_ID,)).fetchone()
        row0 = con.execute(
            "SELECT status, attempts FROM execution_log WHERE flow_id = ? AND step = 0", (FLOW_ID,)
        ).fetchone()
        if flow is None or flow[0] != "COMPLETE" or row0 is None or row0[0] != "COMPLETE":
            STATS.lost_flows += 1
            raise PropertyFailure(f"flow not COMPLETE in the journal: flows={flow} step0={row0}")
        seq = [
            (m, s)
            for m, s in con.execute(
                "SELECT method_name, status FROM execution_log WHERE flow_id = ? AND kind = 'step' ORDER BY step",
                (FLOW_ID,),
            )
        ]
    finally:
        con.close()
    if seq != orc.sequence:
        STATS.divergences += 1
        raise PropertyFailure(f"journal steps diverge:\n  got      {seq}\n  expected {orc.sequence}")
    # Every run that claimed the flow while it was unfinished counts one attempt of step 0.
    expected, done = 0, False
    for o in outcomes:
        claimed = o.status != "crash" or "flow.start.after_commit" in o.trace
        if claimed and not done:
            expected += 1
        done = done or "flow.complete.after_commit" in o.trace
    if row0[1] != expected:
        STATS.divergences += 1
        raise PropertyFailure(f"step 0 attempts {row0[1]}, expected {expected} (one per claiming run)")


def _check_effects(path: str, orc: Oracle, interruptions: int) -> None:
    counts = collections.Counter(_effects(path))
    for key in set(counts) | set(orc.last_counts):
        lo = orc.last_counts[key]
        hi = orc.all_counts[key] + interruptions
        if not lo <= counts[key] <= hi:
            if counts[key] > hi:
                STATS.duplicate_effects += 1
            else:
                STATS.divergences += 1
            raise PropertyFailure(f"effect {key!r} executed {counts[key]} times, expected {lo}..{hi}")


def sweep(
    source: str,
    planted: str | None = None,
    on_fail: Callable[[int, Exception], None] | None = None,
    stop_at_first: bool = False,
) -> int:
    """Single crash at every crash point k of ``source``; returns how many k failed (k=0: no crash)."""
    try:
        n = count_points(source, planted)
    except PropertyFailure as exc:
        STATS.divergences += 1
        if on_fail is not None:
            on_fail(0, exc)
        return 1
    failed = 0
    for k in range(1, n + 1):
        try:
            check(source, [k], planted)
        except PropertyFailure as exc:
            failed += 1
            if on_fail is not None:
                on_fail(k, exc)
            if stop_at_first:
                break
    return failed
