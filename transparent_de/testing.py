"""Testing your own flows: crash every engine crash point and check recovery.

:func:`assert_recovers` (and :func:`crash_sweep`, which reports instead of raising) run a
flow, then crash it at each engine crash point in turn, recover it, and compare with the
uncrashed run. ``transparent-de fuzz MODULE:Class.method`` does the same from the command
line. Nothing here needs pytest; the pytest plugin (fixture ``tde_engine``, flow classes in
test modules rewritten at collection) is :mod:`transparent_de._pytest_plugin`, registered
with pytest when the package is installed. See docs/testing.md.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._store import drop, exists, sibling
from .errors import TransparentDEError

# --------------------------------------------------------------------------- crash sweep


@dataclass
class SweepReport:
    """What :func:`crash_sweep` found; ``failures`` is empty when every crash point recovered."""

    crash_points: int = 0
    crashes_injected: int = 0
    recoveries: int = 0
    failures: list[str] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"crash points {self.crash_points}, crashes injected {self.crashes_injected}, "
            f"recoveries {self.recoveries}, divergences {len(self.failures)}"
        )


def _in_child(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Run ``fn`` in a forked child; return (exit status, what it sent back or None)."""
    import pickle

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the caller's stack
        os.close(r)
        code = 0
        try:
            payload = pickle.dumps(("ok", fn()))
        except BaseException as exc:  # reported to the parent, whatever it is
            try:
                payload = pickle.dumps(("raised", exc))
            except Exception:
                payload = pickle.dumps(("raised", RuntimeError(f"{type(exc).__name__}: {exc}")))
        with os.fdopen(w, "wb") as f:
            f.write(payload)
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), (pickle.loads(data) if data else None)


def _outcome(sent: Any) -> tuple[str, Any]:
    kind, value = sent
    if kind == "raised":
        return "raised", (type(value).__name__, str(value))
    return "ok", value


def crash_sweep(
    entry: Callable[..., Any],
    *args: Any,
    workdir: str | None = None,
    max_points: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    signals: Sequence[tuple[Any, ...]] = (),
    database: str | None = None,
    **kwargs: Any,
) -> SweepReport:
    """Crash a flow at every engine crash point, one at a time, recover it, and compare.

    ``entry`` is a bound entry method (``MyFlow().run``). First an uncrashed reference run
    counts the crash points and gives the expected outcome; then for each point k a forked
    child runs the flow on a fresh journal and dies there (``os._exit``), and a second child
    resumes it with the same id. Checked each time: the same result (or the same exception
    type and message), the flow COMPLETE or FAILED, ``PRAGMA integrity_check`` ok, and no step
    executed twice unless the crash fell inside it (``attempts`` in the journal).

    ``signals``: what a flow that calls ``wait_for`` is sent, as ``(step, *args)`` tuples,
    e.g. ``[("confirm", "token")]``; they are stored before the flow starts (a signal sent
    early is kept), so every wait finds its signal. A sweep whose reference run cannot run the
    flow at all (an engine error such as ``FlowNotRewrittenError``), or that reaches no crash
    point, is a failure, not an empty success.

    ``database``: sweep on another backend, e.g. a PostgreSQL URL; each run gets a schema of
    its own beside the URL's (``<schema>_sweep_<tag>_crash_<k>``), dropped at the end. By
    default each run gets a SQLite file in ``workdir``.

    Your steps' side effects really happen (in the children): point them at test doubles.
    Cost: about two runs of the flow per crash point (in forked children), plus two.
    """
    from . import _faults
    from ._engine import Engine
    from ._entries import bound_entry

    work = workdir or tempfile.mkdtemp(prefix="tde-sweep-")
    report = SweepReport()

    def run_on(db: str, plan: _faults.FaultPlan | None) -> Any:
        _faults.capture_override = deterministic_capture
        engine = Engine(db, durability="process", poll_interval=0.01, hmac_key=None)
        try:
            if signals and engine.store.status("sweep") is None:  # setup, outside the crash points
                obj, name, fn = bound_entry(entry)
                engine.runner.claim(obj, name, args, kwargs, "sweep", fn, create_only=True)
                for step, *signal_args in signals:
                    engine.signal("sweep", step, *signal_args)
            _faults.install(plan)
            return (
                engine.run(entry, *args, flow_id="sweep", **kwargs),
                (plan.hits if plan else 0),
                (dict(plan.labels) if plan else {}),
            )
        finally:
            _faults.install(None)
            engine.close()

    made: list[str] = []
    tag = uuid.uuid4().hex[:8]

    def journal(name: str) -> str:
        db = sibling(database, f"sweep_{tag}_{name}") if database else os.path.join(work, f"{name}.db")
        made.append(db)
        return db

    try:
        _sweep(run_on, journal, report, max_points, progress)
    finally:
        if database:
            for db in made:
                with contextlib.suppress(Exception):
                    drop(db)
        if workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return report


def _sweep(
    run_on: Callable[..., Any],
    journal: Callable[[str], str],
    report: SweepReport,
    max_points: int | None,
    progress: Callable[[int, int], None] | None,
) -> None:
    from . import _faults

    reference_db, counting_db = journal("reference"), journal("reference2")  # named here, not in a child
    status, sent = _in_child(lambda: run_on(reference_db, _faults.FaultPlan()))
    if sent is None or sent[0] != "ok":
        reference: tuple[str, Any] = _outcome(sent) if sent else ("died", status)
        if sent is not None and isinstance(sent[1], TransparentDEError):
            report.failures.append(
                f"the flow cannot run: {type(sent[1]).__name__}: {sent[1]} (nothing was swept)"
            )
            return
        # A flow that raises: still sweep it; count points with a separate counting child.
        status, counted = _in_child(lambda: _count(run_on, counting_db))
        points, labels = counted[1] if counted and counted[0] == "ok" else (0, {})
    else:
        value, points, labels = sent[1]
        reference = ("ok", value)
    report.labels = labels
    reference_attempts = _in_child(functools.partial(_attempts, reference_db))[1] if exists(reference_db) else None
    if points == 0:
        report.failures.append("no crash point was reached: the flow never wrote its journal")
        return
    total = points if max_points is None else min(points, max_points)
    report.crash_points = total
    for k in range(1, total + 1):
        db = journal(f"crash_{k}")
        status, _ = _in_child(functools.partial(run_on, db, _faults.FaultPlan(at=k, action="exit")))
        if status == _faults.CRASH_EXIT_CODE:
            report.crashes_injected += 1
        _, again = _in_child(functools.partial(_recover, run_on, db))
        report.recoveries += 1
        at_crash, got = again[1] if again and again[0] == "ok" else ({}, ("died", None))
        if got != reference:
            report.failures.append(f"crash point {k}: recovered outcome {got!r} != uncrashed {reference!r}")
        if exists(db):
            ref = reference_attempts[1] if reference_attempts and reference_attempts[0] == "ok" else {}
            failures = _check_journal(db, reference[0] == "ok", at_crash, ref)
            report.failures += [f"crash point {k}: {f}" for f in failures]
        if progress is not None:
            progress(k, total)


def _check_journal(
    db: str,
    completed: bool,
    at_crash: dict[str | int, tuple[str, int]],
    reference: dict[str | int, tuple[str, int]],
) -> list[str]:
    """What a recovered sweep journal must be: intact, the flow finished, and no step run again
    unless the crash interrupted it (its row PENDING at the crash), then once more at most.

    Steps are matched across runs by identity: an async flow's lineage slot, a sync flow's step
    number (an async flow's live step numbers depend on timing, its slots do not). Several steps
    of an async flow may be in flight at a crash; each of them may run again.
    """
    from ._store import inspect

    failures = []
    health = inspect(db)
    if health.integrity != ["ok"]:
        failures.append(f"integrity_check says {'; '.join(health.integrity)}")
    rows = _attempts(db, with_flow=True)
    row0 = rows.pop(0, None)
    if row0 is None or row0[0] not in ("COMPLETE", "FAILED", "PENDING"):
        failures.append(f"flow row is {row0[0] if row0 else None!r}")
    elif completed and row0[0] != "COMPLETE":
        failures.append(f"flow left {row0[0]} after recovery")
    for key, (_, attempts) in rows.items():
        extra = attempts - reference.get(key, ("", 1))[1]
        interrupted = at_crash.get(key, ("", 0))[0] == "PENDING"
        if extra > (1 if interrupted else 0):
            state = at_crash.get(key, ("absent", 0))[0]
            failures.append(f"step {key} ran {extra} more time(s) than uncrashed; its row was {state} at the crash")
    return failures


def _attempts(db: str, with_flow: bool = False) -> dict[str | int, tuple[str, int]]:
    """``{identity: (status, attempts)}`` of a sweep journal's step rows (and of row 0, as key
    0, with ``with_flow``). A signalled step's attempts count each wait entered: left out."""
    from ._store import exists, open_store

    if not exists(db):
        return {}
    store = open_store(db, readonly=True)
    try:
        rows = store.load_steps("sweep")
        flow = next((r for r in store.steps("sweep") if r.step == 0), None) if with_flow else None
    finally:
        store.close()
    found: dict[str | int, tuple[str, int]] = {} if flow is None else {0: (flow.status, flow.attempts)}
    for r in rows.values():
        if r.kind == "step":
            found[r.lineage or r.step] = (r.status, r.attempts)
    return found


def _recover(run_on: Callable[..., Any], db: str) -> tuple[dict[str | int, tuple[str, int]], tuple[str, Any]]:
    """In the recovery child: the crashed journal's step rows as the crash left them, then the
    outcome of resuming the flow."""
    at_crash = _attempts(db)
    try:
        return at_crash, ("ok", run_on(db, None)[0])
    except BaseException as exc:  # reported as the sweep compares outcomes
        return at_crash, _outcome(("raised", exc))


def _count(run_on: Callable[..., Any], db: str) -> tuple[int, dict[str, int]]:
    from . import _faults

    plan = _faults.FaultPlan()
    with contextlib.suppress(Exception):
        run_on(db, plan)
    return plan.hits, dict(plan.labels)


def assert_recovers(entry: Callable[..., Any], *args: Any, **kwargs: Any) -> SweepReport:
    """:func:`crash_sweep`, raising ``AssertionError`` with every divergence found."""
    report = crash_sweep(entry, *args, **kwargs)
    if report.failures:
        raise AssertionError(f"{report.summary()}:\n" + "\n".join(f"  - {f}" for f in report.failures[:20]))
    return report


def deterministic_capture(
    what: str, step: int, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Captured values as a function of the call's identity (for sweeps comparing separate runs).

    ``step`` is the run's :meth:`~._run.Run.identity` of the call: a sync flow's step number (a
    position in a deterministic flow), an async flow's lineage slot as a number (its live step
    numbers depend on timing). So an uncrashed run and a crashed, recovered one get the same
    "current time", random numbers and uuids at the same place.
    """
    import datetime as dt
    import random
    import uuid

    rng = random.Random(step)
    module, _, name = what.rpartition(".")
    if module == "time":
        base = 1_700_000_000 + step
        return base * 1_000_000_000 if name.endswith("_ns") else float(base)
    if module in ("datetime.datetime", "datetime.date"):
        moment = dt.datetime(2030, 1, 1) + dt.timedelta(seconds=step)
        return moment.date() if module == "datetime.date" else moment
    if module == "random":
        return getattr(rng, name)(*args, **kwargs)
    if module == "uuid":
        return uuid.UUID(int=rng.getrandbits(128), version=4)
    if what == "os.urandom":
        return rng.randbytes(int(args[0]))
    if module == "secrets":
        n = int(args[0]) if args and args[0] is not None else 32
        if name == "token_bytes":
            return rng.randbytes(n)
        if name == "token_hex":
            return rng.randbytes(n).hex()
        if name == "token_urlsafe":
            import base64

            return base64.urlsafe_b64encode(rng.randbytes(n)).rstrip(b"=").decode()
        if name == "randbelow":
            return rng.randrange(int(args[0]))
        if name == "randbits":
            return rng.getrandbits(int(args[0]))
        if name == "choice":
            return rng.choice(args[0])
    return fn(*args, **kwargs)
