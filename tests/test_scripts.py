"""The README commands' setup (scripts/_venv.sh): install once, again only when pyproject.toml changed.

A stand-in interpreter records what the script asks of it, so the stamp logic is checked in
milliseconds without building a virtualenv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# `python -m venv --clear .venv` makes .venv/bin/python a copy of this script; every call is
# logged, an editable install marks .venv as holding the project, and the import probe
# (`-I -c ...`) fails until then.
FAKE_PYTHON = """#!/bin/sh
log="$FAKE_LOG"
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  rm -rf .venv && mkdir -p .venv/bin && cp "$0" .venv/bin/python && echo "venv" >>"$log"; exit 0
fi
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  shift 2; echo "pip $*" >>"$log"
  case "$*" in *" -e "*) touch .venv/installed;; esac
  exit 0
fi
if [ "$1" = "-I" ]; then test -f .venv/installed; exit $?; fi
exit 0
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "_venv.sh", tmp_path / "scripts" / "_venv.sh")
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    return tmp_path


def _ensure(project: Path, extra: str = "") -> list[str]:
    """Run ``ensure_venv EXTRA`` in ``project``; return the calls it made, one per line."""
    log = project / "calls.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PYTHON": str(project / "fake-python"), "FAKE_LOG": str(log)}
    subprocess.run(
        ["bash", "-c", f"set -euo pipefail; source scripts/_venv.sh; ensure_venv {extra}"],
        cwd=project,
        env=env,
        check=True,
    )
    return log.read_text().splitlines() if log.exists() else []


def test_a_fresh_checkout_is_set_up_then_left_alone(project: Path) -> None:
    assert _ensure(project, "test") == ["venv", "pip install -q --upgrade pip", "pip install -q -e .[test]"]
    assert _ensure(project, "test") == []
    assert _ensure(project) == []  # the demo needs nothing the test extras did not install


def test_an_edited_pyproject_reinstalls_once(project: Path) -> None:
    _ensure(project, "test")
    with open(project / "pyproject.toml", "a") as f:
        f.write("\n# a new dependency would go here\n")
    assert _ensure(project) == ["pip install -q -e ."]
    assert _ensure(project) == []
    assert _ensure(project, "test") == ["pip install -q -e .[test]"]  # the extras were not installed yet
    assert _ensure(project, "test") == []


def test_a_missing_or_broken_venv_is_recreated(project: Path) -> None:
    _ensure(project)
    shutil.rmtree(project / ".venv")
    assert _ensure(project) == ["venv", "pip install -q --upgrade pip", "pip install -q -e ."]
    (project / ".venv" / "bin" / "python").write_text("#!/bin/sh\nexit 1\n")  # its interpreter is gone
    assert _ensure(project)[:1] == ["venv"]
