"""Nothing silently non-durable: flow classes no hook rewrote refuse to run, with the remedy."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import transparent_de
from transparent_de.errors import FlowNotRewrittenError

FLOWS = """
EFFECTS = []


class Order:
    __flow__ = "run"

    def run(self, x):
        return self.charge(x)

    def charge(self, x):
        EFFECTS.append(x)
        return x * 2


class Special(Order):
    pass
"""


def _package(tmp_path: Path, name: str) -> Path:
    root = tmp_path / "src"
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text("")
    (root / name / "flows.py").write_text(textwrap.dedent(FLOWS))
    return root


def _python(code: str, root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, "PYTHONPATH": str(root), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_forgotten_install_refuses_before_any_step(tmp_path):
    root = _package(tmp_path, "noinstall")
    p = _python(
        """
        import transparent_de
        from noinstall.flows import Order, Special, EFFECTS
        for cls in (Order, Special):
            try:
                cls().run(1)
            except transparent_de.FlowNotRewrittenError as exc:
                print("refused:", exc.flow_class, "install('noinstall')" in str(exc))
        print("effects", EFFECTS)
        """,
        root,
        TRANSPARENT_DE_DB=str(tmp_path / "j.db"),
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[:3] == [
        "refused: noinstall.flows.Order True",
        "refused: noinstall.flows.Order True",  # the inherited entry is the base's guard
        "effects []",
    ]
    assert not (tmp_path / "j.db").exists()  # nothing ran, nothing was created


def test_install_after_import_replaces_the_guards(tmp_path):
    root = _package(tmp_path, "lateinstall")
    p = _python(
        """
        import warnings
        import transparent_de
        from lateinstall.flows import Order
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            transparent_de.install("lateinstall")
        print(any("imported before the hook" in str(x.message) for x in w))
        print(Order().run(2))
        """,
        root,
        TRANSPARENT_DE_DB=str(tmp_path / "j.db"),
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["True", "4"]


def test_a_flow_class_in_the_running_script_says_what_works(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            """
            import transparent_de
            transparent_de.install("__main__")

            class Hello:
                __flow__ = "run"
                def run(self):
                    return self.greet()
                def greet(self):
                    return "hi"

            try:
                Hello().run()
            except transparent_de.FlowNotRewrittenError as exc:
                print(exc)
            """
        )
    )
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "transparent-de run script.py" in p.stdout and "install('__main__') cannot work" in p.stdout
    ok = subprocess.run(
        [sys.executable, "-m", "transparent_de", "run", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert ok.returncode == 0 and ok.stdout == "", (ok.stdout, ok.stderr)  # rewritten: it ran, no refusal


def test_install_of_a_package_that_does_not_exist_warns():
    with pytest.warns(UserWarning, match="no package 'no_such_package_tde' is importable"):
        handle = transparent_de.install("no_such_package_tde.flows")
    handle.uninstall()


def test_the_guard_never_breaks_other_classes():
    class Plain:
        def run(self):
            return 1

    class Falsy:
        __flow__ = False

        def run(self):
            return 2

    class Weird:
        __flow__ = {"no such option": 1}  # a bad marker: reported when finalized, not here

        def run(self):
            return 3

    assert (Plain().run(), Falsy().run(), Weird().run()) == (1, 2, 3)
    with pytest.raises(FlowNotRewrittenError):

        class Unrewritten:
            __flow__ = True

            def go(self):
                return 4

        Unrewritten().go()


def test_the_guard_passes_class_keywords_named_like_its_own_parameters():
    """`class C(Base, name=...)` (psycopg's pool does this) passes `name` as a class keyword;
    the guard's own `func, name` parameters are positional-only, as the builtin's."""
    transparent_de._guard.enable()

    class Base:
        def __init_subclass__(cls, name: str = "", func: str = "", **kw: object) -> None:
            super().__init_subclass__(**kw)
            cls.tag = (name, func)

    class Named(Base, name="n", func="f"):
        pass

    assert Named.tag == ("n", "f")


# --------------------------------------------------------------------------- step guards

SIGNATURES = """
import transparent_de

DEFAULT = []
CALLS = []


class Shapes:
    __flow__ = "run"

    def run(self, mode):
        if mode == "getattr":  # every step through the guard (not the rewritten call site)
            g = lambda name: getattr(self, name)
            return (g("plain")(1, b=2), g("defaults")(1), g("defaults")(1, DEFAULT),
                    g("kwonly")(1, k=3), g("star")(1, 2, 3, z=4), g("posonly")(5, 6), g("own")(7))
        return (self.plain(1, b=2), self.defaults(1), self.defaults(1, DEFAULT), self.kwonly(1, k=3),
                self.star(1, 2, 3, z=4), self.posonly(5, 6), self.own(7))

    def plain(self, a, b):
        CALLS.append("plain")
        return a + b

    def defaults(self, a, box=DEFAULT, *, tag=None):
        CALLS.append("defaults")
        return (a, box is DEFAULT, tag)

    def kwonly(self, a, *, k, j=10):
        CALLS.append("kwonly")
        return a * k + j

    def star(me, first, *rest, **named):
        CALLS.append("star")
        return (first, rest, sorted(named.items()))

    def posonly(self, x, /, y):
        CALLS.append("posonly")
        return x - y

    def own(self, _tde_fn):  # a parameter named like the guard's own variables
        CALLS.append("own")
        return _tde_fn * 2
"""

BAD_CALLS = [
    ("plain", (1,), {}),
    ("plain", (1, 2, 3), {}),
    ("plain", (1,), {"c": 2}),
    ("kwonly", (1, 2), {}),
    ("posonly", (), {"x": 1, "y": 2}),
    ("defaults", (), {}),
]


def test_step_guards_behave_as_the_plain_methods_outside_a_flow(flow_module: Any) -> None:
    """A guard has the step's own parameters: results, default objects, signatures and the
    TypeError of a bad call are the plain method's, called on a rewritten class with no flow."""
    import inspect

    mod = flow_module(SIGNATURES)
    plain: dict[str, Any] = {}
    exec(compile(textwrap.dedent(SIGNATURES), "plain_shapes", "exec"), plain)  # no hook: plain methods
    guarded, unguarded = mod.Shapes(), plain["Shapes"]()
    for name in ("plain", "defaults", "kwonly", "star", "posonly", "own"):
        assert hasattr(vars(mod.Shapes)[name], "__tde_step__"), name  # really a guard
        assert inspect.signature(getattr(guarded, name)) == inspect.signature(getattr(unguarded, name))
        assert getattr(guarded, name).__name__ == name
    assert guarded.defaults(1) == (1, True, None)  # the default is the very object
    assert guarded.kwonly(2, k=3) == unguarded.kwonly(2, k=3) == 16
    assert guarded.star(1, 2, z=3) == unguarded.star(1, 2, z=3) == (1, (2,), [("z", 3)])
    assert guarded.posonly(5, 6) == -1 and guarded.own(4) == 8
    for name, args, kwargs in BAD_CALLS:
        with pytest.raises(TypeError) as ours:
            getattr(guarded, name)(*args, **kwargs)
        with pytest.raises(TypeError) as theirs:
            getattr(unguarded, name)(*args, **kwargs)
        assert str(ours.value) == str(theirs.value), name
    assert mod.CALLS == ["defaults", "kwonly", "star", "posonly", "own"]


@pytest.mark.parametrize("mode", ["site", "getattr"])
def test_steps_of_every_signature_are_journaled_and_replayed(engine: Any, flow_module: Any, mode: str) -> None:
    """Through the rewritten call site or the guard (``getattr``), each shape is one journaled
    step, and a rerun of the finished flow runs none of them again."""
    mod = flow_module(SIGNATURES)
    first = transparent_de.run(mod.Shapes().run, mode, flow_id=f"shapes-{mode}")
    assert first == (3, (1, True, None), (1, True, None), 13, (1, (2, 3), [("z", 4)]), -1, 14)
    assert len(mod.CALLS) == 7
    assert transparent_de.run(mod.Shapes().run, mode, flow_id=f"shapes-{mode}") == first
    assert len(mod.CALLS) == 7
    steps = [s for s in engine.store.steps(f"shapes-{mode}") if s.step > 0]
    assert [s.method_name for s in steps] == ["plain", "defaults", "defaults", "kwonly", "star", "posonly", "own"]
    assert all(s.status == "COMPLETE" for s in steps)
