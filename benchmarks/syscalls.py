"""System calls, fsyncs and WAL bytes per step: the costs that do not depend on machine load.

    python benchmarks/syscalls.py            # prints a small table (needs strace for the counts)

Each figure is the difference between a run of N steps and a run of 0 steps in a fresh child
process under ``strace -f -c``, divided by the steps, so interpreter start-up and journal
creation cancel out. WAL bytes are measured on a journal small enough not to checkpoint.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def child(kind: str, durability: str, steps: int, flows: int, db: str) -> None:
    """The measured program: ``flows`` flows of ``steps`` steps (at once when flows > 1)."""
    sys.path[:0] = [HERE, ROOT]
    if kind == "raw":
        import run  # the benchmark's own floor: the same statements

        if steps:
            run.raw_floor(steps, flows, "FULL" if durability == "full" else "NORMAL", 1, path=db, keep=True)
            print(0)  # the fsync count line of ours (not counted for the floor)
        shutil.rmtree(run.TMP, ignore_errors=True)
        return
    import transparent_de

    transparent_de.install("bench_flows")
    from bench_flows.flows import StepFlow

    fsyncs = [0]
    if os.environ.get("TDE_COUNT_FSYNC"):  # counted in Python: strace slows threads into other timings
        real = os.fsync

        def counted(fd: int) -> None:
            fsyncs[0] += 1
            real(fd)

        os.fsync = counted
    eng = transparent_de.Engine(db, durability=durability, hmac_key=None, max_workers=max(flows, 1))
    try:
        eng.run(StepFlow().run, 1, flow_id="warm")
        if steps:
            handles = [eng.start(StepFlow().run, steps, flow_id=uuid.uuid4().hex) for _ in range(flows)]
            for h in handles:
                h.result(timeout=600)
        _print_wal(db)
        print(fsyncs[0])
    finally:
        eng.close()


def _print_wal(db: str) -> None:
    """The WAL's size while the journal is open (closing the last connection deletes it)."""
    wal = db + "-wal"
    print(os.path.getsize(wal) if os.path.exists(wal) else 0)


def _strace(args: list[str], out: str) -> dict[str, int]:
    subprocess.run(["strace", "-f", "-c", "-o", out, *args], check=True, capture_output=True)
    counts: dict[str, int] = {}
    with open(out) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                counts[parts[-1]] = int(parts[3])
    return counts


def per_step(kind: str, durability: str, steps: int = 2000, flows: int = 1) -> dict[str, Any]:
    """Syscalls (all, fsync-like, lock fcntl) per step, from two runs under strace."""
    tmp = tempfile.mkdtemp(prefix="tde-sys-")
    try:
        runs = []
        for n in (0, steps):
            db = os.path.join(tmp, f"{n}.db")
            args = [sys.executable, __file__, "--child", kind, durability, str(n), str(flows), db]
            runs.append(_strace(args, os.path.join(tmp, f"{n}.strace")))
        zero, full = runs
        total = steps * flows
        diff = {k: full.get(k, 0) - zero.get(k, 0) for k in set(full) | set(zero)}
        syncs = sum(v for k, v in diff.items() if k in ("fsync", "fdatasync"))
        top = sorted(((v / total, k) for k, v in diff.items() if v > 0), reverse=True)[:6]
        return {
            "syscalls": sum(diff.values()) / total,
            "fsyncs": syncs / total,
            "top": {k: round(v, 2) for v, k in top},
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def wal_bytes(kind: str, steps: int = 300) -> float:
    """WAL bytes per step (process mode), on a journal that does not reach a checkpoint."""
    tmp = tempfile.mkdtemp(prefix="tde-wal-")
    try:
        sizes = []
        for n in (0, steps):
            db = os.path.join(tmp, f"{n}.db")
            out = subprocess.run(
                [sys.executable, __file__, "--child", kind, "process", str(n), "1", db],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
            sizes.append(int(out[-2]) if len(out) >= 2 else 0)
        return (sizes[1] - sizes[0]) / steps
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fsyncs_concurrent(flows: int = 16, steps: int = 100) -> float:
    """fsyncs per step of ``flows`` concurrent flows in ``full`` mode, counted without strace
    (under ptrace every syscall is slow enough to change how commits meet in one fsync)."""
    tmp = tempfile.mkdtemp(prefix="tde-fs-")
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--child", "ours", "full", str(steps), str(flows), os.path.join(tmp, "j.db")],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "TDE_COUNT_FSYNC": "1"},
        ).stdout.split()
        return int(out[-1]) / (flows * steps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure() -> dict[str, Any]:
    """Every figure of the table; ``{"skipped": why}`` without strace."""
    if shutil.which("strace") is None:
        return {"skipped": "strace is not installed (apt-get install strace)"}
    out: dict[str, Any] = {
        "ours_process": per_step("ours", "process"),
        "raw_process": per_step("raw", "process"),
        "ours_full": per_step("ours", "full", 500),
        "raw_full": per_step("raw", "full", 500),
        "ours_full_16": per_step("ours", "full", 100, flows=16),
        "fsyncs_16": fsyncs_concurrent(),
        "wal_ours": wal_bytes("ours"),
        "wal_raw": wal_bytes("raw"),
    }
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, durability, steps, flows, db = sys.argv[2:7]
        child(kind, durability, int(steps), int(flows), db)
        return 0
    res = measure()
    for key, value in res.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
