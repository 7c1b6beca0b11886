"""What corpus programs import: effects, appended to the effects file of the current run.

``effect(...)`` is for step bodies: a step that completed is never run again, so a replay or
a recovery must not repeat it. ``flow_effect(...)`` is for flow-level code (handlers, context
managers, code between steps), which plain re-execution runs again on every replay: it is
compared only between runs that execute the flow once (plain and journaled).
"""

from __future__ import annotations

import json
import os

FLOW_MARK = "@flow"


def _write(what: tuple[object, ...]) -> None:
    path = os.environ.get("CORPUS_EFFECTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps([str(w) for w in what]) + "\n")


def effect(*what: object) -> None:
    _write(what)


def flow_effect(*what: object) -> None:
    _write((FLOW_MARK, *what))
