"""The crash-recovery suite: random flows x crashes, the exhaustive sweep, power loss, several
workers, and planted bugs that the suite must catch (the proof that it can fail).

Example counts follow the Hypothesis profile (``HYPOTHESIS_PROFILE=dev|ci|nightly``, see
``conftest.py``); the other tests scale from it.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz import async_programs, harness, powerloss, programs, stateful

EXAMPLES = settings.default.max_examples


@given(source=programs.flow_programs(), data=st.data())
def test_random_flows_survive_crashes(source: str, data: Any) -> None:
    n = harness.count_points(source)
    schedule = data.draw(st.lists(st.integers(1, n), min_size=1, max_size=3), label="crash schedule")
    harness.check(source, schedule)


SWEEP = [(name, d) for name in programs.FIXED for d in ("process", "full")]


@pytest.mark.parametrize(("name", "durability"), SWEEP)
def test_sweep_every_crash_point(name: str, durability: str) -> None:
    failures: list[str] = []
    harness.sweep(
        programs.FIXED[name], on_fail=lambda k, e: failures.append(f"k={k}: {e}"), durability=durability
    )
    assert not failures, "\n".join(failures[:5])


@pytest.mark.parametrize("durability", ["process", "full"])
def test_sweep_signed_journal(durability: str) -> None:
    """Sleeps, a signal and its delivery, a caught failure: every crash point with signing on."""
    failures: list[str] = []
    harness.sweep(
        programs.FIXED["timers"],
        on_fail=lambda k, e: failures.append(f"k={k}: {e}"),
        durability=durability,
        key="fuzz-signing-key",
    )
    assert not failures, "\n".join(failures[:5])


@pytest.mark.parametrize("name", ["flaky", "retry"])
def test_sweep_every_pair_of_crash_points(name: str) -> None:
    """A crash, then a crash while recovering, at every pair of points of a short flow."""
    failures: list[str] = []
    harness.sweep(programs.FIXED[name], on_fail=lambda k, e: failures.append(f"k={k}: {e}"), pairs=True)
    assert not failures, "\n".join(failures[:5])


@pytest.mark.parametrize(("name", "durability"), SWEEP)
def test_power_loss_fixed_flows(name: str, durability: str) -> None:
    report = powerloss.check(programs.FIXED[name], durability=durability)
    assert report.states > 10 and report.recoveries > 3


@settings(max_examples=max(5, EXAMPLES // 2))
@given(source=programs.flow_programs(), data=st.data(), durability=st.sampled_from(["process", "full"]))
def test_power_loss_random_flows(source: str, data: Any, durability: str) -> None:
    """Crash a random flow at a random point, then cut its WAL everywhere and recover from each state."""
    n = harness.count_points(source, durability=durability)
    at = data.draw(st.integers(1, n), label="crash point")
    seed = data.draw(st.integers(0, 2**16), label="cut seed")
    powerloss.check(source, crash_at=at, durability=durability, seed=seed, recover_every=3)


# ----------------------------------------------------------------- async flows (issue #16)
#
# The same properties on async programs (fuzz/async_programs.py): gather, nested gather,
# interleaved sequences, create_task, TaskGroup (3.11+; gather on 3.10), durable asyncio.sleep,
# steps finishing in a random order in every run. A sixth of the sync examples: each one costs
# about as much, and the sync programs cover the engine paths the two share.

ASYNC_EXAMPLES = max(5, EXAMPLES // 6)


@settings(max_examples=ASYNC_EXAMPLES)
@given(source=async_programs.async_flow_programs(), data=st.data())
def test_random_async_flows_survive_crashes(source: str, data: Any) -> None:
    n = harness.count_points(source)
    schedule = data.draw(st.lists(st.integers(1, n), min_size=1, max_size=3), label="crash schedule")
    harness.check(source, schedule)


# Every fixed async flow in "process" mode; "full" (an fsync per commit, sync flows' sweep
# covers it for every shape) for the one with timers and a task group only: the ci profile's
# async share stays near a minute.
ASYNC_SWEEP = [(name, "process") for name in async_programs.FIXED] + [("tasks", "full")]


@pytest.mark.parametrize(("name", "durability"), ASYNC_SWEEP)
def test_async_sweep_every_crash_point(name: str, durability: str) -> None:
    failures: list[str] = []
    harness.sweep(
        async_programs.FIXED[name], on_fail=lambda k, e: failures.append(f"k={k}: {e}"), durability=durability
    )
    assert not failures, "\n".join(failures[:5])


# The planted bugs on the step path (the others are about fsync, escaped failures and leases,
# which async flows share with sync ones unchanged): the async sweep must see each too. Not
# counted in the summary's "planted bugs caught", which counts the eight of PLANTED below.
ASYNC_PLANTED = [
    "complete-before-run",
    "drop-carried-result",
    "forget-attempts",
    "replay-pending-as-complete",
]


@pytest.mark.parametrize("bug", ASYNC_PLANTED)
def test_planted_bug_is_caught_in_async_flows(bug: str) -> None:
    with harness.planted_bug(bug):
        caught = any(
            harness.sweep(async_programs.FIXED[name], stop_at_first=True)
            for name in ("fanout", "interleaved")
        )
    assert caught, f"planted bug {bug!r} was not caught by the async sweep"


TestWorkers = stateful.Flows.TestCase
TestWorkers.settings = settings(max_examples=max(3, EXAMPLES // 20), stateful_step_count=12)


def test_a_live_owner_is_never_overtaken() -> None:
    stateful.live_owner_check()


# ----------------------------------------------------------------- planted bugs


def _sweep_catches(bug: str, durability: str = "process") -> bool:
    with harness.planted_bug(bug):
        for name in ("flaky", "branchy", "linear", "timers"):
            if harness.sweep(programs.FIXED[name], stop_at_first=True, durability=durability):
                return True
    return False


def _power_loss_catches(bug: str) -> bool:
    """Power loss at the end of the flow, and in the middle of it (after a step's result was
    acknowledged but before the flow's final fsync)."""
    with harness.planted_bug(bug):
        for crash_at in (None, 12, 20):
            try:
                powerloss.check(programs.FIXED["linear"], crash_at=crash_at, durability="full")
            except harness.PropertyFailure:
                return True
    return False


def _live_owner_catches(bug: str) -> bool:
    with harness.planted_bug(bug):
        try:
            stateful.live_owner_check()
        except harness.PropertyFailure:
            return True
    return False


PLANTED = {
    "replay-pending-as-complete": _sweep_catches,  # a PENDING step replayed as if it had completed
    "complete-before-run": _sweep_catches,  # the step marked COMPLETE before its body ran
    "forget-attempts": _sweep_catches,  # a resumed flow does not count its attempt
    "failed-stays-failed": _sweep_catches,  # an escaped failure is replayed instead of retried
    "skip-sync": _power_loss_catches,  # durability="full" forgets its fsync
    "drop-carried-result": _sweep_catches,  # a step's result never written (one commit per step)
    "unsynced-carried-result": _power_loss_catches,  # full mode: the result rides in an unsynced commit
    "steal-live-lease": _live_owner_catches,  # a flow owned by a live process is taken over
}


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_planted_bug_is_caught(bug: str) -> None:
    assert PLANTED[bug](bug), f"planted bug {bug!r} was not caught: the suite cannot see that kind of failure"
    harness.STATS.planted_caught += 1
