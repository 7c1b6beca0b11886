"""Import-hook corners: reload keeps flow classes rewritten; imports before install() are fixed up."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest

import transparent_de

SOURCE = """
CALLS = []

class Counter:
    __flow__ = "run"

    def run(self, n):
        return sum(self.one(i) for i in range(n))

    def one(self, i):
        CALLS.append(i)
        return 1
"""


def test_reload_keeps_the_flow_rewritten(engine, flow_module):
    m = flow_module(SOURCE)
    assert transparent_de.run(m.Counter().run, 2, flow_id="a") == 2
    m = importlib.reload(m)
    assert "__tde_spec__" in m.Counter.__dict__
    assert transparent_de.run(m.Counter().run, 3, flow_id="b") == 3
    assert [s.method_name for s in engine.steps("b")] == ["run", "one", "one", "one"]


def test_module_imported_before_install_is_fixed_up_with_a_warning(engine, tmp_path):
    pkg = tmp_path / "early_pkg_tde"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "flows.py").write_text(SOURCE)
    sys.path.insert(0, str(tmp_path))
    try:
        mod = importlib.import_module("early_pkg_tde.flows")  # no hook yet: plain class
        with pytest.raises(transparent_de.FlowNotRewrittenError, match="Counter"):
            transparent_de.run(mod.Counter().run, 1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            handle = transparent_de.install("early_pkg_tde")
        assert any("imported before the hook" in str(w.message) for w in caught)
        assert transparent_de.run(mod.Counter().run, 2, flow_id="early") == 2
        assert [s.method_name for s in engine.steps("early")] == ["run", "one", "one"]
        handle.uninstall()
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n.startswith("early_pkg_tde")]:
            del sys.modules[name]
