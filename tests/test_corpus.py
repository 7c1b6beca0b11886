"""The transparency corpus: every program in tests/corpus behaves as plain Python, or is refused.

Per program, each run in a fresh interpreter with its own random ``PYTHONHASHSEED``:

1. plain Python (no hook): the reference result and effects;
2. journaled, counting the crash points it meets;
3. full replay in a fresh process: the finished flow re-opened at step 0, so every step comes
   from the journal (no effect may happen again) and the result must be the same;
4. crashed (``os._exit``) at the first, the last and a random crash point, then resumed by
   ``recover()`` in another process: the same result, and the same effects except that the
   one step the crash fell inside may have run twice (at-least-once for a step cut short).

Effects of flow-level code (``flow_effect``) are compared only between plain and journaled
runs: replays and recoveries re-execute flow code by design. ``ENTROPY = True`` programs draw
new values in every fresh run, so plain and crashed runs are compared by shape (outcome kind
and effect names), while the full replay must reproduce the journaled run exactly.
``UNORDERED = True`` programs iterate sets: plain Python's order follows the hash seed, so
their effects are compared with plain Python's as multisets (journaled, replayed and crashed
runs must still agree in order: sets iterate in one canonical order in flows).

A program that says ``EXPECT = "refused: Name"`` must raise that error when journaled, with
no effect at all (refused before any side effect). See tests/corpus/README.md.
"""

from __future__ import annotations

import ast
import concurrent.futures
import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

CORPUS = Path(__file__).with_name("corpus")
DRIVER = CORPUS / "_driver.py"
ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = sorted(p.stem for p in CORPUS.glob("*.py") if not p.name.startswith("_"))


def setting(program: str, name: str, default: Any = None) -> Any:
    """A module-level constant of a program (``EXPECT``, ``ENTROPY``), read without importing it."""
    tree = ast.parse((CORPUS / f"{program}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == name for t in node.targets):
            return ast.literal_eval(node.value)
    return default


def steps_only(seen: list[Any]) -> list[Any]:
    """Effects of step bodies (flow-level code runs again on every replay, as it should)."""
    return [e for e in seen if e[:1] != ["@flow"]]


def shape(outcome: dict[str, Any], seen: list[Any], entropy: bool) -> tuple[Any, Any]:
    """What must agree between two runs: everything, or for ENTROPY programs (which draw other
    values in every run that is not a replay) the outcome kind and the effect names."""
    if not entropy:
        return {k: v for k, v in outcome.items() if k != "points"}, seen
    return sorted(k for k in outcome if k != "points"), [e[:1] for e in seen]


class Runs:
    """Fresh-process runs of one program, each with its own hash seed and effects file."""

    def __init__(self, program: str, tmp: Path) -> None:
        self.program, self.tmp, self.n = program, tmp, itertools.count(1)

    def __call__(
        self, mode: str, db: Path | None = None, crash_at: int | None = None
    ) -> tuple[dict[str, Any], list[Any]]:
        effects = self.tmp / f"effects-{next(self.n)}.jsonl"
        args = [sys.executable, str(DRIVER), mode, self.program]
        args += [str(db)] if db else []
        args += [str(crash_at)] if crash_at is not None else []
        seed = str(random.randrange(2**32))
        env = dict(os.environ, PYTHONHASHSEED=seed, CORPUS_EFFECTS=str(effects))
        env["TRANSPARENT_DE_HMAC_KEY"] = "corpus-key"  # the signed journal, as deployed
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        where = f"{self.program} {mode} (crash at {crash_at}, PYTHONHASHSEED={seed})"
        if crash_at is not None and p.returncode == 77:
            outcome: dict[str, Any] = {"crashed": True}
        else:
            assert p.returncode == 0 and p.stdout.strip(), f"{where}: exit {p.returncode}\n{p.stderr}"
            outcome = json.loads(p.stdout.strip().splitlines()[-1])
        seen = [json.loads(line) for line in effects.read_text().splitlines()] if effects.exists() else []
        return outcome, seen


def rerun_at_most_once(seen: list[Any], plain: list[Any]) -> bool:
    """``seen`` is ``plain``, or ``plain`` with one effect repeated right after itself."""
    if seen == plain:
        return True
    return len(seen) == len(plain) + 1 and any(
        seen[:i] + seen[i + 1 :] == plain and i > 0 and seen[i] == seen[i - 1] for i in range(len(seen))
    )


@pytest.mark.parametrize("program", PROGRAMS)
def test_corpus_program(program: str, tmp_path: Path) -> None:
    run = Runs(program, tmp_path)
    expect = setting(program, "EXPECT")
    entropy = bool(setting(program, "ENTROPY", False))
    unordered = bool(setting(program, "UNORDERED", False))
    journaled, effects = run("journaled", tmp_path / "j.db")

    if expect.startswith("refused: "):
        name = expect.removeprefix("refused: ")
        assert name in journaled.get("error", []), f"{program}: expected {name}, got {journaled}"
        assert effects == [], f"{program}: refused only after side effects {effects}"
        assert f"flow {program}.Flow" in journaled["message"], f"the refusal must name the flow: {journaled}"
        return

    assert expect == "identical", f"{program}: unknown EXPECT {expect!r}"
    plain, plain_effects = run("plain")
    assert "error" not in plain or plain["error"][0] != "ModuleNotFoundError", plain
    plain_order = sorted(effects) if unordered else effects  # a set's order is the hash seed's
    assert shape(journaled, plain_order, entropy) == shape(
        plain, sorted(plain_effects) if unordered else plain_effects, entropy
    ), f"{program}: journaled {journaled} {effects}, plain {plain} {plain_effects}"
    reference = {k: v for k, v in journaled.items() if k != "points"}

    points = journaled["points"]
    assert points > 0
    expected = shape(reference, steps_only(effects), entropy)

    def crash_and_recover(at: int) -> None:
        db = tmp_path / f"crash-{at}.db"
        crashed, first = run("journaled", db, crash_at=at)
        assert crashed.get("crashed"), f"{program}: no crash at point {at} of {points}: {crashed}"
        recovered, second = run("recover", db)
        got = shape(recovered, steps_only(first + second), entropy)
        assert got[0] == expected[0], (
            f"{program}: crashed at point {at} of {points}, recovered {recovered}, plain {plain}"
        )
        assert rerun_at_most_once(got[1], expected[1]), (
            f"{program}: crashed at point {at} of {points}: effects {first} + {second}, plain {plain_effects}"
        )

    def full_replay() -> None:
        replayed, again = run("replay", tmp_path / "j.db")
        assert {k: v for k, v in replayed.items() if k != "points"} == reference, f"{program}: replay differs"
        assert steps_only(again) == [], f"{program}: a full replay ran step bodies again: {again}"

    # Independent fresh-process runs, two at a time: the suite is otherwise single-threaded.
    crash_points = sorted({1, points, random.randint(1, points)})
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(full_replay)] + [pool.submit(crash_and_recover, at) for at in crash_points]
        for future in futures:
            future.result()


def test_rerun_rule_is_strict() -> None:
    """The effects rule accepts one adjacent repeat, nothing else (so the corpus can fail)."""
    plain = [["a"], ["b"], ["c"]]
    assert rerun_at_most_once([["a"], ["b"], ["b"], ["c"]], plain)
    assert not rerun_at_most_once([["a"], ["b"], ["b"], ["b"], ["c"]], plain)
    assert not rerun_at_most_once([["a"], ["c"], ["b"]], plain)
    assert not rerun_at_most_once([["a"], ["b"], ["c"], ["a"]], plain)
    assert not rerun_at_most_once([["a"], ["b"]], plain)
