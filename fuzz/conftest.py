"""Hypothesis profiles for the fuzz suite (HYPOTHESIS_PROFILE=dev|ci|nightly) and the summary line."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings

_common: dict[str, Any] = {
    "deadline": None,
    "print_blob": True,  # a failure prints @reproduce_failure(...) to paste over the test
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("dev", max_examples=50, **_common)
settings.register_profile("ci", max_examples=300, database=None, derandomize=True, **_common)
settings.register_profile("nightly", max_examples=20000, **_common)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "dev")
settings.load_profile(PROFILE)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from fuzz.harness import STATS

    stats = terminalreporter.stats
    passed = len(stats.get("passed", []))
    failed = len(stats.get("failed", []))
    terminalreporter.write_line(STATS.line())
    if failed:
        names = " or ".join(sorted({r.nodeid.split("::")[-1].split("[")[0] for r in stats["failed"]}))
        terminalreporter.write_line(
            f"replay with: HYPOTHESIS_PROFILE={PROFILE} python -m pytest fuzz -k '{names}' "
            "(the ci profile is derandomized: the same examples run again; see the printed "
            "@reproduce_failure blob for others)"
        )
    terminalreporter.write_line(f"fuzz: {passed} passed, {failed} failed")
