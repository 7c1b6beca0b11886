"""Hypothesis profiles for the fuzz suite (HYPOTHESIS_PROFILE=dev|ci|nightly) and the summary line."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings

_common: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("dev", max_examples=50, **_common)
settings.register_profile("ci", max_examples=100, database=None, derandomize=True, **_common)
settings.register_profile("nightly", max_examples=20000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from fuzz.harness import STATS

    stats = terminalreporter.stats
    passed = len(stats.get("passed", []))
    failed = len(stats.get("failed", []))
    terminalreporter.write_line(STATS.line())
    terminalreporter.write_line(f"fuzz: {passed} passed, {failed} failed")
