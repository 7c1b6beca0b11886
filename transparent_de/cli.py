"""The ``transparent-de`` command line: run, inspect, signal, recover and cancel flows.

``python -m transparent_de --help`` (or the ``transparent-de`` console script). Every command
takes ``--db PATH`` (default: ``$TRANSPARENT_DE_DB`` or ``transparent_de.db``) and ``--json``.
Exit codes: 0 ok, 1 a flow failed (or ``doctor`` found a problem), 2 usage error or bad input
(unknown flow id, missing journal, ...). See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import json
import logging
import os
import signal as signal_module
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import _hook
from ._cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    _default_db,
    _emit,
    _flow_packages,
    _install,
    _jsonable,
    _parse_arg,
    _require_journal,
    _result_text,
    _short,
    _when,
)
from ._cli_inspect import cmd_cache_clear, cmd_doctor, cmd_list, cmd_show
from ._engine import Engine
from ._store import inspect, schema_sql
from ._store.base import STATUSES
from .errors import (
    FlowArgumentsError,
    FlowCancelledError,
    FlowFailedError,
    FlowNotFoundError,
    JournalError,
    SignalError,
    TransparentDEError,
)

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
        except FlowArgumentsError as exc:  # the arguments do not fit: nothing was started
            raise UsageError(str(exc)) from None
        except TypeError as exc:
            if "entry" in str(exc) or "bound entry" in str(exc):
                raise UsageError(str(exc)) from None
            raise
    finally:
        engine.close()
    _emit(args, {"flow_id": flow_id, "result": _jsonable(result)}, lambda: _result_text(result))
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


def cmd_migrate(args: argparse.Namespace) -> int:
    """Create or migrate the journal's schema now (as the first writer would), or print its SQL."""
    if args.print_sql:
        print(schema_sql(args.db), end="")
        return EXIT_OK
    engine = Engine(args.db)
    try:
        path = engine.store.path
    finally:
        engine.close()
    health = inspect(args.db)
    _emit(args, {"journal": path, "schema_version": health.schema_version}, lambda: (
        f"journal {path}: schema version {health.schema_version} (up to date)"
    ))  # fmt: skip
    return EXIT_OK


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
        "--wide", action="store_true", help="every column, values shown in full (up to 200 characters)"
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

    p = sub.add_parser("migrate", parents=[common], help="create or migrate the journal's schema now")
    p.add_argument("--print-sql", action="store_true", help="print the SQL that creates the schema, run nothing")
    p.set_defaults(func=cmd_migrate)

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
        code = func(args)
        sys.stdout.flush()  # inside the try: a reader gone by the final flush is a broken pipe too
        return code
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
    except BrokenPipeError:  # `transparent-de list | head`: the reader has gone, quietly stop
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as exc:
        if args.command != "run":
            raise
        print(f"transparent-de: flow failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
