#!/usr/bin/env python3
"""Mutation testing of the engine: plant one small bug at a time and check that a test notices.

    python scripts/mutation.py [--module _run.py] [--limit N] [--seed S] [--suite tests,fuzz]

Each mutant is one AST-level change in a function of an engine module (a comparison flipped,
``and``/``or`` swapped, ``not`` dropped, a condition negated, a boolean flipped, an integer
constant plus one, ``+``/``-`` or ``*``/``/`` swapped, ``min``/``max`` swapped, a call, state
update, ``raise`` or early ``return`` removed, a returned value replaced by None). It is
written into a scratch copy of the project (``.mutation/work``), which is first on
``PYTHONPATH``, so the test processes, their subprocesses (``python -m transparent_de``,
drivers) and forked children all run the mutated engine.

Tests are chosen per mutant from a coverage map made once per source state by running the
suite unmutated under coverage.py, one context per test (subprocesses and forks included):
the tests that executed the mutated lines (else its function), fastest first, with ``-x``.
A mutant is *killed* (a test failed), *timeout* (the run exceeded its budget: counted as
detected), *survived*, *no tests* (nothing executes it: counted as survived) or
*equivalent* (listed with a reason in ``scripts/mutation-equivalent.tsv``; not counted). Reports:
``.mutation/report.json`` and ``.mutation/report.txt``. As a pytest plugin (``-p mutation``)
this module labels coverage contexts with the running test.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENGINE = (
    "transparent_de/_runner.py",
    "transparent_de/_run.py",
    "transparent_de/_engine.py",
    "transparent_de/_scheduler.py",
    "transparent_de/_store/sqlite.py",
    "transparent_de/_store/sqlite_file.py",
    "transparent_de/_serialization.py",
    "transparent_de/_trampoline.py",
    "transparent_de/_waits.py",
    "transparent_de/_exceptions.py",
    "transparent_de/_guard.py",
)
COPIED = ("transparent_de", "tests", "fuzz", "benchmarks", "examples", "docs", "scripts", "pyproject.toml")
#: Test sets a run can use; ``fuzz`` is its deterministic part (sweeps, fixed power-loss flows).
SUITES: dict[str, list[str]] = {
    "tests": ["tests"],
    "fuzz": ["fuzz", "-k", "sweep_every_crash_point or sweep_signed or fixed_flows or live_owner"],
}
#: Mutants that cannot change behaviour, with the reason (see the file's header).
EQUIVALENT = Path(__file__).with_name("mutation-equivalent.tsv")

SWAPS: dict[type, list[type]] = {
    ast.Lt: [ast.GtE, ast.LtE], ast.LtE: [ast.Gt, ast.Lt], ast.Gt: [ast.LtE, ast.GtE],
    ast.GtE: [ast.Lt, ast.Gt], ast.Eq: [ast.NotEq], ast.NotEq: [ast.Eq], ast.Is: [ast.IsNot],
    ast.IsNot: [ast.Is], ast.In: [ast.NotIn], ast.NotIn: [ast.In],
    ast.Add: [ast.Sub], ast.Sub: [ast.Add], ast.Mult: [ast.Div], ast.Div: [ast.Mult],
    ast.Pow: [ast.Mult], ast.BitAnd: [ast.BitOr], ast.BitOr: [ast.BitAnd],
}  # fmt: skip
SYMBOL: dict[type, str] = {
    ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
    ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in", ast.Add: "+",
    ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**", ast.BitAnd: "&", ast.BitOr: "|",
}  # fmt: skip
STATUSES = ("killed", "timeout", "survived", "no tests", "equivalent", "error")


@dataclass
class Mutant:
    id: str
    module: str
    line: int
    op: str
    before: str
    after: str
    lines: list[int]
    function: list[int]
    status: str | None = None
    reason: str = ""
    seconds: float = 0.0
    tests: int = 0
    killer: str = ""
    source: bytes = field(default=b"", repr=False)

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        del d["source"], d["lines"], d["function"]
        return d


# --------------------------------------------------------------------------- generating mutants


class _Sites:
    """Collects ``(node, operator label, replacement text, is_statement)`` in function bodies."""

    def __init__(self) -> None:
        self.found: list[tuple[ast.AST, str, str, bool]] = []
        self.function: tuple[int, int] = (0, 0)
        self.ranges: dict[int, tuple[int, int]] = {}
        self.tails: set[int] = set()  # ids of the last statements of function bodies
        self.equivalent: dict[int, str] = {}

    def add(self, node: ast.AST, op: str, text: str, stmt: bool = False) -> None:
        self.ranges[len(self.found)] = self.function
        self.found.append((node, op, text, stmt))

    def module(self, tree: ast.Module) -> None:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not hasattr(node, "_seen"):
                self.function = (node.lineno, node.end_lineno or node.lineno)
                self.stmt(node)

    def body(self, stmts: list[ast.stmt]) -> None:
        for i, s in enumerate(stmts):
            doc = isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str)
            if not (i == 0 and doc):
                self.stmt(s)

    def stmt(self, s: ast.stmt) -> None:
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            setattr(s, "_seen", True)  # noqa: B010 (a mark on the node: module() skips it)
            self.tails.add(id(s.body[-1]))
            self.body(s.body)  # decorators, defaults and annotations are not mutated
            return
        if isinstance(s, (ast.Assert, ast.Global, ast.Nonlocal, ast.Import, ast.ImportFrom)):
            return
        if isinstance(s, ast.Raise):
            self.add(s, "raise removed", "pass", True)  # its arguments only make the message
            return
        if isinstance(s, ast.Expr) and isinstance(s.value, ast.Call):
            self.add(s, "call removed", "pass", True)
        elif isinstance(s, ast.AugAssign):
            self.add(s, "update removed", "pass", True)
            for new in SWAPS.get(type(s.op), []):
                self.add(s, f"{SYMBOL[type(s.op)]}= -> {SYMBOL[new]}=", ast.unparse(_with(s, op=new())), True)
        elif isinstance(s, ast.Assign) and all(isinstance(t, (ast.Attribute, ast.Subscript)) for t in s.targets):
            self.add(s, "assignment removed", "pass", True)
        elif isinstance(s, ast.Return):
            if s.value is None or (isinstance(s.value, ast.Constant) and s.value.value is None):
                if id(s) in self.tails:
                    self.equivalent[len(self.found)] = "the function ends there: it returns None anyway"
                self.add(s, "return removed", "pass", True)
            else:
                self.add(s, "return None", "return None", True)
        elif isinstance(s, ast.Continue):
            self.add(s, "continue -> break", "break", True)
        elif isinstance(s, ast.Break):
            self.add(s, "break -> continue", "continue", True)
        elif isinstance(s, (ast.If, ast.While)):
            self.negate(s.test)
        for name, value in ast.iter_fields(s):
            if name in ("body", "orelse", "finalbody"):
                self.body(value)
            elif name == "handlers":
                for h in value:
                    self.body(h.body)
            elif name in ("annotation", "returns", "type_comment", "targets", "target"):
                continue
            elif isinstance(value, ast.AST):
                self.expr(value)
            elif isinstance(value, list):
                for v in value:
                    if isinstance(v, ast.AST):
                        self.expr(v)

    def negate(self, test: ast.expr) -> None:
        """``if x`` -> ``if not x`` (comparisons, ``and``/``or``, ``not`` and constants have their own)."""
        if not isinstance(test, (ast.Compare, ast.BoolOp, ast.UnaryOp, ast.Constant)):
            self.add(test, "condition negated", ast.unparse(ast.UnaryOp(ast.Not(), test)))

    def expr(self, e: ast.AST) -> None:
        if isinstance(e, (ast.JoinedStr, ast.arguments, ast.expr_context)):
            return
        if isinstance(e, ast.Compare):
            for i, op in enumerate(e.ops):
                for new in SWAPS[type(op)]:
                    ops = [*e.ops[:i], new(), *e.ops[i + 1 :]]
                    self.add(e, f"{SYMBOL[type(op)]} -> {SYMBOL[new]}", ast.unparse(_with(e, ops=ops)))
        elif isinstance(e, ast.BoolOp):
            new_op = ast.Or() if isinstance(e.op, ast.And) else ast.And()
            label = "and -> or" if isinstance(e.op, ast.And) else "or -> and"
            self.add(e, label, ast.unparse(_with(e, op=new_op)))
        elif isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.Not):
            self.add(e, "not removed", ast.unparse(e.operand))
        elif isinstance(e, ast.Constant) and isinstance(e.value, bool):
            self.add(e, f"{e.value} -> {not e.value}", repr(not e.value))
        elif isinstance(e, ast.Constant) and type(e.value) is int and e.value < 100:  # not unit scales (1000)
            self.add(e, f"{e.value} -> {e.value + 1}", repr(e.value + 1))
        elif isinstance(e, ast.BinOp) and type(e.op) in SWAPS and not (_text(e.left) or _text(e.right)):
            for new in SWAPS[type(e.op)]:
                self.add(e, f"{SYMBOL[type(e.op)]} -> {SYMBOL[new]}", ast.unparse(_with(e, op=new())))
        elif isinstance(e, ast.Call) and isinstance(e.func, ast.Name) and e.func.id in ("min", "max"):
            other = "max" if e.func.id == "min" else "min"
            self.add(e.func, f"{e.func.id} -> {other}", other)
        elif isinstance(e, ast.IfExp):
            self.negate(e.test)
        for child in ast.iter_child_nodes(e):
            self.expr(child)


def _text(e: ast.expr) -> bool:
    """Is ``e`` a str/bytes concatenation (where ``+`` -> ``-`` is only a TypeError)?"""
    if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Add):
        return _text(e.left) or _text(e.right)
    return isinstance(e, ast.JoinedStr) or (isinstance(e, ast.Constant) and isinstance(e.value, (str, bytes)))


def _with(node: ast.AST, **changes: Any) -> ast.AST:
    new = copy.copy(node)
    for k, v in changes.items():
        setattr(new, k, v)
    return new


def generate(module: str, root: Path) -> list[Mutant]:
    """Every mutant of one module, with its mutated source; ones that do not compile are dropped."""
    data = (root / module).read_bytes()
    lines = data.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    sites = _Sites()
    sites.module(ast.parse(data))
    rows = [r.split("\t") for r in EQUIVALENT.read_text().splitlines() if r.strip() and not r.startswith("#")]
    equivalents = [r for r in rows if len(r) == 4]
    short = module.removeprefix("transparent_de/")
    out: list[Mutant] = []
    seen: set[bytes] = set()
    for i, (node, op, text, is_stmt) in enumerate(sites.found):
        first, last = node.lineno, node.end_lineno or node.lineno  # type: ignore[attr-defined]
        a = starts[first - 1] + node.col_offset  # type: ignore[attr-defined]
        b = starts[last - 1] + node.end_col_offset  # type: ignore[attr-defined]
        pad = "\n" * (last - first)
        new_text = text + pad if is_stmt else f"({text}{pad})"
        source = data[:a] + new_text.encode() + data[b:]
        digest = hashlib.sha256(source).digest()
        if digest in seen:
            continue
        try:
            compile(source, module, "exec", dont_inherit=True)
        except SyntaxError:
            continue
        seen.add(digest)
        before = data[a:b].decode()
        mid = f"{short}:{first}:{node.col_offset}:{op}"  # type: ignore[attr-defined]
        fn = sites.ranges[i]
        m = Mutant(mid, module, first, op, _one_line(before), _one_line(text), list(range(first, last + 1)),
                   list(range(fn[0], fn[1] + 1)), source=source)  # fmt: skip
        line_text = lines[first - 1].decode().strip()
        context = (lines[first - 2].decode().strip() if first > 1 else "") + " / " + line_text
        for mod, operator, needle, reason in equivalents:
            hit = needle in (context if " / " in needle else line_text)
            if mod in ("*", short) and hit and operator in ("*", op):
                m.status, m.reason = "equivalent", reason
        if i in sites.equivalent:
            m.status, m.reason = "equivalent", sites.equivalent[i]
        out.append(m)
    return out


def _one_line(text: str, width: int = 90) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= width else text[: width - 3] + "..."


# --------------------------------------------------------------------------- the scratch copy


def prepare(work: Path) -> None:
    """A fresh copy of the project in ``work``, checked to be what a subprocess imports."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", "*.db*")
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, work / name)
    probe = subprocess.run(
        [sys.executable, "-c", "import transparent_de; print(transparent_de.__file__)"],
        cwd="/", env=run_env(work), capture_output=True, text=True, check=True,
    )  # fmt: skip
    if not Path(probe.stdout.strip()).resolve().is_relative_to(work.resolve()):
        sys.exit(f"mutation: a subprocess imports {probe.stdout.strip()}, not the copy in {work}")


def run_env(work: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TDE_", "TRANSPARENT_DE_", "COVERAGE_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(work), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("HYPOTHESIS_PROFILE", "ci")  # derandomized: the same examples for every mutant
    env.update(extra or {})
    return env


def clear_pycache(work: Path) -> None:
    for d in (work / "transparent_de").rglob("__pycache__"):
        shutil.rmtree(d, ignore_errors=True)


def _pytest_argv(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", *args]


# --------------------------------------------------------------------------- the coverage map


def source_key(suite: str) -> str:
    h = hashlib.sha256(suite.encode())
    for name in ("transparent_de", "tests", "fuzz"):
        for p in sorted((ROOT / name).rglob("*.py")):
            h.update(p.relative_to(ROOT).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def coverage_map(out: Path, work: Path, suites: list[str]) -> dict[str, Any]:
    """``{"tests": {nodeid: {"seconds", "ok"}}, "lines": {module: {line: [nodeid ...]}}}``, cached."""
    merged: dict[str, Any] = {"tests": {}, "lines": {}}
    for suite in suites:
        one = _coverage_of(out, work, suite)
        merged["tests"].update(one["tests"])
        for module, by_line in one["lines"].items():
            into = merged["lines"].setdefault(module, {})
            for n, ts in by_line.items():
                into[n] = sorted({*into.get(n, []), *ts})
    return merged


def _coverage_of(out: Path, work: Path, suite: str) -> dict[str, Any]:
    cached = out / f"coverage-{suite}-{source_key(suite)}.json"
    if cached.exists():
        return json.loads(cached.read_text())  # type: ignore[no-any-return]
    covdir = out / f"coverage-{suite}"
    shutil.rmtree(covdir, ignore_errors=True)
    covdir.mkdir(parents=True)
    rc = covdir / "coveragerc"
    rc.write_text(
        f"[run]\nparallel = True\ndata_file = {covdir / '.coverage'}\n"
        f"include = {work / 'transparent_de'}/*\ncontext = ${{TDE_MUT_CONTEXT-}}\npatch = _exit, fork\n"
    )
    results = covdir / "results.json"
    env = run_env(work, {"COVERAGE_PROCESS_START": str(rc), "TDE_MUT_RESULTS": str(results)})
    env["PYTHONPATH"] += os.pathsep + str(work / "scripts")
    print(f"mutation: measuring which tests run which engine lines ({suite}, unmutated) ...", flush=True)
    t0 = time.monotonic()
    subprocess.run(_pytest_argv(["-p", "mutation", *SUITES[suite]]), cwd=work, env=env, check=False)
    print(f"mutation: coverage run of {suite} took {time.monotonic() - t0:.0f} s", flush=True)
    tests = json.loads(results.read_text())
    import coverage

    cov = coverage.Coverage(config_file=str(rc))
    cov.combine(strict=True)
    data = cov.get_data()
    lines: dict[str, dict[str, list[str]]] = {}
    for path in data.measured_files():
        rel = Path(path).resolve().relative_to(work.resolve()).as_posix()
        if rel in ENGINE:
            by_line = data.contexts_by_lineno(path)
            lines[rel] = {str(n): sorted({c.split("|")[-1] for c in cs if c}) for n, cs in by_line.items()}
    result = {"suite": suite, "tests": tests, "lines": lines}
    cached.write_text(json.dumps(result))
    return result


def select(m: Mutant, cmap: dict[str, Any]) -> list[str]:
    """Tests that executed the mutant's lines (else its function) and passed unmutated, fastest first."""
    by_line = cmap["lines"].get(m.module, {})
    ok = {t for t, r in cmap["tests"].items() if r["ok"]}
    for lines in (m.lines, m.function):
        chosen = {t for n in lines for t in by_line.get(str(n), ()) if t in ok}
        if chosen:
            return sorted(chosen, key=lambda t: (cmap["tests"][t]["seconds"], t))
    return []


# --------------------------------------------------------------------------- running mutants


def run_mutant(m: Mutant, work: Path, tests: list[str], cmap: dict[str, Any], args: argparse.Namespace) -> None:
    target = work / m.module
    original = target.read_bytes()
    budget = args.timeout_floor + args.timeout_factor * sum(cmap["tests"][t]["seconds"] for t in tests)
    t0 = time.monotonic()
    target.write_bytes(m.source)
    clear_pycache(work)
    try:
        proc = subprocess.Popen(
            _pytest_argv(["-x", "-rfE", "--tb=no", *tests]), cwd=work, env=run_env(work),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            output, _ = proc.communicate(timeout=budget)
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            code, output = None, ""
        finally:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)  # the tests' own subprocesses and forks too
            proc.wait()
    finally:
        target.write_bytes(original)
        clear_pycache(work)
    m.seconds, m.tests = round(time.monotonic() - t0, 1), len(tests)
    if code is None:
        m.status = "timeout"
    elif code == 0:
        m.status = "survived"
    elif code in (1, 2, 3):
        m.status = "killed"
        found = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.M)
        m.killer = found.group(1) if found else f"pytest exit {code}"
    else:
        m.status, m.reason = "error", f"pytest exit {code}: {_one_line(output[-300:])}"


# --------------------------------------------------------------------------- reports


def summarize(mutants: list[Mutant]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for m in mutants:
        if m.status is None:
            continue
        for key in (m.module.removeprefix("transparent_de/"), "engine"):
            row = rows.setdefault(key, {s: 0 for s in STATUSES})
            row[m.status] += 1
    for row in rows.values():
        counted = row["killed"] + row["timeout"] + row["survived"] + row["no tests"]
        row["total"] = counted
        row["score"] = round(100 * (row["killed"] + row["timeout"]) / counted, 1) if counted else None
    return rows


def write_reports(out: Path, mutants: list[Mutant], meta: dict[str, Any]) -> None:
    rows = summarize(mutants)
    done = [m for m in mutants if m.status]
    (out / "report.json").write_text(
        json.dumps({**meta, "summary": rows, "mutants": [m.public() for m in done]}, indent=1)
    )
    text = [f"mutation report: {meta['command']}", f"commit {meta['commit']}, {meta['when']}", ""]
    head = f"{'module':<20}{'killed':>8}{'timeout':>9}{'survived':>10}{'no tests':>10}{'total':>7}{'score':>8}"
    text += [head, "-" * len(head)]
    for name, r in sorted(rows.items(), key=lambda kv: kv[0] == "engine"):
        score = "-" if r["score"] is None else f"{r['score']}%"
        text.append(
            f"{name:<20}{r['killed']:>8}{r['timeout']:>9}{r['survived']:>10}{r['no tests']:>10}"
            f"{r['total']:>7}{score:>8}"
        )
    text += ["", "(score = (killed + timeout) / total; equivalent mutants are not counted)", ""]
    for title, wanted in (("survivors", ("survived", "no tests")), ("equivalent", ("equivalent",)),
                          ("errors", ("error",))):  # fmt: skip
        chosen = [m for m in done if m.status in wanted]
        if chosen:
            text.append(f"{title} ({len(chosen)}):")
            for m in sorted(chosen, key=lambda m: (m.module, m.line)):
                note = f"  [{m.status}]" if m.status == "no tests" else (f"  ({m.reason})" if m.reason else "")
                text.append(f"  {m.module.removeprefix('transparent_de/')}:{m.line}  {m.op}:  {m.before}{note}")
            text.append("")
    (out / "report.txt").write_text("\n".join(text))


def git_commit() -> str:
    p = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "transparent_de", "tests", "fuzz"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    return p.stdout.strip() + ("+changes" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--module", action="append", help="engine module to mutate, e.g. _run.py (repeatable)")
    ap.add_argument("--limit", type=int, help="at most N mutants per module, sampled with --seed")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ap.add_argument("--id", action="append", help="run only this mutant id (repeatable; see --list)")
    ap.add_argument("--suite", default="tests", help="test sets: tests, fuzz or tests,fuzz (default tests)")
    ap.add_argument("--list", action="store_true", help="print the mutants (after sampling) and exit")
    ap.add_argument("--resume", action="store_true", help="keep results of the previous report")
    ap.add_argument("--out", type=Path, default=ROOT / ".mutation", help="reports and scratch copy")
    ap.add_argument("--timeout-factor", type=float, default=1.0, help="budget: x the tests' time under coverage")
    ap.add_argument("--timeout-floor", type=float, default=30.0, help="plus this many seconds")
    args = ap.parse_args(argv)
    suites = args.suite.split(",")
    modules = [m if m.startswith("transparent_de/") else f"transparent_de/{m.removeprefix('_store/')}"
               for m in args.module or ENGINE]  # fmt: skip
    modules = [next((e for e in ENGINE if e.endswith("/" + m.rsplit("/", 1)[-1])), m) for m in modules]
    unknown = sorted(set(modules) - set(ENGINE)) + sorted(set(suites) - set(SUITES))
    if unknown:
        ap.error(f"unknown module or suite: {', '.join(unknown)}")
    mutants: list[Mutant] = []
    for module in modules:
        found = generate(module, ROOT)
        if args.limit is not None:
            pool = found[:]
            random.Random(f"{args.seed}:{module}").shuffle(pool)  # a smaller --limit takes a prefix
            keep = {m.id for m in [m for m in pool if m.status != "equivalent"][: args.limit]}
            found = [m for m in found if m.id in keep]
        mutants += found
    if args.id:
        mutants = [m for m in mutants if m.id in set(args.id)]
    if args.list:
        for m in mutants:
            print(f"{m.id}\t{m.before} -> {m.after}" + (f"\t[equivalent: {m.reason}]" if m.status else ""))
        print(f"{len(mutants)} mutants", file=sys.stderr)
        return 0
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    previous: dict[str, dict[str, Any]] = {}
    if args.resume and (out / "report.json").exists():
        previous = {d["id"]: d for d in json.loads((out / "report.json").read_text())["mutants"]}
    work = out / "work"
    prepare(work)
    cmap = coverage_map(out, work, suites)
    bad = sorted(t for t, r in cmap["tests"].items() if not r["ok"])
    if bad:
        print(f"mutation: {len(bad)} tests fail unmutated and are not used: {', '.join(bad)}", flush=True)
    meta = {"command": " ".join(["scripts/mutation.py", *(argv if argv is not None else sys.argv[1:])]),
            "commit": git_commit(), "when": time.strftime("%Y-%m-%d %H:%M"), "suites": suites,
            "failing_unmutated": bad}  # fmt: skip
    t_start = time.monotonic()
    todo = [m for m in mutants if m.status is None]
    for n, m in enumerate(todo, 1):
        if m.id in previous and previous[m.id]["status"] not in (None, "error"):
            for k in ("status", "reason", "seconds", "tests", "killer"):
                setattr(m, k, previous[m.id][k])
        else:
            tests = select(m, cmap)
            if tests:
                run_mutant(m, work, tests, cmap, args)
            else:
                m.status = "no tests"
            print(f"[{n}/{len(todo)}] {m.id}  {m.before!r}: {m.status} ({m.seconds} s, {m.tests} tests)"
                  + (f" by {m.killer}" if m.killer else ""), flush=True)  # fmt: skip
        write_reports(out, mutants, {**meta, "seconds": round(time.monotonic() - t_start)})
    write_reports(out, mutants, {**meta, "seconds": round(time.monotonic() - t_start)})
    print((out / "report.txt").read_text().split("\n\n")[1])
    print(f"mutation: {len(todo)} mutants in {time.monotonic() - t_start:.0f} s; reports in {out}/report.txt, .json")
    return 0


# --------------------------------------------------------------------------- as a pytest plugin (-p mutation)

_RESULTS: dict[str, dict[str, Any]] = {}


def _coverage() -> Any:
    if "coverage" not in sys.modules:
        return None
    return sys.modules["coverage"].Coverage.current()


def _label_fork() -> None:
    cov = _coverage()  # coverage restarted in the child (patch=fork) with the static context only
    if cov is not None and os.environ.get("TDE_MUT_CONTEXT"):
        cov.switch_context(os.environ["TDE_MUT_CONTEXT"])


def pytest_configure(config: Any) -> None:
    if os.environ.get("TDE_MUT_RESULTS"):
        os.register_at_fork(after_in_child=_label_fork)


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    os.environ["TDE_MUT_CONTEXT"] = nodeid  # subprocesses read it as their static context
    cov = _coverage()
    if cov is not None:
        cov.switch_context(nodeid)


def pytest_runtest_logreport(report: Any) -> None:
    r = _RESULTS.setdefault(report.nodeid, {"seconds": 0.0, "ok": True})
    r["seconds"] = round(r["seconds"] + report.duration, 3)
    r["ok"] = r["ok"] and not report.failed


def pytest_sessionfinish(session: Any) -> None:
    path = os.environ.get("TDE_MUT_RESULTS")
    if path:
        Path(path).write_text(json.dumps(_RESULTS))


if __name__ == "__main__":
    sys.exit(main())
