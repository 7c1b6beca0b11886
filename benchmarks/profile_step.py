"""Where a step's microseconds go: the step path under cProfile, grouped by layer.

    python benchmarks/profile_step.py [--steps N] [--durability process|full]

Runs one flow of N trivial steps (``bench_flows.flows.StepFlow``) on a fresh SQLite journal,
first plainly (wall and CPU time per step, the numbers to quote), then under cProfile, and
prints each layer's share of the profiled time scaled to the unprofiled CPU time per step.
The profiler's clock is the wall clock in ``process`` mode (one busy thread: wall is CPU on a
quiet machine, and the wall clock is the cheapest to read, so it inflates Python calls
least) and CPU time in ``full`` mode (where an fsync's wait is not work; its kernel part is).
cProfile inflates Python calls more than C calls, so the scaled figures overstate our
Python slightly and understate SQLite; the shares are what to read. The layers are the
modules of the step path: dispatch (rewritten call site, binder, step guard), the run
(step numbering, replay lookup, bookkeeping), arguments (canonical binding and
fingerprint), encoding (framed pickles), the write path (carried rows, the fenced
transaction), SQLite itself (the C calls of :mod:`sqlite3`), and the flow's own code.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]

import transparent_de  # noqa: E402

transparent_de.install("bench_flows")
from bench_flows.flows import StepFlow  # noqa: E402

_ARGUMENTS = {"fingerprint", "_fast_call_args", "is_flat"}


def layer(filename: str, name: str) -> str:
    """The layer of one profiled function (``filename`` is ``~`` for C functions)."""
    base = os.path.basename(filename)
    if filename == "~":
        if "sqlite3" in name:
            return "SQLite (C calls of sqlite3)"
        if "fsync" in name:
            return "fsync of the WAL (durability full)"
        if any(k in name for k in ("blake2b", "hexdigest", "sorted")):
            return "arguments (canonical binding, fingerprint)"
        if any(k in name for k in ("dumps", "crc32", "pack")):
            return "encoding (framed pickles, CRC)"
        return "other (engine, threads, stdlib)"
    if base == "_entries.py" or name in _ARGUMENTS:
        return "arguments (canonical binding, fingerprint)"
    if base == "_serialization.py":
        return "encoding (framed pickles, CRC)"
    if base in ("_trampoline.py", "_guard.py"):
        return "dispatch (binder, step guard)"
    if base == "_writes.py" or f"{os.sep}_store{os.sep}" in filename:
        return "write path (carried rows, fenced commit)"
    if base in ("_run.py", "_faults.py", "_ownership.py", "_clock.py"):
        return "run (numbering, replay lookup, bookkeeping)"
    if "bench_flows" in filename:
        return "flow code (the loop and step bodies)"
    return "other (engine, threads, stdlib)"


def _journal() -> str:
    return os.path.join(tempfile.mkdtemp(prefix="tde-prof-"), uuid.uuid4().hex + ".db")


def _run(steps: int, durability: str) -> tuple[float, float]:
    """Wall and CPU seconds of one flow of ``steps`` steps (engine start not included)."""
    eng = transparent_de.Engine(_journal(), durability=durability)
    try:
        eng.run(StepFlow().run, 10, flow_id="warm-" + uuid.uuid4().hex)
        w, c = time.perf_counter(), time.process_time()
        eng.run(StepFlow().run, steps, flow_id=uuid.uuid4().hex)
        return time.perf_counter() - w, time.process_time() - c
    finally:
        eng.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--durability", choices=("process", "full"), default="process")
    a = ap.parse_args()
    runs = sorted(_run(a.steps, a.durability) for _ in range(5))
    wall, cpu = runs[len(runs) // 2]
    eng = transparent_de.Engine(_journal(), durability=a.durability)
    prof = cProfile.Profile(time.perf_counter if a.durability == "process" else time.process_time)
    try:
        eng.run(StepFlow().run, 10, flow_id="warm")
        prof.enable()
        eng.run(StepFlow().run, a.steps, flow_id="profiled")
        prof.disable()
    finally:
        eng.close()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    by_layer: dict[str, float] = {}
    calls = 0
    for (filename, _line, name), (_cc, ncalls, tottime, _ct, _callers) in stats.items():
        calls += ncalls
        where = layer(filename, name)
        by_layer[where] = by_layer.get(where, 0.0) + tottime
    total = sum(by_layer.values())
    scale = cpu / a.steps * 1e6 / total if total else 0.0
    print(f"{a.steps} steps, durability={a.durability}: {wall / a.steps * 1e6:.1f} µs wall, "
          f"{cpu / a.steps * 1e6:.1f} µs CPU per step (median of 5); {calls / a.steps:.0f} profiled "
          "calls per step\n")
    print("| layer | share | µs of CPU per step |")
    print("| --- | ---: | ---: |")
    for label, t in sorted(by_layer.items(), key=lambda kv: -kv[1]):
        print(f"| {label} | {t / total:.0%} | {t * scale:.1f} |")
    print("\nTop functions by own time (profiled µs per step):")
    top = sorted(stats.items(), key=lambda kv: -kv[1][2])[:15]
    for (filename, line, name), (_cc, ncalls, tottime, _ct, _callers) in top:
        where = name if filename == "~" else f"{os.path.basename(filename)}:{line} {name}"
        print(f"  {tottime / a.steps * 1e6:6.2f}  {ncalls / a.steps:5.1f}/step  {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
