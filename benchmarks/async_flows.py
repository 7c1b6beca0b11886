"""Async flows (issue #16), each workload next to a baseline measured in the same run.

    python benchmarks/async_flows.py [--quick] [--dbos-1000]

1. per-step cost of an async step against a sync step, same durability, one flow of N steps;
   system calls and fsyncs per step (``strace -f -c``, as benchmarks/syscalls.py);
2. 1,000 concurrent async flows x 10 steps whose bodies ``await asyncio.sleep(0.01)``, on one
   event loop, against the same work as 1,000 sync flows on threads (``Engine.start``);
3. the event loop's lateness (a task ticking every 1 ms on the same loop) while async flows
   run, and how long one journal write (commit, fsync) blocks the loop;
4. DBOS async workflows and steps on SQLite, same machine, same run (its own venv);
5. 10,000 async flows sleeping in ``await asyncio.sleep(3600)`` in one process: RSS per
   flow and time to start them, awaited in place (a foreground flow) and parked (started with
   ``start_async``: the task ends, the scheduler keeps a wake-up), against the same coroutines
   in plain asyncio.

Prints one markdown table and writes ``benchmarks/results/async.md`` and ``async.json``
(``async-quick.*`` with ``--quick``, a smoke run of a few seconds). Figures are medians of the
repetitions with min-max in brackets; compare only numbers from one run (docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, HERE)
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)

import run  # noqa: E402  (installs the hook for bench_flows; its stats, floor and DBOS venv)
import syscalls  # noqa: E402
from bench_flows.async_flows import (  # noqa: E402  (rewritten: run installed the hook)
    AsyncIOFlow,
    AsyncParkFlow,
    AsyncStepFlow,
    PlainAsyncParkFlow,
    SyncIOFlow,
)
from bench_flows.flows import StepFlow  # noqa: E402

import transparent_de  # noqa: E402
from transparent_de._store.sqlite import SQLiteStore  # noqa: E402
from transparent_de._store.sqlite_file import SQLiteFile  # noqa: E402

Cfg = dict[str, Any]
Out = dict[str, Any]

FULL: Cfg = {
    "reps": 3, "n": 2000, "sys_n": 2000, "sys_full_n": 500, "flows": 1000, "steps": 10, "pause": 0.01,
    "many_reps": 2, "pool_reps": 1, "light_steps": 100, "idle_s": 0.5, "dbos_n": 200, "dbos_flows": 100,
    "park_n": 10_000, "park_reps": 2,
}
QUICK: Cfg = {
    "reps": 1, "n": 100, "sys_n": 100, "sys_full_n": 50, "flows": 50, "steps": 4, "pause": 0.01,
    "many_reps": 1, "pool_reps": 1, "light_steps": 10, "idle_s": 0.1, "dbos_n": 20, "dbos_flows": 10,
    "park_n": 200, "park_reps": 1, "quick": True,
}


# --------------------------------------------------------------------------- helpers


def use_journal(durability: str) -> transparent_de.Engine:
    """A fresh journal as the default engine (what ``await Flow().run(...)`` uses)."""
    return transparent_de.configure(database=run._db(), durability=durability, hmac_key=None)


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * q))] if s else 0.0


def lateness(samples: list[float]) -> dict[str, float]:
    """Max, p99 and median lateness of the ticks, in ms."""
    return {"max_ms": max(samples, default=0.0) * 1e3, "p99_ms": pct(samples, 0.99) * 1e3,
            "p50_ms": pct(samples, 0.5) * 1e3, "ticks": len(samples)}


@contextlib.contextmanager
def fsync_count() -> Iterator[list[int]]:
    """Count ``os.fsync`` calls of every thread (the journal looks it up at each call)."""
    real, count = os.fsync, [0]

    def counted(fd: int) -> None:
        count[0] += 1
        real(fd)

    os.fsync = counted
    try:
        yield count
    finally:
        os.fsync = real


@contextlib.contextmanager
def timed_writes(thread: int) -> Iterator[dict[str, list[float]]]:
    """Durations (s) of the journal's commits and fsyncs made on ``thread`` (the loop's)."""
    got: dict[str, list[float]] = {"commit": [], "sync": []}
    saved = {"commit": SQLiteStore.commit, "sync": SQLiteFile.sync}

    def wrap(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def timed(self: Any, *args: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return real(self, *args)
            finally:
                if threading.get_ident() == thread:
                    got[name].append(time.perf_counter() - t0)

        return timed

    SQLiteStore.commit = wrap("commit", saved["commit"])  # type: ignore[method-assign]
    SQLiteFile.sync = wrap("sync", saved["sync"])  # type: ignore[method-assign]
    try:
        yield got
    finally:
        SQLiteStore.commit = saved["commit"]  # type: ignore[method-assign]
        SQLiteFile.sync = saved["sync"]  # type: ignore[method-assign]


async def tick(stop: asyncio.Event, late: list[float], period: float = 0.001) -> None:
    """Wake every ``period`` s on the running loop; record how late each wake-up came."""
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(period)
        late.append(time.perf_counter() - t0 - period)


async def with_ticker(work: Awaitable[Any], late: list[float]) -> float:
    """Wall seconds of ``work`` with a 1 ms ticker running beside it on the same loop."""
    stop = asyncio.Event()
    ticker = asyncio.create_task(tick(stop, late))
    await asyncio.sleep(0.005)
    late.clear()
    t0 = time.perf_counter()
    await work
    dt = time.perf_counter() - t0
    stop.set()
    await ticker
    return dt


# --------------------------------------------------------------------------- 1. step cost


def sync_step_us(n: int, durability: str) -> float:
    with contextlib.closing(use_journal(durability)):
        StepFlow().run(2)  # warm: opens the journal
        t0 = time.perf_counter()
        StepFlow().run(n)
        return (time.perf_counter() - t0) / n * 1e6


def async_step_us(n: int, durability: str) -> float:
    async def main() -> float:
        await AsyncStepFlow().run(2)
        t0 = time.perf_counter()
        await AsyncStepFlow().run(n)
        return (time.perf_counter() - t0) / n * 1e6

    with contextlib.closing(use_journal(durability)):
        return asyncio.run(main())


def w_step_cost(cfg: Cfg, out: Out) -> None:
    """Async vs sync steps, alternating within each repetition; the raw one-commit floor."""
    n, r = cfg["n"], {"n": cfg["n"]}
    for mode, sync in (("process", "NORMAL"), ("full", "FULL")):
        s: dict[str, list[float]] = {"sync": [], "async": [], "floor": []}
        for _ in range(cfg["reps"]):
            s["sync"].append(sync_step_us(n, mode))
            s["async"].append(async_step_us(n, mode))
            s["floor"].append(run.raw_floor(n, 1, sync, 1))
        r[mode] = {k: run.stats(v) for k, v in s.items()}
        r[mode]["ratio"] = r[mode]["async"]["median"] / r[mode]["sync"]["median"]
        r[mode]["ratio_min"] = r[mode]["async"]["min"] / r[mode]["sync"]["min"]
    out["step_cost"] = r


def syscall_child(kind: str, durability: str, steps: int, db: str) -> None:
    """The program strace measures: one flow of ``steps`` steps, sync or async (after a warm one)."""
    eng = transparent_de.configure(database=db, durability=durability, hmac_key=None)
    try:
        if kind == "sync":
            StepFlow().run(1)
            if steps:
                StepFlow().run(steps)
            return

        async def main() -> None:
            await AsyncStepFlow().run(1)
            if steps:
                await AsyncStepFlow().run(steps)

        asyncio.run(main())
    finally:
        eng.close()


def syscalls_per_step(kind: str, durability: str, steps: int) -> dict[str, Any]:
    """(N steps) - (0 steps) under ``strace -f -c``, per step: all syscalls and fsyncs."""
    tmp = tempfile.mkdtemp(prefix="tde-async-sys-")
    try:
        runs = []
        for n in (0, steps):
            db = os.path.join(tmp, f"{n}.db")
            args = [sys.executable, __file__, "--child-steps", kind, durability, str(n), db]
            runs.append(syscalls._strace(args, os.path.join(tmp, f"{n}.strace")))
        zero, full = runs
        diff = {k: full.get(k, 0) - zero.get(k, 0) for k in set(full) | set(zero)}
        syncs = sum(v for k, v in diff.items() if k in ("fsync", "fdatasync"))
        return {"syscalls": sum(diff.values()) / steps, "fsyncs": syncs / steps}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def w_syscalls(cfg: Cfg, out: Out) -> None:
    if shutil.which("strace") is None:
        out["syscalls"] = {"skipped": "strace is not installed (apt-get install strace)"}
        return
    r: dict[str, Any] = {}
    for mode, n in (("process", cfg["sys_n"]), ("full", cfg["sys_full_n"])):
        r[mode] = {kind: syscalls_per_step(kind, mode, n) for kind in ("sync", "async")}
    out["syscalls"] = r


# --------------------------------------------------------------------------- 2. many flows


def many_async(cfg: Cfg, durability: str) -> dict[str, Any]:
    """``gather`` of cfg["flows"] async flows on one loop, a 1 ms ticker beside them."""
    flows, steps, pause = cfg["flows"], cfg["steps"], cfg["pause"]
    eng = use_journal(durability)
    late: list[float] = []

    async def main() -> float:
        await AsyncIOFlow().run(1, 0.0)  # warm: opens the journal
        work = asyncio.gather(*(AsyncIOFlow().run(steps, pause) for _ in range(flows)))
        return await with_ticker(work, late)

    try:
        with fsync_count() as fs, timed_writes(threading.get_ident()) as got:
            dt = asyncio.run(main())
    finally:
        eng.close()
    return {"seconds": dt, "steps_s": flows * steps / dt, "fsyncs_step": fs[0] / (flows * steps),
            "late": lateness(late), "writes": write_stats(got)}


def write_stats(got: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """p50, p99, max (ms) and count of the loop's commits and fsyncs."""
    return {k: {"p50_ms": pct(v, 0.5) * 1e3, "p99_ms": pct(v, 0.99) * 1e3, "max_ms": max(v, default=0) * 1e3,
                "n": len(v)} for k, v in got.items()}


def many_threads(cfg: Cfg, durability: str, workers: int) -> dict[str, Any]:
    """The same work as sync flows, each started with ``Engine.start`` (the engine's pool)."""
    flows, steps, pause = cfg["flows"], cfg["steps"], cfg["pause"]
    eng = transparent_de.Engine(run._db(), durability=durability, hmac_key=None, max_workers=workers)
    try:
        eng.run(SyncIOFlow().run, 1, 0.0)
        with fsync_count() as fs:
            t0 = time.perf_counter()
            handles = [eng.start(SyncIOFlow().run, steps, pause) for _ in range(flows)]
            started = time.perf_counter() - t0
            for h in handles:
                h.result(timeout=600)
            dt = time.perf_counter() - t0
    finally:
        eng.close()
    return {"seconds": dt, "steps_s": flows * steps / dt, "fsyncs_step": fs[0] / (flows * steps),
            "start_calls_s": started}


def many_own_threads(cfg: Cfg, durability: str) -> dict[str, Any]:
    """The same work as sync flows, each run by ``Engine.run`` on a thread of our own pool."""
    flows, steps, pause = cfg["flows"], cfg["steps"], cfg["pause"]
    eng = transparent_de.Engine(run._db(), durability=durability, hmac_key=None)
    try:
        eng.run(SyncIOFlow().run, 1, 0.0)
        with fsync_count() as fs, ThreadPoolExecutor(flows) as pool:
            t0 = time.perf_counter()
            futures = [pool.submit(eng.run, SyncIOFlow().run, steps, pause) for _ in range(flows)]
            for f in futures:
                f.result(timeout=600)
            dt = time.perf_counter() - t0
    finally:
        eng.close()
    return {"seconds": dt, "steps_s": flows * steps / dt, "fsyncs_step": fs[0] / (flows * steps)}


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stats of each numeric field over the repetitions (lateness: the worst of all runs too)."""
    r: dict[str, Any] = {k: run.stats([s[k] for s in samples]) for k, v in samples[0].items()
                         if isinstance(v, (int, float))}
    if "late" in samples[0]:
        r["late"] = {k: run.stats([s["late"][k] for s in samples]) for k in samples[0]["late"]}
    if "writes" in samples[0]:
        w = samples[0]["writes"]
        r["writes"] = {x: {k: run.stats([s["writes"][x][k] for s in samples]) for k in w[x]} for x in w}
    return r


def w_many(cfg: Cfg, out: Out) -> None:
    """1,000 async flows on one loop vs 1,000 sync flows on threads, full and process."""
    r: dict[str, Any] = {"flows": cfg["flows"], "steps": cfg["steps"], "pause": cfg["pause"]}
    for mode in ("full", "process"):
        a, t, o = [], [], []
        for _ in range(cfg["many_reps"]):
            a.append(many_async(cfg, mode))
            t.append(many_threads(cfg, mode, cfg["flows"]))
            o.append(many_own_threads(cfg, mode))
        r[mode] = {"async": summarize(a), "threads": summarize(t), "own_threads": summarize(o)}
        for key in ("threads", "own_threads"):
            r[mode]["ratio_" + key] = r[mode]["async"]["steps_s"]["median"] / r[mode][key]["steps_s"]["median"]
    pool = [many_threads(cfg, "full", 32) for _ in range(cfg["pool_reps"])]
    r["full"]["pool32"] = summarize(pool)
    out["many"] = r


# --------------------------------------------------------------------------- 3. loop stalls


def idle_lateness(seconds: float) -> dict[str, float]:
    """The ticker alone: this machine's own jitter."""
    late: list[float] = []
    asyncio.run(with_ticker(asyncio.sleep(seconds), late))
    return lateness(late)


def one_flow_lateness(steps: int, pause: float) -> dict[str, Any]:
    """One flow of I/O steps in ``full`` mode: each wake-up runs one step's journal write."""
    eng = use_journal("full")
    late: list[float] = []

    async def main() -> dict[str, list[float]]:
        await AsyncIOFlow().run(1, 0.0)
        with timed_writes(threading.get_ident()) as got:
            await with_ticker(AsyncIOFlow().run(steps, pause), late)
        return got

    try:
        got = asyncio.run(main())
    finally:
        eng.close()
    return {"late": lateness(late), "writes": write_stats(got)}


def w_stalls(cfg: Cfg, out: Out) -> None:
    r: dict[str, Any] = {"idle": [], "one_flow": []}
    for _ in range(cfg["reps"]):
        r["idle"].append(idle_lateness(cfg["idle_s"]))
        r["one_flow"].append(one_flow_lateness(cfg["light_steps"], cfg["pause"]))
    r["idle"] = {k: run.stats([s[k] for s in r["idle"]]) for k in r["idle"][0]}
    r["one_flow"] = summarize(r["one_flow"])
    r["steps"] = cfg["light_steps"]
    out["stalls"] = r


# --------------------------------------------------------------------------- 4. DBOS

DBOS_ASYNC_CHILD = r'''
# DBOS async workflows on SQLite. argv: MODE ARG1 ARG2 [WAL]
#   steps N REPS:       µs per step of an async workflow of N trivial async steps, REPS times
#   many FLOWS STEPS:   gather of FLOWS async workflows of STEPS steps awaiting 10 ms: seconds
import asyncio, json, os, sys, tempfile, time
mode, a1, a2 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
wal = sys.argv[4] if len(sys.argv) > 4 else ""
db = os.path.join(tempfile.mkdtemp(prefix="dbos-async-"), "sys.sqlite")
if wal:
    import sqlalchemy as sa
    from sqlalchemy import event
    @event.listens_for(sa.engine.Engine, "connect")
    def _p(c, rec):
        cur = c.cursor(); cur.execute("PRAGMA journal_mode=WAL"); cur.execute(f"PRAGMA synchronous={wal}"); cur.close()
from dbos import DBOS
DBOS(config={"name": "tdebench", "system_database_url": f"sqlite:///{db}", "log_level": "WARNING"})
@DBOS.step()
async def step(i: int) -> int:
    return i + 1
@DBOS.step()
async def io(i: int, pause: float) -> int:
    await asyncio.sleep(pause)
    return i + 1
@DBOS.workflow()
async def flow(m: int) -> int:
    acc = 0
    for i in range(m):
        acc += await step(i)
    return acc
@DBOS.workflow()
async def ioflow(m: int, pause: float) -> int:
    acc = 0
    for i in range(m):
        acc += await io(i, pause)
    return acc
async def main():
    DBOS.launch()
    if mode == "steps":
        await flow(2)
        out = []
        for _ in range(a2):
            t0 = time.perf_counter()
            assert await flow(a1) == a1 * (a1 + 1) // 2
            out.append((time.perf_counter() - t0) / a1 * 1e6)
        return out
    await ioflow(1, 0.0)
    t0 = time.perf_counter()
    await asyncio.gather(*(ioflow(a2, 0.01) for _ in range(a1)))
    return time.perf_counter() - t0
print("JSON " + json.dumps(asyncio.run(main())))
os._exit(0)  # DBOS.destroy() waits ~1 s for its threads: not part of the work
'''


def dbos_child(py: str, *args: str) -> Any:
    """Run the DBOS program; its JSON answer, or {"error": ...}."""
    p = subprocess.run([py, "-c", DBOS_ASYNC_CHILD, *args], capture_output=True, text=True, timeout=900)
    line = [x for x in p.stdout.splitlines() if x.startswith("JSON ")]
    if p.returncode or not line:
        return {"error": (p.stderr or p.stdout)[-300:].replace("\n", " ")}
    return json.loads(line[-1][5:])


def ours_many_full(flows: int, steps: int) -> float:
    """Ours at DBOS's throughput shape: steps/s of ``flows`` async flows in ``full`` mode."""
    r = many_async({"flows": flows, "steps": steps, "pause": 0.01}, "full")
    return float(r["steps_s"])


def w_dbos(cfg: Cfg, out: Out) -> None:
    py, _ = run.dbos_python(allow_install=False)
    if py is None:
        out["dbos"] = {"skipped": "its venv is not cached (`python benchmarks/run.py` without --quick installs it)"}
        return
    n, k, r = cfg["dbos_n"], cfg["reps"], {"n": cfg["dbos_n"]}
    for label, wal in (("defaults", ""), ("wal_normal", "NORMAL")):
        got = dbos_child(py, "steps", str(n), str(k), *([wal] if wal else []))
        r[label] = got if isinstance(got, dict) else run.stats(got)
    shapes = [(cfg["dbos_flows"], cfg["steps"])]
    if cfg.get("dbos_1000"):
        shapes.append((cfg["flows"], cfg["steps"]))
    r["many"] = []
    for flows, steps in shapes:
        got = dbos_child(py, "many", str(flows), str(steps))
        row: dict[str, Any] = {"flows": flows, "steps": steps}
        if isinstance(got, dict):
            row.update(got)
        else:
            row.update(seconds=got, steps_s=flows * steps / got, ours_steps_s=ours_many_full(flows, steps))
        r["many"].append(row)
    out["dbos"] = r


# --------------------------------------------------------------------------- 5. sleeping flows


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def until(ready: Callable[[], bool]) -> None:
    while not ready():
        await asyncio.sleep(0.05)


def suspended_tasks() -> int:
    """Tasks of the running loop, other than this one, suspended in an await."""
    me = asyncio.current_task()
    return sum(1 for t in asyncio.all_tasks() if t is not me and getattr(t.get_coro(), "cr_await", None) is not None)


def sleeping_journal(path: str) -> Callable[[], int]:
    """How many flows of the journal at ``path`` wait in their durable timer (a reader's view)."""
    con = sqlite3.connect(path)
    q = "SELECT count(*) FROM execution_log WHERE kind = 'sleep' AND status = 'PENDING'"
    return lambda: int(con.execute(q).fetchone()[0])


def parked_journal(path: str) -> Callable[[], int]:
    """How many flows of the journal at ``path`` are parked: unowned, with a wake-up time."""
    con = sqlite3.connect(path)
    q = "SELECT count(*) FROM flows WHERE status = 'PENDING' AND owner IS NULL AND wake_at IS NOT NULL"
    return lambda: int(con.execute(q).fetchone()[0])


async def park_started(n: int, path: str) -> dict[str, Any]:
    """Start n flows with ``start_async``: each runs its step, writes its timer and parks (its
    task ends; the scheduler holds a wake-up). RSS and time until all n are parked."""
    await transparent_de.start_async(AsyncParkFlow().run, -1, 0.001)  # warm, as park_many
    await asyncio.sleep(0.1)
    gc.collect()
    r0, t0 = rss(), time.perf_counter()
    handles = [await transparent_de.start_async(AsyncParkFlow().run, i, 3600) for i in range(n)]
    parked = parked_journal(path)
    await until(lambda: parked() >= n)
    started = time.perf_counter() - t0
    gc.collect()
    alive = sum(1 for h in handles if h.task is not None and not h.task.done())
    return {"start_s": started, "rss_per_flow_kib": (rss() - r0) / n / 1024, "rss_delta_mib": (rss() - r0) / 2**20,
            "tasks_alive": alive, "parked": parked()}


async def park_many(kind: str, n: int, path: str) -> dict[str, Any]:
    """Start n flows that reach ``await asyncio.sleep(3600)``; RSS, time; then cancel them all."""
    if kind == "parked":
        return await park_started(n, path)
    cls = AsyncParkFlow if kind == "ours" else PlainAsyncParkFlow
    await cls().run(-1, 0.001)  # warm: the journal is open, the code paths imported
    gc.collect()
    r0, t0 = rss(), time.perf_counter()
    flows = asyncio.gather(*(cls().run(i, 3600) for i in range(n)))
    timers = sleeping_journal(path) if kind == "ours" else lambda: n  # each row is written before it waits
    await until(lambda: suspended_tasks() >= n and timers() >= n)
    started, r1, rows = time.perf_counter() - t0, rss(), timers()
    t1 = time.perf_counter()
    flows.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flows
    return {"start_s": started, "rss_per_flow_kib": (r1 - r0) / n / 1024, "rss_delta_mib": (r1 - r0) / 2**20,
            "cancel_s": time.perf_counter() - t1, "timer_rows": rows}


def park_child(kind: str, n: int) -> None:
    """In a fresh process, so RSS reflects these flows only (``process`` durability)."""
    path = os.path.join(run.TMP, "park.db")
    eng = transparent_de.configure(database=path, durability="process", hmac_key=None)
    try:
        res = asyncio.run(park_many(kind, n, path))
        if kind == "ours":  # (parked flows are PENDING and unowned by design)
            res["left_pending_unowned"] = sqlite3.connect(path).execute(
                "SELECT count(*) FROM flows WHERE status = 'PENDING' AND owner IS NULL").fetchone()[0]
    finally:
        eng.close()
    print("JSON " + json.dumps(res))


def park_run(kind: str, n: int) -> dict[str, Any]:
    p = subprocess.run([sys.executable, __file__, "--child-park", kind, str(n)], capture_output=True,
                       text=True, timeout=600)
    line = [x for x in p.stdout.splitlines() if x.startswith("JSON ")]
    if p.returncode or not line:
        raise RuntimeError(f"park child {kind} failed: {p.stderr[-1000:]}")
    return dict(json.loads(line[-1][5:]))


def w_park(cfg: Cfg, out: Out) -> None:
    r: dict[str, Any] = {"n": cfg["park_n"]}
    for kind in ("ours", "parked", "plain"):
        r[kind] = summarize([park_run(kind, cfg["park_n"]) for _ in range(cfg["park_reps"])])
    out["park"] = r


# --------------------------------------------------------------------------- report

Row = tuple[str, str, str, str]


def ms(s: dict[str, float]) -> str:
    return run.fmt(s, "ms")


def rows_step_cost(res: Out) -> list[Row]:
    sc, sy, rows = res["step_cost"], res.get("syscalls", {}), []
    for mode, floor in (("process", "WAL/NORMAL"), ("full", "WAL/FULL")):
        m = sc[mode]
        rows.append((f"1. step cost, {mode} (one flow of N={sc['n']})", "async " + run.fmt(m["async"]),
                     "sync step, same durability: " + run.fmt(m["sync"]),
                     f"**{m['ratio']:.2f}x** (of mins {m['ratio_min']:.2f}x)"))
        rows.append(("1. (reference)", "", f"raw SQLite {floor}, 1 commit/step: " + run.fmt(m["floor"]),
                     f"async {m['async']['median'] / m['floor']['median']:.2f}x, "
                     f"sync {m['sync']['median'] / m['floor']['median']:.2f}x"))
        if "skipped" in sy:
            rows.append((f"1. syscalls per step, {mode}", "skipped", sy["skipped"], ""))
        elif mode in sy:
            a, s = sy[mode]["async"], sy[mode]["sync"]
            rows.append((f"1. syscalls per step, {mode} (strace -f -c)",
                         f"async {a['syscalls']:.1f} ({a['fsyncs']:.2f} fsync)",
                         f"sync {s['syscalls']:.1f} ({s['fsyncs']:.2f} fsync)",
                         f"{a['syscalls'] / s['syscalls']:.2f}x"))
    return rows


def rows_many(res: Out) -> list[Row]:
    mn, rows = res["many"], []
    shape = f"{mn['flows']:,} flows x {mn['steps']} steps of {mn['pause'] * 1e3:g} ms I/O"
    for mode in ("full", "process"):
        a, t = mn[mode]["async"], mn[mode]["threads"]
        o = mn[mode]["own_threads"]
        rows.append((f"2. {shape}, {mode}: steps/s", "async, one loop: " + run.fmt(a["steps_s"], "steps/s"),
                     f"sync, Engine.start (max_workers={mn['flows']:,}): " + run.fmt(t["steps_s"], "steps/s"),
                     f"**{mn[mode]['ratio_threads']:.2f}x**"))
        rows.append((f"2. ... wall time, fsyncs per step, {mode}",
                     f"{run.fmt(a['seconds'], 's')}; {a['fsyncs_step']['median']:.2f} fsync/step",
                     f"{run.fmt(t['seconds'], 's')} ({t['start_calls_s']['median']:.1f} s of it in the "
                     f"start() calls); {t['fsyncs_step']['median']:.2f} fsync/step", ""))
        rows.append((f"2. ... against our own {mn['flows']:,} threads, {mode}", "",
                     f"sync, Engine.run on a ThreadPoolExecutor({mn['flows']:,}): "
                     + run.fmt(o["steps_s"], "steps/s")
                     + f", {o['seconds']['median']:.2f} s; {o['fsyncs_step']['median']:.2f} fsync/step",
                     f"**{mn[mode]['ratio_own_threads']:.2f}x**"))
    p = mn["full"]["pool32"]
    rows.append((f"2. {shape}, full, engine's default pool", "",
                 "sync, max_workers=32 (at most 32 flows run at once): " + run.fmt(p["steps_s"], "steps/s")
                 + f", {run.fmt(p['seconds'], 's')}",
                 f"async/this {mn['full']['async']['steps_s']['median'] / p['steps_s']['median']:.2f}x"))
    return rows


def late_txt(late: dict[str, dict[str, float]]) -> str:
    return f"max {ms(late['max_ms'])}, p99 {ms(late['p99_ms'])}, {late['ticks']['median']:,.0f} ticks"


def writes_txt(w: dict[str, dict[str, dict[str, float]]], fsync: bool = True) -> str:
    """The loop's own commits and fsyncs (none where the engine commits off the loop)."""
    if not w["commit"]["n"]["median"]:
        return "no commit on the loop (they run on another thread)"
    commits = f"{w['commit']['n']['median']:,.0f} commits, p50 {ms(w['commit']['p50_ms'])}, max {ms(w['commit']['max_ms'])}"
    if not fsync:
        return commits
    if not w["sync"].get("n", {}).get("median", 1):
        return commits + "; no fsync on the loop (the engine's sync thread makes them)"
    return commits + f"; fsync p50 {ms(w['sync']['p50_ms'])}, max {ms(w['sync']['max_ms'])}"


def rows_stalls(res: Out) -> list[Row]:
    st, mn = res["stalls"], res["many"]
    heavy = mn["full"]["async"]
    return [
        ("3. loop lateness, 1 ms ticker, idle loop", late_txt(st["idle"]), "(this machine's own jitter)", ""),
        (f"3. ... one async flow, {st['steps']} steps of 10 ms I/O, full", late_txt(st["one_flow"]["late"]),
         "writes on the loop: " + writes_txt(st["one_flow"]["writes"]), ""),
        (f"3. ... {mn['flows']:,} async flows (row 2), full", late_txt(heavy["late"]),
         "writes on the loop: " + writes_txt(heavy["writes"]), ""),
        (f"3. ... {mn['flows']:,} async flows (row 2), process", late_txt(mn["process"]["async"]["late"]),
         "writes on the loop: " + writes_txt(mn["process"]["async"]["writes"], fsync=False), ""),
    ]


def rows_dbos(res: Out) -> list[Row]:
    db, sc = res.get("dbos"), res["step_cost"]
    if not db:
        return []
    if "skipped" in db:
        return [("4. DBOS Transact, async", "skipped", db["skipped"], "")]
    rows = []
    for label, mode in (("defaults", "full"), ("wal_normal", "process")):
        d, ours = db[label], sc[mode]["async"]
        if "error" in d:
            rows.append((f"4. DBOS async ({label})", "error", d["error"][:200], ""))
            continue
        rows.append((f"4. async step cost, ours {mode} vs DBOS ({label.replace('_', ' ')})", run.fmt(ours),
                     f"DBOS async workflow of {db['n']} async steps: " + run.fmt(d),
                     f"DBOS/ours **{d['median'] / ours['median']:.1f}x**"))
    for m in db["many"]:
        shape = f"{m['flows']:,} async flows x {m['steps']} steps of 10 ms"
        if "error" in m:
            rows.append((f"4. DBOS {shape}", "error", m["error"][:200], ""))
            continue
        rows.append((f"4. {shape}, ours full vs DBOS defaults", f"{m['ours_steps_s']:,.0f} steps/s",
                     f"DBOS: {m['steps_s']:,.0f} steps/s ({m['seconds']:.1f} s)",
                     f"ours/DBOS **{m['ours_steps_s'] / m['steps_s']:.1f}x**"))
    return rows


def ratio(a: dict[str, float], b: dict[str, float]) -> str:
    return f"{a['median'] / b['median']:.1f}x" if b["median"] else "n/a"


def rows_park(res: Out) -> list[Row]:
    pk = res["park"]
    o, p, q = pk["ours"], pk["plain"], pk["parked"]
    return [
        (f"5. {pk['n']:,} async flows asleep in asyncio.sleep(3600), process: RSS per flow",
         run.fmt(o["rss_per_flow_kib"], "KiB") + f" ({o['rss_delta_mib']['median']:.0f} MiB in all)",
         "same coroutines in plain asyncio: " + run.fmt(p["rss_per_flow_kib"], "KiB"),
         ratio(o["rss_per_flow_kib"], p["rss_per_flow_kib"])),
        (f"5. ... time to start all {pk['n']:,} (one step and the timer's row each)", run.fmt(o["start_s"], "s"),
         "plain asyncio: " + run.fmt(p["start_s"], "s"),
         f"timer rows {o['timer_rows']['median']:,.0f}; cancelling all: {o['cancel_s']['median']:.2f} s, "
         f"left PENDING, unowned, resumable: {o['left_pending_unowned']['median']:,.0f}"),
        (f"5. {pk['n']:,} flows started with start_async, parked on the timer: RSS per flow",
         run.fmt(q["rss_per_flow_kib"], "KiB") + f" ({q['rss_delta_mib']['median']:.0f} MiB in all)",
         "same coroutines in plain asyncio: " + run.fmt(p["rss_per_flow_kib"], "KiB"),
         ratio(q["rss_per_flow_kib"], p["rss_per_flow_kib"])),
        (f"5. ... time until all {pk['n']:,} are parked", run.fmt(q["start_s"], "s"),
         "plain asyncio (start only): " + run.fmt(p["start_s"], "s"),
         f"parked {q['parked']['median']:,.0f}; their tasks still alive: {q['tasks_alive']['median']:,.0f}"),
    ]


def table(res: Out) -> str:
    rows = rows_step_cost(res) + rows_many(res) + rows_stalls(res) + rows_dbos(res) + rows_park(res)
    lines = ["| workload | transparent_de | baseline (same run) | ratio |", "| --- | ---: | --- | ---: |"]
    return "\n".join(lines + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows])


def header(res: Out, cfg: Cfg) -> str:
    return (f"Python {res['python']}, SQLite {res['sqlite']}, nproc {res['nproc']}, {res['machine']}, "
            f"mode {res['mode']}, {res['when']}, {res['seconds']:.0f} s; load before {res['load']}. "
            f"Median of {cfg['reps']} reps (rows 2 and 5: {cfg['many_reps']} and {cfg['park_reps']}) (min-max).")


# --------------------------------------------------------------------------- main


def measure(cfg: Cfg) -> Out:
    res: Out = {
        "mode": "quick" if cfg.get("quick") else "full", "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version, "nproc": os.cpu_count(),
        "machine": f"{platform.system()} {platform.machine()}",
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    t0 = time.perf_counter()
    res["workload_s"] = {}
    for workload in (w_step_cost, w_syscalls, w_many, w_stalls, w_dbos, w_park):
        t1 = time.perf_counter()
        workload(cfg, res)
        res["workload_s"][workload.__name__[2:]] = round(time.perf_counter() - t1, 1)
    res["seconds"] = time.perf_counter() - t0
    return res


def write(res: Out, md: str) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    stem = "async-quick" if res["mode"] == "quick" else "async"  # a smoke run keeps real results
    with open(os.path.join(RESULTS, stem + ".md"), "w") as f:
        f.write(md)
    with open(os.path.join(RESULTS, stem + ".json"), "w") as f:
        json.dump(res, f, indent=2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="every row once, small (a smoke run: seconds)")
    ap.add_argument("--dbos-1000", action="store_true", help="also DBOS with the 1,000-flow shape (~90 s more)")
    ap.add_argument("--child-steps", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--child-park", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    try:
        if a.child_steps:
            kind, durability, steps, db = a.child_steps
            syscall_child(kind, durability, int(steps), db)
            return 0
        if a.child_park:
            park_child(a.child_park[0], int(a.child_park[1]))
            return 0
        cfg = dict(QUICK if a.quick else FULL, dbos_1000=a.dbos_1000)
        res = measure(cfg)
        md = header(res, cfg) + "\n\n" + table(res) + "\n"
        print(md)
        write(res, md)
        return 0
    finally:
        with contextlib.closing(transparent_de.configure()):  # stop the last journal's threads first
            shutil.rmtree(run.TMP, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
