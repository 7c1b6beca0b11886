"""``python -m fuzz --examples N --seed S [--jobs J] [--async]``: the crash-recovery property outside pytest.

Runs N random flow programs, each crashed at 1-3 random crash points and recovered, against
plain Python as the oracle (the same property as ``pytest fuzz``); with ``--async``, random
async flow programs (``fuzz/async_programs.py``) against plain asyncio. With ``--jobs`` the
examples are split over J forked processes with seeds derived from S. Ends with the summary
line and ``N passed, N failed``; a failure prints the command that replays it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import pickle
import sys
import time
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from fuzz import async_programs, harness, programs
from fuzz.planted import BUGS, planted


def _run(examples: int, seed_: int, bug: str | None = None, is_async: bool = False) -> bool:
    flows = async_programs.async_flow_programs() if is_async else programs.flow_programs()

    @seed(seed_)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(source=flows, data=st.data())
    def prop(source: str, data: Any) -> None:
        n = harness.count_points(source)
        schedule = data.draw(st.lists(st.integers(1, n), min_size=1, max_size=3), label="crash schedule")
        harness.check(source, schedule)

    try:
        with planted(bug) if bug else contextlib.nullcontext():
            prop()
    except Exception as exc:
        print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        flag = (f" --planted {bug}" if bug else "") + (" --async" if is_async else "")
        print(f"seed {seed_}; replay with: python -m fuzz --examples {examples} --seed {seed_}{flag}")
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="forked worker processes (seed S*1000+j each)")
    parser.add_argument("--planted", choices=sorted(BUGS), help="run against an engine with this bug planted")
    parser.add_argument("--async", dest="is_async", action="store_true", help="random async flow programs")
    args = parser.parse_args(argv)
    start = time.monotonic()
    shares = [args.examples // args.jobs + (j < args.examples % args.jobs) for j in range(max(1, args.jobs))]
    if args.jobs <= 1:
        results = [_run(args.examples, args.seed, args.planted, args.is_async)]
    else:
        results = []
        children = []
        for j, share in enumerate(shares):
            out = f"/tmp/tde-fuzz-{os.getpid()}-{j}.pickle"
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                ok = False
                try:
                    ok = _run(share, args.seed * 1000 + j, args.planted, args.is_async)
                    with open(out, "wb") as f:
                        pickle.dump((ok, harness.STATS), f)
                finally:
                    sys.stdout.flush()
                    os._exit(0 if ok else 1)
            children.append((pid, out))
        for pid, out in children:
            os.waitpid(pid, 0)
            try:
                with open(out, "rb") as f:
                    ok, stats = pickle.load(f)
                os.unlink(out)
            except OSError:
                ok, stats = False, harness.Stats()
            results.append(ok)
            for fld in dataclasses.fields(harness.Stats):
                setattr(harness.STATS, fld.name, getattr(harness.STATS, fld.name) + getattr(stats, fld.name))
    # Hypothesis stops a job at its first failure (then shrinks it): count the examples of the
    # jobs that finished clean as passed, one failure per failed job.
    passed = sum(n for n, ok in zip(shares, results, strict=True) if ok)
    failed = results.count(False)
    print(harness.STATS.line())
    print(f"took {time.monotonic() - start:.1f}s, seed {args.seed}, jobs {len(results)}")
    print(f"fuzz: {passed} passed, {failed} failed")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
