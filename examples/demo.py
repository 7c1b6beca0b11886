"""Demo: a flow is killed mid-way with SIGKILL and recovers from its SQLite journal.

Run it with ``bash scripts/demo.sh`` (or ``python examples/demo.py``). It uses a journal
``demo.db`` in a fresh temporary directory.
"""

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def child(mode: str) -> None:
    sys.path.insert(0, HERE)
    import transparent_de

    transparent_de.install("orders")
    from orders.flows import OrderFlow

    if mode == "start":
        result = transparent_de.run(OrderFlow().run, 42, flow_id="order-42")
    else:
        handles = transparent_de.recover()
        print(f"  recover() found {len(handles)} unfinished flow(s): {[h.id for h in handles]}", flush=True)
        result = handles[0].result(timeout=30)
    print(f"  flow result: {result}", flush=True)


def show(db: str) -> None:
    con = sqlite3.connect(db)
    print("  step  method    status    attempts")
    for step, method, status, attempts in con.execute(
        "SELECT step, method_name, status, attempts FROM execution_log WHERE flow_id='order-42' ORDER BY step"
    ):
        print(f"  {step:>4}  {method:<9} {status:<9} {attempts}")
    con.close()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("start", "recover"):
        child(sys.argv[1])
        return 0
    work = tempfile.mkdtemp(prefix="tde-demo-")
    env = dict(os.environ, TRANSPARENT_DE_DB=os.path.join(work, "demo.db"))
    print("1) Run OrderFlow(42); the process is killed inside the 'ship' step:")
    p = subprocess.run([sys.executable, __file__, "start"], env=dict(env, DEMO_CRASH_IN_SHIP="1"))
    print(
        f"   process exit: {p.returncode} ({'SIGKILL' if p.returncode == -signal.SIGKILL else 'unexpected'})"
    )
    print("\n2) The journal after the crash (demo.db, plain SQLite):")
    show(env["TRANSPARENT_DE_DB"])
    print("\n3) A fresh process recovers the flow. load, reserve and charge are replayed, not run again;")
    print("   ship (which never recorded a result) runs once more:")
    q = subprocess.run([sys.executable, __file__, "recover"], env=env)
    print("\n4) The journal now:")
    show(env["TRANSPARENT_DE_DB"])
    ok = p.returncode == -signal.SIGKILL and q.returncode == 0
    print(f"\n{'OK' if ok else 'FAILED'}: journal at {env['TRANSPARENT_DE_DB']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
