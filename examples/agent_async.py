"""An async agent whose parallel tool calls are steps: killed mid-way, it resumes without re-calling them.

``python examples/agent_async.py`` — uses a temporary journal. The agent plans, runs three
searches at once (``asyncio.gather`` of async steps), waits on a durable ``asyncio.sleep``
timer, then summarizes and reviews in parallel (a ``TaskGroup`` on 3.11+, ``gather`` on 3.10).
Its first process is killed with SIGKILL while the timer runs; a second process runs the flow
again with the same id: the plan and the searches are replayed from the journal, the timer
waits only what is left of it, and only the calls that never ran are made.
"""

import asyncio
import collections
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FLOW_ID = "agent-async-1"
QUESTION = "how do durable flows work?"


def child() -> None:
    sys.path.insert(0, HERE)
    import transparent_de

    transparent_de.install("agent_async_flows")
    from agent_async_flows.flows import ResearchAgent

    async def main() -> dict:
        return await transparent_de.run_async(ResearchAgent().run, QUESTION, flow_id=FLOW_ID)

    result = asyncio.run(main())
    print(f"  answer: {result}", flush=True)


def timer_deadline(db: str) -> float | None:
    """The deadline of the flow's durable timer (epoch seconds), once journaled; read from outside."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            row = con.execute(
                "SELECT timestamp + delay FROM execution_log WHERE flow_id = ? AND kind = 'sleep'", (FLOW_ID,)
            ).fetchone()
        finally:
            con.close()
    except sqlite3.Error:  # not created yet
        return None
    return None if row is None else row[0] / 1000


def calls(path: str) -> collections.Counter:
    try:
        with open(path) as f:
            return collections.Counter(line.rstrip("\n") for line in f)
    except FileNotFoundError:
        return collections.Counter()


def show(db: str) -> None:
    con = sqlite3.connect(db)
    print("  step  lineage  method     kind   status")
    for step, lineage, method, kind, status in con.execute(
        "SELECT step, lineage, method_name, kind, status FROM execution_log WHERE flow_id = ? ORDER BY step",
        (FLOW_ID,),
    ):
        print(f"  {step:>4}  {lineage or '-':<7}  {method:<9}  {kind:<5}  {status}")
    con.close()


def main() -> int:
    if sys.argv[1:] == ["child"]:
        child()
        return 0
    work = tempfile.mkdtemp(prefix="tde-agent-async-")
    db, log = os.path.join(work, "agent.db"), os.path.join(work, "calls.txt")
    env = dict(os.environ, TRANSPARENT_DE_DB=db, AGENT_CALLS=log)
    print("1) The agent plans and searches in parallel, then waits on its timer; its process is killed:")
    p = subprocess.Popen([sys.executable, __file__, "child"], env=env)
    deadline = time.monotonic() + 60
    while (due := timer_deadline(db)) is None and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
        left = max(0.0, due - time.time()) if due else 0.0
        print(
            f"  agent process killed with SIGKILL while its durable timer ran ({left:.2f} s left)", flush=True
        )
    p.wait()
    before = calls(log)
    print(f"  tool calls made: {sorted(before)}")
    print("\n2) The journal after the kill (plain SQLite; lineage = task key : call number in that task):")
    show(db)
    print("\n3) Run again with the same flow id: plan and searches are replayed, the timer waits out")
    print("   what is left of it, and the calls that never ran are made:")
    t0 = time.monotonic()
    q = subprocess.run([sys.executable, __file__, "child"], env=env)
    print(f"  second process: {time.monotonic() - t0:.2f} s")
    after = calls(log)
    print("\n4) The journal now:")
    show(db)
    searches = [c for c in before if c.startswith("search ")]
    ok = (
        p.returncode == -signal.SIGKILL
        and q.returncode == 0
        and before["plan"] == 1
        and len(searches) == 3
        and "summarize" not in before
        # every tool call ran exactly once over both processes: none completed one ran again
        and set(after) == {"plan", *searches, "summarize", "review", "answer"}
        and all(n == 1 for n in after.values())
    )
    print(f"\n  executions over both processes: {dict(after)}")
    print(f"\n{'OK' if ok else 'FAILED'}: journal at {db}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
