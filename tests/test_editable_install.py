"""A flow package installed with `pip install -e` (found by setuptools' own finder) is rewritten."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import transparent_de

PYPROJECT = """
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "tde-editable-probe"
version = "0"

[tool.setuptools]
packages = ["edflows"]
"""

FLOWS = """
class Add:
    __flow__ = "run"

    def run(self, a, b):
        return self.add(a, b)

    def add(self, a, b):
        return a + b
"""

CHECK = """
import sys
import transparent_de
transparent_de.install("edflows")
import edflows.flows as m
assert "__editable__" in repr(sys.meta_path) or "_EditableFinder" in repr(sys.meta_path), sys.meta_path
print(transparent_de.run(m.Add().run, 2, 3, flow_id="e"))
print([s.method_name for s in transparent_de.default_engine().steps("e")])
"""


@pytest.mark.skipif(os.environ.get("TDE_SKIP_PIP_TESTS") == "1", reason="needs pip and a package index")
def test_editable_install_is_found_through_the_other_finders(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    (project / "edflows").mkdir(parents=True)
    (project / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    (project / "edflows" / "__init__.py").write_text("")
    (project / "edflows" / "flows.py").write_text(textwrap.dedent(FLOWS))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    pip = subprocess.run(
        [py, "-m", "pip", "install", "-q", "--no-deps", "-e", str(project)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if pip.returncode != 0:
        pytest.skip(f"pip install -e failed here (no index?): {pip.stderr[-300:]}")
    # Our own package and its dependencies come from the interpreter running the tests.
    outer = os.pathsep.join([str(Path(transparent_de.__file__).parents[1]), *site.getsitepackages()])
    out = subprocess.run(
        [py, "-c", CHECK],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, TRANSPARENT_DE_DB=str(tmp_path / "j.db"), PYTHONPATH=outer),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["5", "['run', 'add']"]
