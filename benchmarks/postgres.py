"""Benchmarks on PostgreSQL (issue #15 §4): one throwaway server, every row measured in one run.

    python benchmarks/postgres.py [--quick | --smoke]

One cluster is started with tests/pg.py's machinery, but with ``fsync=on`` (tests/pg.py runs
its clusters with fsync off, which would make every durability row meaningless), and measured:

1. a step of a flow in ``durability="full"`` / ``"process"`` against raw psycopg sending the
   same statements (the store's own named queries, pipelined the same way) with
   ``synchronous_commit`` on / off; transactions per step from the server's ``pg_stat_database``
   and our round trips per step (calls into the store's database layer);
2. DBOS Transact on the same server (its own venv, built as benchmarks/run.py does);
3. steps/s of 1, 4 and 8 worker processes x 16 concurrent flows on one journal;
4. recovery after a worker is SIGKILLed: on the same host (a dead pid is proof of death) and
   from another host (a UTS namespace with another hostname: the takeover waits one lease).

Prints a markdown table and writes benchmarks/results/postgres.md and postgres.json
(postgres-smoke.* for --smoke). Without server binaries or psycopg it says why and exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
for _p in (os.path.join(ROOT, "tests"), ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import pg  # noqa: E402  (tests/pg.py: the throwaway cluster)

import transparent_de  # noqa: E402

transparent_de.install("bench_flows")
logging.getLogger("transparent_de.journal").setLevel(logging.ERROR)  # throwaway journals: no "not signed"
from bench_flows.flows import StepFlow  # noqa: E402
from bench_flows.pgflows import SlowFlow  # noqa: E402

OTHER_HOST = "tde-bench-other-host"


class BenchCluster(pg.Cluster):
    """tests/pg.py's cluster, started durable: ``fsync=on`` and full page writes, as a real server.

    Only :meth:`start` differs (tests/pg.py hard-codes ``fsync=off`` there); ``restart`` uses it too.
    """

    def start(self) -> None:
        opts = (
            f"-c listen_addresses='' -c unix_socket_directories={self.dir} -c fsync=on "
            "-c full_page_writes=on -c synchronous_commit=on -c max_connections=300 -c shared_buffers=128MB"
        )
        self._run("pg_ctl", "-D", self.data, "-o", opts, "-l", os.path.join(self.dir, "log"), "-w", "start")


def stats(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples)}


def fmt(s: dict[str, float], unit: str = "µs") -> str:
    def f(x: float) -> str:
        return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 1000 else f"{x:,.0f}"

    return f"{f(s['median'])} {unit} ({f(s['min'])}-{f(s['max'])})"


def engine(url: str, durability: str, **kw: Any) -> transparent_de.Engine:
    """An engine on ``url``, unsigned (as benchmarks/syscalls.py: HMAC is not what is measured)."""
    return transparent_de.Engine(url, durability=durability, hmac_key=None, **kw)


def make_schema(url: str) -> None:
    """Create the journal's schema (tables, tde_fence) at ``url``, outside any timing."""
    with engine(url, "full") as eng:
        _ = eng.store


def xacts(cluster: pg.Cluster, db: str) -> int:
    """Committed transactions of database ``db``, once the count stops moving: a backend reports
    its counts when it exits (or idles a while), not at each commit, so close connections first."""
    last = -1
    for _ in range(100):
        (row,) = cluster.admin("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (db,))
        if int(row[0]) == last:
            return last
        last = int(row[0])
        time.sleep(0.05)
    return last


def count_round_trips(eng: transparent_de.Engine) -> list[int]:
    """Count the calls into the store's database layer: a ``write`` is one pipeline (BEGIN, the
    fence, the statements, COMMIT: one round trip), a ``read`` one statement. Wraps the instance."""
    db = eng.store.db  # type: ignore[attr-defined]
    box = [0]
    for name in ("read", "write"):
        real = getattr(db, name)

        def counted(*a: Any, _real: Callable[..., Any] = real, **k: Any) -> Any:
            box[0] += 1
            return _real(*a, **k)

        setattr(db, name, counted)
    return box


# --------------------------------------------------------------------------- 1. step cost


def ours(url: str, n: int, flows: int, durability: str) -> float:
    """µs per step of ``flows`` sequential flows of n trivial steps."""
    eng = engine(url, durability)
    try:
        eng.run(StepFlow().run, 2, flow_id="warm-" + uuid.uuid4().hex)
        t0 = time.perf_counter()
        for _ in range(flows):
            eng.run(StepFlow().run, n, flow_id=uuid.uuid4().hex)
        return (time.perf_counter() - t0) / (n * flows) * 1e6
    finally:
        eng.close()


def raw(cluster: pg.Cluster, url: str, n: int, flows: int, sync: str) -> float:
    """µs per step of raw psycopg sending what our store sends for a flow of n steps: the
    ``flow_state`` read, ``create_flow``, then per step one pipeline ``BEGIN; tde_fence;
    complete (previous step); intent; COMMIT`` and a last one with the flow's result: the
    library's own named queries (postgres_queries.sql), on its schema, in one round trip each."""
    import psycopg

    from transparent_de._store.postgres_db import parse_url
    from transparent_de._store.postgres_sql import Q

    make_schema(url)
    con = psycopg.connect(cluster.conninfo(), autocommit=True)
    con.execute("SELECT set_config('search_path', %s, false), set_config('synchronous_commit', %s, false)",
                (f'"{parse_url(url).schema}", pg_catalog', sync))
    owner, cls = "vm:1:tok", "bench_flows.flows.StepFlow"

    def fenced(fid: str, *stmts: tuple[str, tuple[Any, ...]]) -> None:
        t = time.time_ns() // 1_000_000
        with con.pipeline():
            con.execute("BEGIN")
            con.execute(Q["fence"], (fid, owner, 1, t + 30000, t))
            for q, p in stmts:
                con.execute(q, p)
            con.execute("COMMIT")

    try:
        t0 = time.perf_counter()
        for _ in range(flows):
            fid, t = uuid.uuid4().hex, time.time_ns() // 1_000_000
            con.execute(Q["flow_state"], (fid,)).fetchall()
            with con.pipeline():
                con.execute("BEGIN")
                con.execute(Q["create_flow"], (fid, "bench_flows.flows", "StepFlow", "run", pickle.dumps(None),
                                               owner, t + 30000, t, t, t, cls, "run", pickle.dumps(((n,), {})),
                                               "fp", t))
                con.execute("COMMIT")
            result = b""
            for i in range(1, n + 1):
                t = time.time_ns() // 1_000_000
                intent = (Q["intent"], (fid, i, t, cls, "step", None, "PENDING", pickle.dumps(((i,), {})), "step",
                                        "0123456789abcdef", "StepFlow.run:12", t, None))  # lineage: NULL (a sync flow)
                if i > 1:
                    fenced(fid, (Q["complete"], (result, t, fid, i - 1)), intent)
                else:
                    fenced(fid, intent)
                result = pickle.dumps(i + 1)
            t = time.time_ns() // 1_000_000
            fenced(fid, (Q["complete"], (result, t, fid, n)), (Q["flow_result"], (result, t, fid)),
                   (Q["flow_completed"], (t, fid)))
        return (time.perf_counter() - t0) / (max(n, 1) * flows) * 1e6
    finally:
        con.close()


def per_step_counts(cluster: pg.Cluster, n: int, kind: str, durability: str) -> dict[str, float]:
    """Server transactions (``xact_commit``) and round trips per step: a flow of n steps minus a
    flow of 0 steps, each in a fresh engine (or connection) closed before the count is read."""
    url = cluster.url()
    make_schema(url)

    def block(steps: int) -> tuple[int, int]:
        before = xacts(cluster, "tde")
        if kind == "raw":
            raw(cluster, url, steps, 1, "on" if durability == "full" else "off")
            trips = steps + 1  # by construction: one pipeline per step (+ the flow's last one)
        else:
            eng = engine(url, durability)
            box = count_round_trips(eng)
            eng.run(StepFlow().run, steps, flow_id=uuid.uuid4().hex)
            eng.close()
            trips = box[0]
        return xacts(cluster, "tde") - before, trips

    x0, r0 = block(0)
    x1, r1 = block(n)
    return {"xacts": (x1 - x0) / n, "round_trips": (r1 - r0) / n}


def w_step_cost(cluster: pg.Cluster, cfg: dict[str, Any], out: dict[str, Any]) -> None:
    n, k = cfg["n"], cfg["reps"]
    full_flows = max(1, cfg["flows"] // 2)
    s: dict[str, list[float]] = {"full": [], "raw_on": [], "process": [], "raw_off": []}
    for _ in range(k):  # interleaved, so the machine's drift hits ours and the floor alike
        s["full"].append(ours(cluster.url(), n, full_flows, "full"))
        s["raw_on"].append(raw(cluster, cluster.url(), n, full_flows, "on"))
        s["process"].append(ours(cluster.url(), n, cfg["flows"], "process"))
        s["raw_off"].append(raw(cluster, cluster.url(), n, cfg["flows"], "off"))
    r: dict[str, Any] = {"n": n, **{key: stats(v) for key, v in s.items()}}
    for mode, base in (("full", "raw_on"), ("process", "raw_off")):
        r[f"ratio_{mode}"] = r[mode]["median"] / r[base]["median"]
        r[f"ratio_{mode}_min"] = r[mode]["min"] / r[base]["min"]
    cn = cfg["count_n"]
    r["counts"] = {
        "ours_full": per_step_counts(cluster, cn, "ours", "full"),
        "ours_process": per_step_counts(cluster, cn, "ours", "process"),
        "raw": per_step_counts(cluster, cn, "raw", "full"),
    }
    out["step_cost"] = r


# --------------------------------------------------------------------------- 2. DBOS

DBOS_CHILD = r'''
# DBOS Transact on PostgreSQL: argv = system database URL, N steps, REPS, workflows per rep.
import importlib.metadata, json, sys, time
url, n, reps, flows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
import sqlalchemy as sa
from dbos import DBOS
DBOS(config={"name": "tdebench", "system_database_url": url, "log_level": "WARNING"})
@DBOS.step()
def step(i: int) -> int:
    return i + 1
@DBOS.workflow()
def flow(m: int) -> int:
    acc = 0
    for i in range(m):
        acc += step(i)
    return acc
DBOS.launch()
flow(2)
out = []
for _ in range(reps):
    t0 = time.perf_counter()
    for _ in range(flows):
        flow(n)
    out.append((time.perf_counter() - t0) / flows * 1e6)
with sa.create_engine(sa.make_url(url).set(drivername="postgresql+psycopg")).connect() as c:
    sync = c.execute(sa.text("SHOW synchronous_commit")).scalar()
DBOS.destroy()
print("JSON " + json.dumps({"per_flow": out, "synchronous_commit": sync,
                            "version": importlib.metadata.version("dbos")}))
'''


def dbos_url(cluster: pg.Cluster, sync: str) -> str:
    """DBOS's system database on our server; ``synchronous_commit`` via libpq ``options``."""
    import urllib.parse

    q = urllib.parse.urlencode({"host": cluster.dir, "options": f"-c synchronous_commit={sync}"})
    return f"postgresql://{cluster.user}@/dbos_bench?{q}"


def dbos_run(py: str, url: str, n: int, reps: int, flows: int) -> dict[str, Any]:
    p = subprocess.run([py, "-c", DBOS_CHILD, url, str(n), str(reps), str(flows)], capture_output=True,
                       text=True, timeout=600)
    line = [x for x in p.stdout.splitlines() if x.startswith("JSON ")]
    if p.returncode or not line:
        raise RuntimeError((p.stderr or p.stdout)[-600:])
    return dict(json.loads(line[-1][5:]))


def w_dbos(cluster: pg.Cluster, cfg: dict[str, Any], out: dict[str, Any]) -> None:
    """DBOS's per-step cost next to ours measured right after it; DBOS's transactions per step."""
    import shutil

    import run  # benchmarks/run.py: its DBOS venv (built once, cached)

    shutil.rmtree(run.TMP, ignore_errors=True)  # made when run.py is imported; not used here
    py, note = run.dbos_python(allow_install=not (cfg.get("quick") or cfg.get("smoke")))
    if py is None:
        out["dbos"] = {"skipped": note}
        return
    n, k, flows = cfg["n"], cfg["reps"], cfg["dbos_flows"]
    r: dict[str, Any] = {"n": n}
    try:
        for sync, mode in (("on", "full"), ("off", "process")):
            d = dbos_run(py, dbos_url(cluster, sync), n, k, flows)
            r["version"], r[f"sync_{sync}_seen"] = d["version"], d["synchronous_commit"]
            r[f"dbos_{sync}"] = {"per_flow": stats(d["per_flow"]), "per_step": stats([x / n for x in d["per_flow"]])}
            r[f"ours_{mode}"] = stats([ours(cluster.url(), n, flows, mode) for _ in range(k)])
            r[f"ratio_{sync}"] = r[f"dbos_{sync}"]["per_step"]["median"] / r[f"ours_{mode}"]["median"]
        if cfg["count_n"] and not cfg.get("smoke"):
            url, cn, x = dbos_url(cluster, "on"), cfg["count_n"], []
            for steps in (0, cn):
                before = xacts(cluster, "dbos_bench")
                dbos_run(py, url, steps, 1, 1)
                x.append(xacts(cluster, "dbos_bench") - before)
            r["xacts_per_step"] = (x[1] - x[0]) / cn
    except (RuntimeError, subprocess.SubprocessError) as exc:
        r["error"] = str(exc)
    out["dbos"] = r


# --------------------------------------------------------------------------- 3. throughput


def spawn(cmd: list[str]) -> subprocess.Popen[str]:
    """A child that prints READY once prepared, then waits for its stdin's EOF (go, or stop)."""
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line.startswith("READY"):
        p.kill()
        raise RuntimeError(f"child {cmd[3:5]} did not start (exit {p.wait()}): {line!r}")
    return p


def child_cmd(*args: Any) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "--child", *map(str, args)]


def w_throughput(cluster: pg.Cluster, cfg: dict[str, Any], out: dict[str, Any]) -> None:
    """W processes, each starting F flows of S steps at once (threads), on one journal, full mode:
    all steps over the time from the first start to the last finish (children start together)."""
    f, steps = cfg["tput_flows"], cfg["tput_steps"]
    r: dict[str, Any] = {"flows_per_worker": f, "steps_per_flow": steps}
    for w in cfg["workers"]:
        samples = []
        for _ in range(cfg["reps"]):
            url = cluster.url()
            make_schema(url)  # before the workers race for it
            procs, spans = [spawn(child_cmd("tput", url, f, steps)) for _ in range(w)], []
            try:
                for p in procs:  # go: every child is ready (its stdin's EOF)
                    p.stdin.close()  # type: ignore[union-attr]
                for p in procs:
                    lines = [x for x in p.stdout if x.startswith("JSON ")]  # type: ignore[union-attr]
                    spans.append(json.loads(lines[-1][5:]))
            finally:
                for p in procs:
                    p.kill()  # nothing if it exited
                    p.wait()
            samples.append(w * f * steps / (max(b for _, b in spans) - min(a for a, _ in spans)))
        r[str(w)] = stats(samples)
    out["throughput"] = r


# --------------------------------------------------------------------------- 4. recovery


def unshare_works() -> str | None:
    """Why another host cannot be simulated here (a UTS namespace needs root), or None."""
    try:
        subprocess.run(["unshare", "--uts", "hostname", OTHER_HOST], check=True, capture_output=True, timeout=10)
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unshare --uts failed ({type(exc).__name__}): cannot pose as another host"


def recovery_rep(cluster: pg.Cluster, cfg: dict[str, Any], lease: float, other_host: bool) -> dict[str, float]:
    """A survivor worker polls the journal; a victim runs F slow flows and is SIGKILLed (and
    reaped at once: a zombie's pid still exists) once a third of their steps are done. Times
    from the kill to every flow claimed by the survivor, and to every flow COMPLETE."""
    import psycopg

    from transparent_de._store.postgres_db import parse_url

    url, f, steps, ms = cluster.url(), cfg["rec_flows"], cfg["rec_steps"], cfg["rec_ms"]
    make_schema(url)
    survivor = spawn(child_cmd("survivor", url, lease))
    victim_cmd = child_cmd("victim", url, f, steps, ms, lease)
    if other_host:
        victim_cmd = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', OTHER_HOST, *victim_cmd]
    victim = spawn(victim_cmd)
    con = psycopg.connect(cluster.conninfo(), autocommit=True)
    try:
        con.execute("SELECT set_config('search_path', %s, false)", (f'"{parse_url(url).schema}"',))
        done_q = "SELECT count(*) FROM execution_log WHERE step > 0 AND status = 'COMPLETE'"
        while (con.execute(done_q).fetchone() or (0,))[0] < f * steps / 3:
            if victim.poll() is not None:
                raise RuntimeError(f"the victim exited early ({victim.returncode})")
            time.sleep(0.005)
        t0 = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        left = con.execute(f"SELECT {steps} - min(c) FROM (SELECT flow_id, count(*) FILTER (WHERE step > 0 AND "
                           "status = 'COMPLETE') c FROM execution_log GROUP BY flow_id) x").fetchone()
        claimed_at = None
        while True:
            done, claimed = con.execute(
                "SELECT count(*) FILTER (WHERE status = 'COMPLETE'), "
                "count(*) FILTER (WHERE status = 'COMPLETE' OR owner LIKE %s) FROM flows",
                (f"%:{survivor.pid}:%",),
            ).fetchone() or (0, 0)
            now = time.monotonic() - t0
            if claimed_at is None and claimed >= f:
                claimed_at = now
            if done >= f:
                break
            if now > lease * 3 + 60:
                raise RuntimeError(f"recovery: {done}/{f} flows finished after {now:.0f} s")
            time.sleep(0.01)
        return {"all_done_ms": now * 1e3, "all_claimed_ms": (claimed_at or now) * 1e3,
                "floor_ms": float(left[0] if left else 0) * ms}
    finally:
        con.close()
        if survivor.stdin:
            survivor.stdin.close()
        survivor.wait(timeout=60)
        victim.kill()  # nothing if it was reaped already
        victim.wait()


def w_recovery(cluster: pg.Cluster, cfg: dict[str, Any], out: dict[str, Any]) -> None:
    r: dict[str, Any] = {"flows": cfg["rec_flows"], "steps": cfg["rec_steps"], "step_ms": cfg["rec_ms"],
                         "poll_interval_s": 0.2}
    why = unshare_works()
    for case, lease, other in (("same_host", 30.0, False), ("other_host", cfg["lease"], True)):
        if other and why:
            r[case] = {"skipped": why}
            continue
        reps = [recovery_rep(cluster, cfg, lease, other) for _ in range(cfg["rec_reps"])]
        r[case] = {"lease_s": lease, **{key: stats([x[key] for x in reps]) for key in reps[0]}}
    out["recovery"] = r


# --------------------------------------------------------------------------- children


def child(kind: str, args: list[str]) -> None:
    """The worker processes of rows 3 and 4 (``--child KIND ...``)."""
    url = args[0]
    if kind == "tput":
        flows, steps = int(args[1]), int(args[2])
        eng = engine(url, "full", max_workers=flows)
        eng.run(StepFlow().run, 1, flow_id="warm-" + uuid.uuid4().hex)
        print("READY", flush=True)
        sys.stdin.read()
        t0 = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the host
        handles = [eng.start(StepFlow().run, steps, flow_id=uuid.uuid4().hex) for _ in range(flows)]
        for h in handles:
            h.result(timeout=600)
        print("JSON " + json.dumps([t0, time.monotonic()]), flush=True)
        eng.close()
    elif kind == "victim":
        flows, steps, ms, lease = int(args[1]), int(args[2]), int(args[3]), float(args[4])
        eng = engine(url, "full", max_workers=flows, lease_seconds=lease)
        handles = [eng.start(SlowFlow().run, steps, ms, flow_id=f"slow-{i}") for i in range(flows)]
        print("READY", flush=True)
        for h in handles:
            h.result(timeout=600)  # killed long before
    elif kind == "survivor":
        eng = engine(url, "full", max_workers=64, lease_seconds=float(args[1]))
        stop = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
        eng.recover()
        print("READY", flush=True)
        eng.worker(stop)
        eng.close()


# --------------------------------------------------------------------------- report


def table(res: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, str]] = []
    sc = res.get("step_cost")
    if sc:
        for mode, sync, base in (("full", "on", "raw_on"), ("process", "off", "raw_off")):
            rows.append((f"1. step, `{mode}` (N={sc['n']})", fmt(sc[mode]),
                         f"raw psycopg, same statements and pipelines, synchronous_commit={sync}: " + fmt(sc[base]),
                         f"**{sc['ratio_' + mode]:.2f}x** (of mins {sc['ratio_' + mode + '_min']:.2f}x)"))
        c = sc["counts"]
        rows.append(("1. per step: server transactions, round trips",
                     f"full {c['ours_full']['xacts']:.2f} / {c['ours_full']['round_trips']:.2f}; "
                     f"process {c['ours_process']['xacts']:.2f} / {c['ours_process']['round_trips']:.2f}",
                     f"raw {c['raw']['xacts']:.2f} / {c['raw']['round_trips']:.2f} (`pg_stat_database.xact_commit`)",
                     ""))
    db = res.get("dbos") or {}
    if "skipped" in db or "error" in db:
        rows.append(("2. DBOS Transact", "skipped" if "skipped" in db else "error",
                     str(db.get("skipped") or db["error"])[-300:].replace("\n", " "), ""))
    if db:
        for sync, mode in (("on", "full"), ("off", "process")):
            if f"dbos_{sync}" in db:
                d = db[f"dbos_{sync}"]
                rows.append((f"2. per step, ours `{mode}` vs DBOS {db['version']} (synchronous_commit={sync})",
                             fmt(db[f"ours_{mode}"]), f"DBOS: {fmt(d['per_step'])}; per workflow {fmt(d['per_flow'])}",
                             f"DBOS/ours **{db['ratio_' + sync]:.1f}x**"))
        if "xacts_per_step" in db:
            rows.append(("2. DBOS per step: server transactions", "", f"{db['xacts_per_step']:.2f}", ""))
    tp = res.get("throughput")
    if tp:
        one = tp.get("1", {}).get("median")
        for w in res["config"]["workers"]:
            rows.append((f"3. {w} worker process(es) x {tp['flows_per_worker']} flows x {tp['steps_per_flow']} steps, "
                         "`full`", fmt(tp[str(w)], "steps/s"), "one server, one journal",
                         f"{tp[str(w)]['median'] / one:.2f}x one worker" if one else ""))
    rc = res.get("recovery")
    if rc:
        for case, label in (("same_host", "same host (dead pid)"), ("other_host", "other host")):
            v = rc.get(case) or {}
            if "skipped" in v:
                rows.append((f"4. recovery after SIGKILL, {label}", "skipped", v["skipped"], ""))
            elif v:
                rows.append((f"4. recovery after SIGKILL, {label}, lease {v['lease_s']:g} s: kill -> every flow done",
                             fmt(v["all_done_ms"], "ms"),
                             f"kill -> every flow claimed {fmt(v['all_claimed_ms'], 'ms')}; {rc['flows']} flows x "
                             f"{rc['steps']} steps of {rc['step_ms']} ms, survivor polls every "
                             f"{rc['poll_interval_s']:g} s", f"floor (steps left) {fmt(v['floor_ms'], 'ms')}"))
    lines = ["| workload | transparent_de | baseline (same run, same server) | ratio |", "| --- | ---: | --- | ---: |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


_BASE = {"n": 100, "workers": (1, 4, 8), "tput_flows": 16, "tput_steps": 20, "rec_flows": 16, "rec_steps": 20,
         "rec_ms": 20, "lease": 2.0}
CONFIGS: dict[str, dict[str, Any]] = {
    "smoke": {**_BASE, "n": 20, "flows": 2, "reps": 1, "count_n": 20, "dbos_flows": 1, "workers": (1, 2),
              "tput_flows": 4, "tput_steps": 10, "rec_flows": 4, "rec_steps": 12, "rec_reps": 1, "lease": 1.0},
    "quick": {**_BASE, "flows": 6, "reps": 3, "count_n": 100, "dbos_flows": 3, "rec_reps": 3},
    "full": {**_BASE, "flows": 10, "reps": 5, "count_n": 200, "dbos_flows": 5, "rec_reps": 5},
}


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="3 repetitions, no DBOS install (~2 min)")
    g.add_argument("--smoke", action="store_true", help="1 repetition of everything, small (tests; < 60 s)")
    a = ap.parse_args()
    why = pg.unavailable()
    if why:
        print(f"PostgreSQL benchmarks skipped: {why}")
        return 0
    mode = "smoke" if a.smoke else "quick" if a.quick else "full"
    cfg = dict(CONFIGS[mode], **{mode: True})
    t0, load = time.perf_counter(), os.getloadavg()[0]
    cluster = BenchCluster()
    try:
        settings = dict(cluster.admin(
            "SELECT name, setting FROM pg_settings WHERE name IN ('server_version', 'fsync', 'synchronous_commit', "
            "'wal_sync_method', 'full_page_writes', 'shared_buffers')"))
        if settings.get("fsync") != "on":
            raise RuntimeError(f"the benchmark cluster must run with fsync=on: {settings}")
        import psycopg

        res: dict[str, Any] = {
            "mode": mode, "config": cfg, "python": platform.python_version(), "psycopg": psycopg.__version__,
            "server": settings, "nproc": os.cpu_count(), "machine": f"{platform.system()} {platform.machine()}",
            "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        }
        w_step_cost(cluster, cfg, res)
        w_dbos(cluster, cfg, res)
        w_throughput(cluster, cfg, res)
        w_recovery(cluster, cfg, res)
    finally:
        cluster.close()
    res["seconds"], res["load"] = time.perf_counter() - t0, (load, os.getloadavg()[0])
    s = res["server"]
    head = (f"Python {res['python']}, psycopg {res['psycopg']}, PostgreSQL {s['server_version']} (fsync={s['fsync']}, "
            f"wal_sync_method={s['wal_sync_method']}, full_page_writes={s['full_page_writes']}, one local server over "
            f"a Unix socket), nproc {res['nproc']}, {res['machine']}, mode {mode}, {res['when']}, "
            f"{res['seconds']:.0f} s, load average {load:.1f} before / {res['load'][1]:.1f} after. Median of {cfg['reps']} reps (min-max); recovery of {cfg['rec_reps']}.")
    md = head + "\n\n" + table(res) + "\n"
    print(md)
    os.makedirs(RESULTS, exist_ok=True)
    stem = "postgres-smoke" if a.smoke else "postgres"  # the smoke test must not overwrite real results
    with open(os.path.join(RESULTS, stem + ".md"), "w") as f:
        f.write(md)
    with open(os.path.join(RESULTS, stem + ".json"), "w") as f:
        json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
