"""Run one corpus program one way, in this (fresh) process; print the outcome as one JSON line.

    python _driver.py plain PROGRAM
    python _driver.py journaled PROGRAM DB [CRASH_AT]   (CRASH_AT: die at that crash point)
    python _driver.py recover PROGRAM DB                 (resume a crashed run, as a worker does)
    python _driver.py replay PROGRAM DB                  (the finished flow, re-run from step 0)

The outcome is ``{"result": repr}`` or ``{"error": [MRO names], "message": str}``, plus
``"points"`` (crash points met) for journaled runs. Effects go to ``$CORPUS_EFFECTS``.
``replay`` re-opens the finished flow (its step 0 and the flow row back to PENDING, which is
what a crash just before the flow's last commit leaves), so every step must come from the
journal: a replay that runs any step body shows up as an effect.
"""

from __future__ import annotations

import importlib
import json
import os
import sqlite3
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FLOW_ID = "corpus"


def outcome(fn):  # type: ignore[no-untyped-def]
    try:
        return {"result": repr(fn())}
    except BaseException as exc:  # the outcome is what we compare, whatever it is
        return {"error": [c.__name__ for c in type(exc).__mro__], "message": str(exc)}


def reopen(db: str) -> None:
    con = sqlite3.connect(db)
    with con:
        con.execute(
            "UPDATE flows SET status = 'PENDING', owner = NULL, lease_until = NULL, wake_at = NULL,"
            " waiting_for = NULL, failures = 0 WHERE flow_id = ?",
            (FLOW_ID,),
        )
        con.execute(
            "UPDATE execution_log SET status = 'PENDING', return_value = NULL, error = NULL,"
            " error_text = NULL WHERE flow_id = ? AND step = 0",
            (FLOW_ID,),
        )
    con.close()


def main() -> None:
    mode, program = sys.argv[1], sys.argv[2]
    sys.path.insert(0, HERE)
    if mode == "plain":
        module = importlib.import_module(program)
        print(json.dumps(outcome(lambda: module.Flow().run(*module.ARGS))))
        return

    import transparent_de
    from transparent_de import _faults

    db = sys.argv[3]
    transparent_de.install(program)
    module = importlib.import_module(program)
    if mode == "replay":
        reopen(db)
    transparent_de.configure(database=db, durability="process", poll_interval=0.02)
    plan = _faults.FaultPlan(at=int(sys.argv[4]) if len(sys.argv) > 4 else None)
    background = getattr(module, "MODE", "run") == "start"

    def go():  # type: ignore[no-untyped-def]
        entry = module.Flow().run
        if mode == "recover":
            for handle in transparent_de.recover():
                if handle.id == FLOW_ID:
                    return handle.result(timeout=60)
            return transparent_de.run(entry, *module.ARGS, flow_id=FLOW_ID)  # finished: memoized
        if background and mode != "replay":
            return transparent_de.start(entry, *module.ARGS, flow_id=FLOW_ID).result(timeout=60)
        return transparent_de.run(entry, *module.ARGS, flow_id=FLOW_ID)

    _faults.install(plan)
    try:
        out = outcome(go)
    finally:
        _faults.install(None)
    out["points"] = plan.hits
    print(json.dumps(out))


if __name__ == "__main__":
    main()
