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


PG_TEST = """
import transparent_de

CALLS = []

class Counter:
    __flow__ = "run"

    def run(self, n):
        return sum(self.one(i) for i in range(n))

    def one(self, i):
        CALLS.append(i)
        return 1

def test_first(tde_engine):
    assert tde_engine.store.path.startswith("postgresql://")
    assert transparent_de.run(Counter().run, 3, flow_id="c") == 3
    assert transparent_de.run(Counter().run, 3, flow_id="c") == 3
    assert CALLS == [0, 1, 2]  # replayed from the journal: no step ran again

def test_second_sees_a_fresh_journal(tde_engine):
    assert tde_engine.flows() == []
"""


def test_tde_engine_on_postgres_gives_each_test_a_schema_and_drops_it(pytester, pg_cluster):
    """``--tde-database postgresql://...``: the fixture's journal is a schema of its own per test
    in that database, and none is left behind."""
    import psycopg

    base = pg_cluster.url()
    pytester.makepyfile(PG_TEST)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", f"--tde-database={base}")
    result.assert_outcomes(passed=2)
    from transparent_de._store.postgres import parse_url

    loc = parse_url(base)
    with psycopg.connect(loc.conninfo) as con:
        left = con.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (loc.schema + "_test_%",)
        ).fetchall()
    assert left == []


def test_tde_database_must_be_a_postgres_url(pytester):
    pytester.makepyfile(PG_TEST)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "--tde-database=/tmp/x.db")
    assert result.ret != 0
    assert "must be a postgresql:// URL" in result.stdout.str() + result.stderr.str()
