"""`transparent-de run script.py` / `run pkg.module`: __main__ code runs with its flows journaled."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import sys, time
CALLS = []

class Job:
    __flow__ = "run"

    def run(self, n):
        started = time.time()
        return [self.work(i) for i in range(n)] + [started > 0]

    def work(self, i):
        CALLS.append(i)
        return i * i

if __name__ == "__main__":
    import transparent_de
    print(transparent_de.run(Job().run, int(sys.argv[1]), flow_id="job"), CALLS)
    print([s.method_name for s in transparent_de.default_engine().steps("job")])
"""


@pytest.mark.parametrize("mode", ["script", "package", "module"])
def test_main_module_flows_are_journaled_and_replayed(tmp_path: Path, mode: str) -> None:
    if mode == "script":
        (tmp_path / "job.py").write_text(SCRIPT)
        target = "job.py"
    elif mode == "package":
        (tmp_path / "jobpkg").mkdir()
        (tmp_path / "jobpkg" / "__init__.py").write_text("")
        (tmp_path / "jobpkg" / "__main__.py").write_text(SCRIPT)
        target = "jobpkg"
    else:
        (tmp_path / "jobpkg2").mkdir()
        (tmp_path / "jobpkg2" / "__init__.py").write_text("")
        (tmp_path / "jobpkg2" / "job.py").write_text(SCRIPT)
        target = "jobpkg2.job"
    env = dict(os.environ, TRANSPARENT_DE_DB=str(tmp_path / "j.db"))

    def run() -> list[str]:
        out = subprocess.run(
            [sys.executable, "-m", "transparent_de", "run", target, "3"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()

    first = run()
    assert first[0] == "[0, 1, 4, True] [0, 1, 2]"
    assert first[1] == "['run', 'time', 'work', 'work', 'work']"
    assert run()[0] == "[0, 1, 4, True] []"  # second process: memoized, no step runs


def test_missing_target_is_a_usage_error(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "transparent_de", "run", "no_such_mod_xyz"],
        cwd=tmp_path,
        env=dict(os.environ, TRANSPARENT_DE_DB=str(tmp_path / "j.db")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "cannot run" in out.stderr and "Traceback" not in out.stderr
