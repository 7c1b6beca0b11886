"""The crash-recovery property over random flow programs, the exhaustive sweep, planted bugs."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz import harness, programs


@given(source=programs.flow_programs(), data=st.data())
def test_random_flows_survive_crashes(source: str, data: Any) -> None:
    n = harness.count_points(source)
    schedule = data.draw(st.lists(st.integers(1, n), min_size=1, max_size=3), label="crash schedule")
    harness.check(source, schedule)


@pytest.mark.parametrize("name", ["branchy", "flaky"])
def test_sweep_every_crash_point(name: str) -> None:
    failures: list[str] = []
    harness.sweep(programs.FIXED[name], on_fail=lambda k, e: failures.append(f"k={k}: {e}"))
    assert not failures, "\n".join(failures[:5])


PLANTED = ("forget-attempts", "failed-stays-failed", "replay-pending-as-complete")


@pytest.mark.parametrize("bug", PLANTED)
def test_planted_bug_is_detected(bug: str) -> None:
    detected = 0
    for name in ("flaky", "branchy", "linear"):
        detected += harness.sweep(programs.FIXED[name], planted=bug, stop_at_first=True)
        if detected:
            break
    assert detected, f"planted bug {bug!r} was not detected by the sweep"
