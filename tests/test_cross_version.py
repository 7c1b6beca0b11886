"""A journal written by one CPython resumes on this one (see tests/xversion.py).

By default the journal is written here by this interpreter in a process that is killed
mid-way, and resumed in a fresh one. CI writes one with CPython 3.11 first and points
``TDE_XV_JOURNAL`` at it, so every interpreter of the matrix resumes a 3.11 journal.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest


def _xversion() -> ModuleType:
    spec = importlib.util.spec_from_file_location("xversion", Path(__file__).with_name("xversion.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


XV = _xversion()
HERE = f"{sys.version_info[0]}.{sys.version_info[1]}"


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    given = os.environ.get("TDE_XV_JOURNAL")
    if given:
        return XV.copy(Path(given), tmp_path / "xv")  # type: ignore[no-any-return]
    XV.write(tmp_path / "xv")
    return tmp_path / "xv"


def test_a_killed_flow_resumes_from_a_journal_of_another_python(journal: Path) -> None:
    report = XV.resume(journal)
    assert report["python"] == HERE
    order = report["flows"]["xv-order"]
    assert "error" not in order, order
    assert order["basket_ok"] and order["total_ok"], order
    assert (order["customer"], order["tags"]) == ("ann", ["new", "vip"])  # the instance, from the journal
    assert order["note"] == "out of stock: sku-2"  # the caught failure, replayed without running the step
    recorded = next(value for name, value in report["effects"] if name == "record")
    assert order["captured"] == recorded  # uuid4, time.time, randint: replayed, not drawn again
    assert order["receipt"] == f"paid 139.90 EUR key={recorded[0][:8]}"
    ran = Counter(
        name if name != "crash_here" else f"crash_here {value}" for name, value in report["effects"]
    )
    # Completed steps ran once, in the writer; the step it was killed in ran again (at least once).
    assert {k: v for k, v in ran.items() if k in ORDER_STEPS} == {
        "load": 1,
        "reserve": 1,
        "price": 1,
        "tools": 1,
        "record": 1,
        "crash_here order": 2,
        "charge": 1,
    }


ORDER_STEPS = ("load", "reserve", "price", "tools", "record", "crash_here order", "charge")


def test_a_value_holding_code_resumes_only_on_the_python_that_wrote_it(journal: Path) -> None:
    report = XV.resume(journal)
    callbacks = report["flows"]["xv-callbacks"]
    ran = Counter(f"{name} {value}" for name, value in report["effects"] if name in ("make", "crash_here"))
    if report["writer"] == HERE:
        assert callbacks == {"value": 12}
        assert (ran["make None"], ran["crash_here callbacks"]) == (1, 2)
        return
    assert (ran["make None"], ran["crash_here callbacks"]) == (1, 1)  # stopped at the replay of `make`
    assert callbacks["error"] == "UnsupportedPythonError", callbacks
    assert f"compiled by CPython {report['writer']}; this is CPython {HERE}" in callbacks["message"]
    assert "flow xv-callbacks, step 1" in callbacks["message"]
