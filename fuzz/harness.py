"""Crash-recovery harness: oracle run, crashed runs in forked children, recovery, properties.

The parent never holds an open SQLite connection while it forks: every Engine is created in
a child (which ends with ``os._exit``); the parent only opens the journal with ``sqlite3``
to check it after the last child is gone.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import dataclasses
import importlib
import inspect
import itertools
import os
import pickle
import shutil
import sqlite3
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import transparent_de
from transparent_de import _faults, _guard

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
    power_loss_states: int = 0
    swept: int = 0  # crash schedules run by the exhaustive sweep
    planted_caught: int = 0

    def line(self) -> str:
        return (
            f"fuzz: flows run {self.flows}, crash points hit {self.crash_points}, crashes injected "
            f"{self.crashes}, sweep schedules {self.swept}, power-loss states {self.power_loss_states}, "
            f"divergences {self.divergences}, lost flows {self.lost_flows}, duplicate committed effects "
            f"{self.duplicate_effects}, corrupt journals {self.corrupt_journals}, planted bugs caught "
            f"{self.planted_caught}"
        )


STATS = Stats()


@contextlib.contextmanager
def planted_bug(name: str) -> Iterator[None]:
    """Switch a planted engine bug on (forked children inherit it); what it makes fail is not
    counted in :data:`STATS`.

    The violations a planted bug causes are the point of the exercise, so the summary line
    reports only how many bugs were caught, and keeps counting real runs.
    """
    from fuzz.planted import planted

    saved = dataclasses.replace(STATS)
    try:
        with planted(name):
            yield
    finally:
        caught = STATS.planted_caught
        for f in dataclasses.fields(Stats):
            setattr(STATS, f.name, getattr(saved, f.name))
        STATS.planted_caught = caught


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
    # An async flow's steps run in an order that depends on timing (the journal's step numbers
    # follow their calls, the effects file their completions): compared as multisets, and by
    # slot against an uncrashed run (:func:`count_points`).
    ordered: bool = True


def oracle(source: str, workdir: str) -> Oracle:
    """The same class executed as plain Python (no hook), re-run after an escaped exception."""
    effects = os.path.join(workdir, "oracle-effects")
    # Plain Python: no hook, and not the guard that refuses unrewritten flow classes either.
    plain = dict(vars(builtins), __build_class__=_guard._build_class)
    ns: dict[str, Any] = {"__name__": "fuzz_oracle", "__builtins__": plain}
    exec(compile(source, "<fuzz-oracle>", "exec"), ns)
    ns["EFFECTS"] = effects
    signals: collections.deque[Any] = collections.deque()
    ns["SIGNAL"] = lambda flow_id, step, *args: signals.append(args)
    ns["wait_for"] = lambda step, timeout=None: step(*signals.popleft())
    is_async = inspect.iscoroutinefunction(ns["Flow"].run)
    for _ in range(3):
        before = len(_effects(effects))
        try:
            result = asyncio.run(ns["Flow"]().run()) if is_async else ns["Flow"]().run()
        except Exception:
            continue
        lines = _effects(effects)[before:]
        seq = [(ln.split("|")[0], "FAILED" if ln.startswith("boom|") else "COMPLETE") for ln in lines]
        counts = collections.Counter(lines)
        return Oracle(result, seq, counts, collections.Counter(_effects(effects)), ordered=not is_async)
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
    synced: int = 0  # record_acks: WAL bytes covered by the last fsync of the WAL
    acks: list[dict[Any, Any]] = field(default_factory=list)  # record_acks: completed rows at the last ack


class _AckPlan(_faults.FaultPlan):
    """Records, at every point that follows a ``sync()``, the completed rows made durable so far.

    A step's result is carried into the next step's intent commit, which ``full`` mode syncs
    before the next body runs: the point after it acknowledges the previous result.
    """

    ACKS = frozenset(
        {
            "step.intent.after_commit",
            "step.error.after_commit",
            "flow.complete.after_commit",
            "sleep.after_deadline_written",
            "signal.wait.after_write",
        }
    )
    db: str = ""
    acks: list[dict[Any, Any]]

    def hit(self, label: str) -> None:
        if label in self.ACKS:
            from fuzz.powerloss import _completed, read_state

            self.acks[:] = [_completed(read_state(self.db)[1])]
        super().hit(label)


def _watch_fsync(wal: str, synced: list[int]) -> None:
    """In a child: remember how many WAL bytes each ``os.fsync`` of the WAL made durable."""
    real = os.fsync

    def fsync(fd: Any) -> None:
        real(fd)
        st = os.fstat(fd)
        try:
            w = os.stat(wal)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == (w.st_dev, w.st_ino):
            synced[0] = st.st_size

    os.fsync = fsync


def run_in_child(
    module: ModuleType,
    db: str,
    workdir: str,
    at: int | None,
    durability: str = "process",
    record_acks: bool = False,
    key: str | None = None,
) -> Outcome:
    """Run (or resume) the flow in a forked child with ``FaultPlan(at=at)`` (signed with ``key``).

    A crash is ``os._exit`` with the journal left open, as a kill would leave it. The child
    inherits the parent's planted bug, if any (:func:`planted_bug`).
    """
    out = os.path.join(workdir, "outcome.pickle")
    if os.path.exists(out):
        os.unlink(out)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            plan: _faults.FaultPlan
            synced = [0]
            if record_acks:
                plan = _AckPlan(at=at)
                plan.db, plan.acks = db, []
                _watch_fsync(db + "-wal", synced)
            else:
                plan = _faults.FaultPlan(at=at)

            def crash(label: str, hit: int) -> None:
                acks = getattr(plan, "acks", [])
                with open(out, "wb") as f:
                    pickle.dump(Outcome("crash", None, list(plan.trace), synced[0], acks), f)
                os._exit(_faults.CRASH_EXIT_CODE)

            plan.action = crash
            _faults.install(plan)
            engine = transparent_de.Engine(database=db, durability=durability, hmac_key=key)
            module.SIGNAL = engine.signal  # type: ignore[attr-defined]
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

_prepared: dict[str, tuple[Oracle, ModuleType]] = {}


def prepare(source: str) -> tuple[Oracle, ModuleType]:
    """The oracle's outcome and the module imported through the hook, once per source.

    Both are deterministic in the source, and every durable run happens in a forked child
    that cannot change the parent's module, so the sweep's hundreds of runs of one flow share
    them (the children only get a fresh journal and effects file each).
    """
    if source not in _prepared:
        if len(_prepared) > 16:
            # Forget the old modules too: a fork copies the whole process, so a parent that
            # kept every generated module would fork ever more slowly over a long run.
            for _orc, old in _prepared.values():
                pkg = old.__name__.rpartition(".")[0]
                sys.modules.pop(old.__name__, None)
                sys.modules.pop(pkg, None)
            _prepared.clear()
            _shapes.clear()
        workdir = tempfile.mkdtemp(prefix="tdefuzz-prep-")
        try:
            _prepared[source] = (oracle(source, workdir), load_module(source, workdir))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return _prepared[source]


#: source -> the journal of its uncrashed run by slot (async flows; see :func:`slot_shape`)
_shapes: dict[str, collections.Counter[tuple[Any, ...]]] = {}


def slot_shape(db: str) -> collections.Counter[tuple[Any, ...]]:
    """An async flow's journal by slot: ``(lineage, class, method, kind, status)`` of each row.

    Slots are the identity of an async flow's calls (docs/async.md), so an uncrashed run and a
    crashed, recovered one must have the same rows by slot whatever step numbers they got.
    """
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "SELECT lineage, class_name, method_name, kind, status FROM execution_log "
            "WHERE flow_id = ? AND step > 0",
            (FLOW_ID,),
        ).fetchall()
    finally:
        con.close()
    return collections.Counter(tuple(r) for r in rows)


def count_points(source: str, durability: str = "process", key: str | None = None) -> int:
    """Crash points hit by one fault-free run of the flow (a counting FaultPlan)."""
    workdir = tempfile.mkdtemp(prefix="tdefuzz-")
    try:
        module = prepare(source)[1]
        module.EFFECTS = os.path.join(workdir, "effects")  # type: ignore[attr-defined]
        db = os.path.join(workdir, "journal.db")
        for _ in range(3):
            outcome = run_in_child(module, db, workdir, None, durability, key=key)
            if outcome.status == "ok":
                if not prepare(source)[0].ordered:
                    _shapes[source] = slot_shape(db)
                return len(outcome.trace)
        raise PropertyFailure(f"fault-free run did not complete: {outcome.value}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def check(source: str, schedule: list[int], durability: str = "process", key: str | None = None) -> None:
    """Crash at each hit number in ``schedule`` (one per run), then finish; assert the properties."""
    workdir = tempfile.mkdtemp(prefix="tdefuzz-")
    STATS.flows += 1
    try:
        orc, module = prepare(source)
        effects = os.path.join(workdir, "effects")
        module.EFFECTS = effects  # type: ignore[attr-defined]
        db = os.path.join(workdir, "journal.db")
        crashes = 0
        outcomes: list[Outcome] = []
        for at in [*schedule, None, None, None]:
            outcome = run_in_child(module, db, workdir, at, durability, key=key)
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
        _check_journal(db, orc, outcomes, _shapes.get(source))
        _check_effects(effects, orc, crashes + sum(o.status == "error" for o in outcomes))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _check_result(value: Any, orc: Oracle) -> None:
    if value != orc.result:
        STATS.divergences += 1
        raise PropertyFailure(
            f"result diverges from the oracle:\n  got      {value!r}\n  expected {orc.result!r}"
        )


def _check_journal(
    db: str, orc: Oracle, outcomes: list[Outcome], shape: collections.Counter[tuple[Any, ...]] | None = None
) -> None:
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
                "SELECT method_name, status FROM execution_log WHERE flow_id = ? AND kind IN ('step', 'signal') "
                "ORDER BY step",
                (FLOW_ID,),
            )
        ]
        lineages = [
            ln
            for (ln,) in con.execute(
                "SELECT lineage FROM execution_log WHERE flow_id = ? AND step > 0", (FLOW_ID,)
            )
        ]
    finally:
        con.close()
    same = seq == orc.sequence if orc.ordered else sorted(seq) == sorted(orc.sequence)
    if not same:
        STATS.divergences += 1
        raise PropertyFailure(f"journal steps diverge:\n  got      {seq}\n  expected {orc.sequence}")
    if not orc.ordered:
        if None in lineages or len(set(lineages)) != len(lineages):
            STATS.divergences += 1
            raise PropertyFailure(
                f"async journal rows without a slot, or sharing one: {sorted(map(str, lineages))}"
            )
        got = slot_shape(db)
        if shape is not None and got != shape:
            STATS.divergences += 1
            raise PropertyFailure(
                f"journal by slot diverges from the uncrashed run:\n  got      {sorted(got)}\n"
                f"  expected {sorted(shape)}"
            )
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
    on_fail: Callable[[Any, Exception], None] | None = None,
    stop_at_first: bool = False,
    durability: str = "process",
    pairs: bool = False,
    key: str | None = None,
) -> int:
    """A crash at every crash point k of ``source``, one per run; returns how many runs failed.

    With ``pairs`` every schedule ``[k1, k2]`` is run: a crash at k1, then a crash at the
    k2-th point of the recovering run (a crash during recovery), then recovery.
    """
    try:
        n = count_points(source, durability, key)
    except PropertyFailure as exc:
        STATS.divergences += 1
        if on_fail is not None:
            on_fail(0, exc)
        return 1
    failed = 0
    schedules = (
        [[k1, k2] for k1 in range(1, n + 1) for k2 in range(1, n + 1)]
        if pairs
        else [[k] for k in range(1, n + 1)]
    )
    for k in schedules:
        STATS.swept += 1
        try:
            check(source, k, durability, key)
        except PropertyFailure as exc:
            failed += 1
            if on_fail is not None:
                on_fail(k, exc)
            if stop_at_first:
                break
    return failed
