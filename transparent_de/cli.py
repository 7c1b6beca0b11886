"""The ``transparent-de`` command line: run, inspect, signal, recover and cancel flows.

``python -m transparent_de --help`` (or the ``transparent-de`` console script). Every command
takes ``--db PATH`` (default: ``$TRANSPARENT_DE_DB`` or ``transparent_de.db``) and ``--json``.
Exit codes: 0 ok, 1 a flow failed (or ``doctor`` found a problem), 2 usage error or bad input
(unknown flow id, missing journal, ...). See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import importlib.metadata
import json
import logging
import os
import signal as signal_module
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import _hook, _preview, _versions
from ._engine import Engine
from ._serialization import Codec, codec_of, hmac_key, step_context
from ._store import inspect, open_store
from ._store.base import STATUSES, FlowInfo, StepInfo
from .errors import (
    FlowCancelledError,
    FlowFailedError,
    FlowNotFoundError,
    JournalError,
    SignalError,
    TransparentDEError,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

READ_ONLY_COMMANDS = ("list", "show", "doctor")


class UsageError(Exception):
    """Bad input: printed as one line on stderr, exit code 2."""


# --------------------------------------------------------------------------- helpers


def _default_db() -> str:
    return os.environ.get("TRANSPARENT_DE_DB", "transparent_de.db")


def _require_journal(path: str) -> None:
    if not os.path.exists(path):
        raise UsageError(
            f"no journal at {path!r} (use --db PATH or set TRANSPARENT_DE_DB); nothing was created"
        )


def _parse_arg(text: str) -> Any:
    """A command-line argument: JSON when it is JSON, else the string itself; text that starts
    like JSON (``{``, ``[``, ``"``) but does not parse is a mistake, not a string."""
    try:
        return json.loads(text)
    except ValueError as exc:
        if text.lstrip()[:1] in ("{", "[", '"'):
            raise UsageError(f"argument {_short(text)!r} looks like JSON but does not parse: {exc}") from None
        return text


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def _short(text: str, width: int = 40) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 3] + "..."


def _age(ms: int | None) -> str:
    if ms is None:
        return ""
    s = max(0, int(time.time() - ms / 1000))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def _when(ms: int | None) -> str:
    if ms is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) + f".{ms % 1000:03d}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _emit(args: argparse.Namespace, data: Any, text: Callable[[], str]) -> None:
    if args.json:
        print(json.dumps(data, indent=2, default=repr))
    else:
        print(text())


def _flow_packages(path: str, flow_id: str | None = None, unfinished: bool = False) -> list[str]:
    """Top-level packages of flows in the journal (read-only), so their hook can be installed.

    A journal that cannot be read yields none: the command itself then reports why.
    """
    if not os.path.exists(path):
        return []
    try:
        store = open_store(path, readonly=True)
    except (JournalError, sqlite3.Error, ValueError):
        return []
    try:
        modules = store.modules(flow_id, unfinished)
    except (JournalError, sqlite3.Error):
        return []
    finally:
        store.close()
    return sorted({m.split(".")[0] for m in modules})


def _install(packages: Sequence[str]) -> None:
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    have = {p for f in sys.meta_path if isinstance(f, _hook.FlowFinder) for p in f.packages}
    todo = [p for p in packages if p not in have]
    if todo:
        _hook.install(*todo)


def _decoded(blob: bytes | None, context: bytes, codec: Codec | None, call: bool = False) -> tuple[str, Any]:
    """(short text, json value) of a framed blob.

    Without ``codec`` (the default of every read-only command) the value is only *previewed*
    from its pickle opcodes (:mod:`._preview`): nothing from the journal is imported or run.
    With one (``show --unsafe-decode``) it is verified and unpickled for real.
    """
    if blob is None:
        return "", None
    blob = bytes(blob)
    if codec is None:
        text = _preview.call_args(blob) if call else _preview.preview(blob)
        plain, value = _preview.plain_value(blob)  # JSON for plain data, still without unpickling
        return text, value if plain else None
    try:
        value = codec.open(blob, context)
    except Exception as exc:  # a corrupt or unsigned blob, or a class that no longer imports
        return f"<{codec_of(blob)}, {len(blob)} bytes: {type(exc).__name__}: {exc}>", None
    if call and isinstance(value, tuple) and len(value) == 2:
        args, kwargs = value
        if isinstance(args, tuple) and isinstance(kwargs, dict):
            text = ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
            return text, _jsonable(value)
    return repr(value), _jsonable(value)


def _unsafe_codec(args: argparse.Namespace) -> Codec | None:
    """The codec ``show --unsafe-decode`` decodes with: verified with a key, or explicitly not."""
    if not args.unsafe_decode:
        return None
    key = hmac_key()
    if key is None and not args.no_verify:
        raise UsageError(
            "--unsafe-decode unpickles journal values, which runs whatever code they name, and no "
            "TRANSPARENT_DE_HMAC_KEY is set to verify them first. Set the key the journal was signed "
            "with, or add --no-verify to decode an unsigned journal you trust"
        )
    return Codec(key)


# --------------------------------------------------------------------------- commands


def _resolve_entry(target: str) -> Any:
    """``MODULE:Class.method`` -> the bound entry ``Class().method``, with the hook installed."""
    module_name, sep, attr = target.partition(":")
    cls_name, dot, method = attr.rpartition(".")
    if not sep or not dot or not module_name or not cls_name or not method:
        raise UsageError(f"expected MODULE:Class.method, got {target!r}")
    _install([module_name.split(".")[0]])
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from None
    cls: Any = module
    try:
        for part in cls_name.split("."):
            cls = getattr(cls, part)
        return getattr(cls(), method)
    except AttributeError as exc:
        raise UsageError(f"{target}: {exc}") from None


def cmd_fuzz(args: argparse.Namespace) -> int:
    """Crash the flow at every crash point, recover it, and compare with an uncrashed run."""
    from . import testing

    entry = _resolve_entry(args.target)
    values = [_parse_arg(a) for a in args.args]
    tty = sys.stderr.isatty() and not args.json

    def progress(k: int, n: int) -> None:
        if tty:
            width = 30
            done = width * k // max(n, 1)
            print(
                f"\r  [{'#' * done}{'.' * (width - done)}] {k}/{n} crash points",
                end="",
                file=sys.stderr,
                flush=True,
            )

    report = testing.crash_sweep(entry, *values, max_points=args.max_points, progress=progress)
    if tty:
        print(file=sys.stderr)
    passed = report.recoveries - len({f.split(":")[0] for f in report.failures})
    failed = report.recoveries - passed
    data = {
        "target": args.target,
        "crash_points": report.crash_points,
        "crashes_injected": report.crashes_injected,
        "recoveries": report.recoveries,
        "failures": report.failures,
    }

    def text() -> str:
        lines = [f"fuzz {args.target}: {report.summary()}"] + [f"  - {f}" for f in report.failures[:50]]
        return "\n".join([*lines, f"{passed} passed, {failed} failed"])

    _emit(args, data, text)
    return EXIT_OK if not report.failures else EXIT_FAILED


def cmd_run(args: argparse.Namespace) -> int:
    target: str = args.target
    if ":" not in target:
        # A script or a module run as __main__, with its flows rewritten (like `python -m`).
        try:
            _hook.run_main(target, [str(a) for a in args.args])
        except (ImportError, FileNotFoundError) as exc:
            raise UsageError(f"cannot run {target!r}: {exc}") from None
        return EXIT_OK
    entry = _resolve_entry(target)
    flow_id = args.flow_id or uuid.uuid4().hex
    values = [_parse_arg(a) for a in args.args]
    engine = Engine(args.db)
    try:
        try:
            result = engine.run(entry, *values, flow_id=flow_id)
        except TypeError as exc:
            if "entry" in str(exc) or "bound entry" in str(exc):
                raise UsageError(str(exc)) from None
            raise
    finally:
        engine.close()
    _emit(args, {"flow_id": flow_id, "result": _jsonable(result)}, lambda: _result_text(result))
    return EXIT_OK


def _result_text(result: Any) -> str:
    try:
        return json.dumps(result)
    except (TypeError, ValueError):
        return repr(result)


def _flow_dict(f: FlowInfo) -> dict[str, Any]:
    return {
        "flow_id": f.flow_id,
        "class": f.class_name,
        "method": f.method_name,
        "status": f.status,
        "steps": f.steps,
        "owner": f.owner,
        "lease_until": f.lease_until,
        "wake_at": f.wake_at,
        "waiting_for": f.waiting_for,
        "created": f.created,
        "updated": f.updated,
    }


def cmd_list(args: argparse.Namespace) -> int:
    _require_journal(args.db)
    status = args.status.upper() if args.status else None
    if status and status not in STATUSES:
        raise UsageError(f"unknown status {args.status!r} (one of {', '.join(STATUSES)})")
    engine = Engine(args.db, readonly=True)
    try:
        flows = engine.flows(status)
    finally:
        engine.close()

    def text() -> str:
        if not flows:
            return "no flows" + (f" with status {status}" if status else "")
        rows = []
        for f in flows:
            wait = (
                f"signal {f.waiting_for}"
                if f.waiting_for
                else (f"wake {_when(f.wake_at)}" if f.wake_at else "")
            )
            rows.append(
                [
                    f.flow_id,
                    f"{f.class_name}.{f.method_name}",
                    f.status,
                    str(f.steps),
                    _age(f.created),
                    f.owner or "",
                    wait,
                ]
            )
        return _table(["FLOW ID", "FLOW", "STATUS", "STEPS", "AGE", "OWNER", "WAITING/WAKE"], rows)

    _emit(args, [_flow_dict(f) for f in flows], text)
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    _require_journal(args.db)
    codec = _unsafe_codec(args)
    if codec is not None and not codec.signing:
        print("transparent-de: warning: decoding unverified values (--no-verify)", file=sys.stderr)
    engine = Engine(args.db, readonly=True)
    try:
        steps = engine.steps(args.flow_id)
        flow = next((f for f in engine.flows() if f.flow_id == args.flow_id), None)
    finally:
        engine.close()
    out = []
    for s in steps:
        a_text, a_val = _decoded(s.parameters, step_context(args.flow_id, s.step, b"p"), codec, call=True)
        r_text, r_val = _decoded(s.return_value, step_context(args.flow_id, s.step, b"r"), codec)
        out.append((s, a_text, a_val, r_text, r_val))

    def step_dict(s: StepInfo, a_text: str, a_val: Any, r_text: str, r_val: Any) -> dict[str, Any]:
        return {
            "step": s.step,
            "kind": s.kind,
            "class": s.class_name,
            "method": s.method_name,
            "status": s.status,
            "attempts": s.attempts,
            "delay": s.delay,
            "timestamp": s.timestamp,
            "arguments": a_text,
            "arguments_codec": codec_of(s.parameters),
            "arguments_value": a_val,
            "result": r_text,
            "result_codec": codec_of(s.return_value),
            "result_value": r_val,
            "error": (s.error_text or "").strip().splitlines()[-1] if s.error_text else None,
            "site": s.site,
        }

    def text() -> str:
        head = f"flow {args.flow_id}"
        if flow is not None:
            head += f"  {flow.class_name}.{flow.method_name}  {flow.status}"
        rows = []
        for s, a_text, _, r_text, _ in out:
            err = (s.error_text or "").strip().splitlines()[-1] if s.error_text else ""
            rows.append(
                [
                    str(s.step),
                    s.kind,
                    f"{s.class_name}.{s.method_name}",
                    s.status,
                    str(s.attempts),
                    "" if s.delay is None else f"{s.delay}ms",
                    _when(s.timestamp),
                    _short(a_text),
                    _short(r_text),
                    _short(err, 60),
                ]
            )
        cols = [
            "STEP",
            "KIND",
            "METHOD",
            "STATUS",
            "ATT",
            "DELAY",
            "TIMESTAMP",
            "ARGUMENTS",
            "RESULT",
            "ERROR",
        ]
        return head + "\n" + _table(cols, rows)

    data = {
        "flow": _flow_dict(flow) if flow is not None else {"flow_id": args.flow_id},
        "steps": [step_dict(*o) for o in out],
    }
    _emit(args, data, text)
    return EXIT_OK


def cmd_signal(args: argparse.Namespace) -> int:
    _require_journal(args.db)
    values = [_parse_arg(a) for a in args.args]
    _install(_flow_packages(args.db, flow_id=args.flow_id))
    engine = Engine(args.db)
    try:
        engine.signal(args.flow_id, args.step, *values)
    finally:
        engine.close()
    _emit(
        args,
        {"flow_id": args.flow_id, "step": args.step, "args": values, "sent": True},
        lambda: f"signal {args.step}{tuple(values)!r} stored for flow {args.flow_id}",
    )
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    _require_journal(args.db)
    engine = Engine(args.db)
    try:
        engine.cancel(args.flow_id)
    except (FlowNotFoundError, JournalError):
        raise
    except TransparentDEError as exc:  # already finished: bad input, not a flow failure
        raise UsageError(str(exc)) from None
    finally:
        engine.close()
    _emit(args, {"flow_id": args.flow_id, "status": "CANCELLED"}, lambda: f"flow {args.flow_id} cancelled")
    return EXIT_OK


def _outcome_entry(engine: Engine, fid: str) -> tuple[dict[str, Any], bool]:
    """What became of a recovered flow, for ``recover``/``retry``: (entry, failed?)."""
    handle = engine.handle(fid)
    status = handle.status()
    entry: dict[str, Any] = {"flow_id": fid, "status": status}
    if status == "COMPLETE" or status in ("FAILED", "CANCELLED") or handle._event.is_set():
        try:
            entry["result"] = _jsonable(handle.result(timeout=0))
            return entry, False
        except TimeoutError:
            return entry, False
        except Exception as exc:  # the flow's error, or the engine error that stopped it
            entry["error"] = f"{type(exc).__name__}: {exc}"
            return entry, True
    waiting = engine.store.wait_state(fid)
    if waiting is not None and waiting.waiting_for:
        entry["waiting_for"] = waiting.waiting_for
    elif waiting is not None and waiting.wake_at:
        entry["wake_at"] = waiting.wake_at
    return entry, False


def _settle(engine: Engine, fids: Sequence[str], wait: float) -> None:
    """Wait until none of these flows is running or due soon here (or ``wait`` seconds passed)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(engine.scheduler.busy(f) for f in fids):
        time.sleep(0.02)


def _report_flows(args: argparse.Namespace, title: str, results: list[dict[str, Any]]) -> None:
    def text() -> str:
        if not results:
            return "no unfinished flows to recover"
        lines = [f"{title} {len(results)} flow(s):"]
        for r in results:
            if "error" in r:
                detail = r["error"]
            elif "result" in r:
                detail = json.dumps(r["result"], default=repr)
            elif "waiting_for" in r:
                detail = f"waiting for signal {r['waiting_for']!r}"
            elif "wake_at" in r:
                detail = f"parked until {_when(r['wake_at'])}"
            else:
                detail = ""
            lines.append(f"  {r['flow_id']}  {r['status']}  {_short(detail, 200)}".rstrip())
        return "\n".join(lines)

    _emit(args, results, text)


def cmd_recover(args: argparse.Namespace) -> int:
    _install(_flow_packages(args.db, unfinished=True))
    engine = Engine(args.db)
    try:
        handles = engine.recover()
        _settle(engine, [h.id for h in handles], args.wait)
        done = [_outcome_entry(engine, h.id) for h in handles]
        failed = any(f for _, f in done) or engine.failed_runs > 0
    finally:
        engine.close()
    _report_flows(args, "recovered", [e for e, _ in done])
    return EXIT_FAILED if failed else EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    _require_journal(args.db)
    _install(_flow_packages(args.db, flow_id=args.flow_id))
    engine = Engine(args.db)
    try:
        try:
            engine.retry(args.flow_id)
        except (FlowNotFoundError, JournalError):
            raise
        except TransparentDEError as exc:  # not a FAILED or failing flow: bad input
            raise UsageError(str(exc)) from None
        _settle(engine, [args.flow_id], args.wait)
        entry, failed = _outcome_entry(engine, args.flow_id)
        failed = failed or engine.failed_runs > 0
    finally:
        engine.close()
    _report_flows(args, "retried", [entry])
    return EXIT_FAILED if failed else EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    _install(_flow_packages(args.db))
    stop = threading.Event()

    def on_sigint(signum: int, frame: Any) -> None:
        stop.set()

    previous = signal_module.signal(signal_module.SIGINT, on_sigint)
    signal_module.signal(signal_module.SIGTERM, on_sigint)
    engine = Engine(args.db)
    try:
        if not args.json:
            print(
                f"worker on {args.db} ({'until idle' if args.until_idle else 'Ctrl-C to stop'})", flush=True
            )
        report = engine.worker(stop, until_idle=args.until_idle)
    finally:
        signal_module.signal(signal_module.SIGINT, previous)
        engine.close()
    data = {
        "finished": report.finished,
        "failed": report.failed,
        "failing": report.failing,
        "failed_runs": report.failed_runs,
    }

    def text() -> str:
        line = f"worker stopped; {len(report.finished)} flow(s) finished"
        if report.failed or report.failing or report.failed_runs:
            line += (
                f", {len(report.failed)} FAILED, {len(report.failing)} stopped by an error, "
                f"{report.failed_runs} failed run(s)"
            )
        return line

    _emit(args, data, text)
    return EXIT_OK if report.ok else EXIT_FAILED


def _version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cmd_doctor(args: argparse.Namespace) -> int:
    _require_journal(args.db)
    problems: list[str] = []
    report: dict[str, Any] = {"journal": os.path.abspath(args.db)}
    try:
        health = inspect(args.db)
    except sqlite3.Error as exc:
        raise UsageError(f"{args.db} is not a readable SQLite database: {exc}") from None
    app_id, version, integrity, counts = (
        health.application_id,
        health.schema_version,
        health.integrity,
        health.counts,
    )
    supported_schema = health.supported_schema
    report.update(
        application_id=app_id,
        ours=health.ours,
        schema_version=version,
        supported_schema=supported_schema,
        integrity=integrity,
        flows=counts,
    )
    if not health.ours:
        problems.append(f"not a transparent_de journal (application_id {app_id:#x})")
    elif version > supported_schema:
        problems.append(f"schema version {version} is newer than this version supports ({supported_schema})")
    if integrity != ["ok"]:
        problems.append("integrity_check: " + "; ".join(integrity[:5]))
    key = hmac_key() is not None
    mode = health.file_mode or 0
    if health.signed and not key:
        problems.append(
            f"{health.signed} flow(s) are signed but TRANSPARENT_DE_HMAC_KEY is not set: they cannot be resumed here"
        )
    if health.unsigned and key:
        problems.append(f"{health.unsigned} flow(s) are not signed, and signing is on: they will be refused")
    signing = (
        "on (TRANSPARENT_DE_HMAC_KEY is set)"
        if key
        else "OFF: whoever can write the journal can make processes that resume its flows run code "
        "(set TRANSPARENT_DE_HMAC_KEY; docs/journal.md#threat-model)"
    )
    report.update(
        signing=key,
        file_mode=f"{mode:04o}",
        signed_flows=health.signed,
        unsigned_flows=health.unsigned,
    )
    hooks = [repr(f) for f in sys.meta_path if isinstance(f, _hook.FlowFinder)]
    supported = _versions.PY in _versions.SUPPORTED
    if not supported:
        problems.append(f"Python {sys.version.split()[0]} is not supported")
    report.update(
        hooks=hooks,
        python=sys.version.split()[0],
        implementation=sys.implementation.name,
        cache_tag=_hook.CACHE_TAG,
        bytecode=_version_of("bytecode"),
        dill=_version_of("dill"),
        sqlite=sqlite3.sqlite_version,
        interpreter_supported=supported,
        problems=problems,
    )

    def text() -> str:
        lines = [
            f"journal      {report['journal']}",
            f"ours         {'yes' if report['ours'] else 'NO'} (application_id {app_id:#x})",
            f"schema       {version} (supported {supported_schema})",
            f"integrity    {'ok' if integrity == ['ok'] else 'FAILED'}",
            "flows        " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"),
            f"signing      {signing}",
            f"signed       {health.signed} flow(s) signed, {health.unsigned} unsigned",
            f"file mode    {mode:04o}" + ("" if mode & 0o077 == 0 else " (others may read or write it)"),
            "hooks        " + (", ".join(hooks) or "none installed in this process"),
            f"python       {report['python']} ({sys.implementation.name}, cache tag {_hook.CACHE_TAG})",
            f"supported    {'yes' if supported else 'NO'}",
            f"bytecode     {report['bytecode']}",
            f"dill         {report['dill']}",
            f"sqlite       {report['sqlite']}",
        ]
        lines += [f"PROBLEM: {p}" for p in problems] or ["no problems found"]
        return "\n".join(lines)

    _emit(args, report, text)
    return EXIT_FAILED if problems else EXIT_OK


def cmd_cache_clear(args: argparse.Namespace) -> int:
    root = args.dir or os.getcwd()
    if not os.path.isdir(root):
        raise UsageError(f"{root!r} is not a directory")
    tag = "cpython-*-tde*" if args.all_interpreters else f"{sys.implementation.cache_tag}-tde*"
    pattern = f"*.{tag}.pyc"
    removed = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            if fnmatch.fnmatch(name, pattern):
                path = os.path.join(dirpath, name)
                os.remove(path)
                removed.append(path)
    _emit(
        args,
        {"removed": removed},
        lambda: f"removed {len(removed)} cached rewrite(s) ({pattern}) under {root}",
    )
    return EXIT_OK


# --------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--db",
        default=argparse.SUPPRESS,
        help="journal path (default: $TRANSPARENT_DE_DB or transparent_de.db)",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    parser = _Parser(
        prog="transparent-de",
        description="Run, inspect, signal, recover and cancel transparent_de flows.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser(
        "run",
        parents=[common],
        help="run a flow (MODULE:Class.method [args...]) or a script/module as __main__",
    )
    p.add_argument("target", metavar="MODULE:Class.method | MODULE | SCRIPT.py")
    p.add_argument("args", nargs="*", help="arguments, parsed as JSON when valid JSON, else strings")
    p.add_argument("--flow-id", help="flow id (same id = resume or the memoized result)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "fuzz",
        parents=[common],
        help="crash a flow at every crash point and check it recovers: MODULE:Class.method",
    )
    p.add_argument("target", metavar="MODULE:Class.method")
    p.add_argument("args", nargs="*", help="arguments, parsed as JSON when valid JSON, else strings")
    p.add_argument("--max-points", type=int, default=None, help="stop after this many crash points")
    p.set_defaults(func=cmd_fuzz)

    p = sub.add_parser("list", parents=[common], help="list flows")
    p.add_argument("--status", help=f"only flows with this status ({', '.join(STATUSES)})")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", parents=[common], help="show a flow's step log")
    p.add_argument("flow_id", metavar="FLOW_ID")
    p.add_argument(
        "--unsafe-decode",
        action="store_true",
        help="unpickle values for real (runs code they name); needs TRANSPARENT_DE_HMAC_KEY to verify them",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="with --unsafe-decode and no key: decode an unsigned journal you trust",
    )
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("signal", parents=[common], help="send a signal to a waiting flow")
    p.add_argument("flow_id", metavar="FLOW_ID")
    p.add_argument("step", metavar="STEP")
    p.add_argument("args", nargs="*", metavar="JSON_ARGS", help="arguments (JSON, else strings)")
    p.set_defaults(func=cmd_signal)

    p = sub.add_parser("recover", parents=[common], help="resume unfinished flows and wait for the due ones")
    p.add_argument("--wait", type=float, default=30.0, metavar="SECONDS", help="wait at most this long (30)")
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser(
        "retry", parents=[common], help="resume a FAILED flow (or a failing one, without its backoff)"
    )
    p.add_argument("flow_id", metavar="FLOW_ID")
    p.add_argument("--wait", type=float, default=30.0, metavar="SECONDS", help="wait at most this long (30)")
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser("worker", parents=[common], help="run recovery, timers and signals until Ctrl-C")
    p.add_argument("--until-idle", action="store_true", help="stop once no flow is runnable")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("cancel", parents=[common], help="cancel an unfinished flow")
    p.add_argument("flow_id", metavar="FLOW_ID")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("doctor", parents=[common], help="check the journal and the environment")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("cache", parents=[common], help="manage the rewritten-bytecode cache")
    cache_sub = p.add_subparsers(dest="cache_command", metavar="ACTION", parser_class=_Parser)
    cache_sub.required = True
    c = cache_sub.add_parser("clear", parents=[common], help="delete our cached .pyc files under DIR")
    c.add_argument("dir", nargs="?", metavar="DIR", help="directory to clean (default: current)")
    c.add_argument("--all-interpreters", action="store_true", help="also other Python versions' cache files")
    c.set_defaults(func=cmd_cache_clear)
    return parser


class _LogLines(logging.Handler):
    """The engine's log lines (a flow resumed, parked, finished, failed), one per line on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage().removeprefix("transparent_de: ")
            print(f"transparent-de: {message}", file=sys.stderr, flush=True)
        except Exception:  # a closed pipe must not turn into a traceback
            self.handleError(record)


def _log_to_stderr() -> logging.Handler:
    logger = logging.getLogger("transparent_de")
    handler = _LogLines(logging.INFO)
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.propagate = False
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("recover", "retry", "worker", "run"):
        _log_to_stderr()
    if not hasattr(args, "db"):
        args.db = _default_db()
    if not hasattr(args, "json"):
        args.json = False
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except UsageError as exc:
        print(f"transparent-de: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (FlowNotFoundError, SignalError, JournalError) as exc:
        print(f"transparent-de: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (FlowFailedError, FlowCancelledError) as exc:
        print(f"transparent-de: flow failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except TransparentDEError as exc:
        print(f"transparent-de: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("transparent-de: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.command != "run":
            raise
        print(f"transparent-de: flow failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
