"""Named crash points inside the engine (FoundationDB's BUGGIFY, SQLite's fault loop).

``point(label)`` is called at every journal boundary. With no plan installed it is one
global load and a comparison, and nothing outside the process can install one: a plan is
installed only by code that calls :func:`install` (the test toolkit and the fuzz suite).
It counts hits and, at a chosen hit, kills the process (``os._exit``), raises
:class:`InjectedCrash` (a ``BaseException``: user ``except Exception`` cannot swallow it) or
calls back. Broken engine variants for the fuzz suite are patched in by the suite itself
(``fuzz/planted.py``); the package has no switch for them.

Labels (documented in docs/fuzzing.md), in the order a step meets them. ``*.mid_txn`` is
inside the transaction, after its statements and before its COMMIT (the store fires it)::

    flow.start.before_insert  flow.start.mid_txn  flow.start.after_commit
    step.enter  step.intent.before_write  step.intent.mid_txn  step.intent.after_commit
    (the body runs)  step.result.before_write  step.result.carried (written by the next commit)
    step.error.mid_txn  step.error.after_commit  step.retry.before_backoff
    sleep.start.mid_txn  sleep.after_deadline_written  sleep.wake.before_commit  sleep.wake.mid_txn
    signal.wait.mid_txn  signal.wait.after_write  signal.deliver.mid_txn  signal.send.mid_txn
    flow.complete.before  flow.complete.mid_txn  flow.complete.after_commit
    flow.park.mid_txn  flow.fail.mid_txn  flow.release.mid_txn  flow.flush.mid_txn
    journal.commit (other transactions: cancel, retry)  recovery.after_scan
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Process exit status used for deliberate crashes, to tell them from real deaths.
CRASH_EXIT_CODE = 77


class InjectedCrash(BaseException):
    """An in-process crash injected at a crash point (not an error of the flow)."""

    def __init__(self, label: str, hit: int) -> None:
        super().__init__(f"injected crash at {label} (hit {hit})")
        self.label = label
        self.hit = hit


@dataclass
class FaultPlan:
    """Which hit of the crash points fires, and how.

    ``at`` is the 1-based global ordinal of the hit that fires (``None``: count only);
    ``label`` restricts counting to one label; ``action`` is ``"exit"``, ``"raise"`` or a callable.
    """

    at: int | None = None
    action: str | Callable[[str, int], None] = "exit"
    label: str | None = None
    hits: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    trace: list[str] = field(default_factory=list)
    fired: bool = False

    def hit(self, label: str) -> None:
        if self.label is not None and label != self.label:
            return
        self.hits += 1
        self.labels[label] += 1
        self.trace.append(label)
        if self.at is not None and self.hits == self.at and not self.fired:
            self.fired = True
            if callable(self.action):
                self.action(label, self.hits)
            elif self.action == "exit":
                os._exit(CRASH_EXIT_CODE)
            else:
                raise InjectedCrash(label, self.hits)


_plan: FaultPlan | None = None

#: Test-only: where captured values come from (``(what, step, fn, args, kwargs) -> value``).
#: The crash sweep makes them a function of the step number, so independent runs agree.
capture_override: Callable[[str, int, Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any] | None = None


def point(label: str) -> None:
    if _plan is not None:
        _plan.hit(label)


def install(plan: FaultPlan | None) -> FaultPlan | None:
    """Install ``plan`` (or remove with ``None``); returns the previous plan."""
    global _plan
    old, _plan = _plan, plan
    return old


def current() -> FaultPlan | None:
    return _plan
