"""The pytest plugin: flows defined in test modules are rewritten; assertion rewriting still works."""

from __future__ import annotations

pytest_plugins = ["pytester"]


def test_flow_in_test_module_is_journaled_and_asserts_keep_introspection(pytester):
    pytester.makepyfile(
        """
        import transparent_de

        CALLS = []

        class Greeter:
            __flow__ = "run"

            def run(self, n):
                return [self.greet(i) for i in range(n)]

            def greet(self, i):
                CALLS.append(i)
                return i * 2

        def test_journaled(tde_engine):
            assert transparent_de.run(Greeter().run, 3, flow_id="g") == [0, 2, 4]
            CALLS.clear()
            assert transparent_de.run(Greeter().run, 3, flow_id="g") == [0, 2, 4]
            assert CALLS == []
            assert [s.method_name for s in tde_engine.steps("g")] == ["run", "greet", "greet", "greet"]

        def test_introspection_kept():
            assert [1, 2] == [1, 3]
        """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*At index 1 diff: 2 != 3*"])  # introspection survived
