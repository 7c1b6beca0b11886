"""The command line's read-only commands: ``list``, ``show``, ``doctor``, ``cache clear``.

They open the journal read-only and never run anything it holds (values are previewed from
their pickle opcodes; ``show --unsafe-decode`` is the one exception, and needs a key).
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import importlib.metadata
import os
import sqlite3
import sys
from typing import Any

from . import _hook, _preview, _versions
from ._cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    _age,
    _columns,
    _emit,
    _flow_dict,
    _jsonable,
    _printable,
    _require_journal,
    _short,
    _table,
    _when,
)
from ._engine import Engine
from ._ownership import owner_alive
from ._serialization import Codec, codec_of, hmac_key, step_context
from ._store import display, inspect, open_store
from ._store.base import STATUSES, StepInfo
from .errors import (
    CorruptJournalError,
    JournalError,
    JournalKeyError,
)


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
            owner = f.owner or ""
            if owner and not owner_alive(owner):
                owner += " (dead)"  # recover() or a worker takes it over at once
            rows.append(
                [_printable(f.flow_id), f"{f.class_name}.{f.method_name}", f.status, str(f.steps), _age(f.created),
                 owner, wait]
            )  # fmt: skip
        return _table(["FLOW ID", "FLOW", "STATUS", "STEPS", "AGE", "OWNER", "WAITING/WAKE"], rows)

    _emit(args, [_flow_dict(f) for f in flows], text)
    return EXIT_OK


def _narrow_steps(out: list[tuple[StepInfo, str, Any, str, Any]], width: int) -> str:
    """The step log in ``width`` columns: step, method, status, attempts, then what is left of the
    width shared by the arguments and the outcome (the result, or the error)."""
    rows = []
    for s, a_text, _, r_text, _ in out:
        outcome = r_text
        if s.error_text:
            outcome = "! " + (s.error_text.strip().splitlines()[-1])
        elif s.kind == "sleep":
            outcome = "" if s.delay is None else f"sleep {s.delay} ms"
        rows.append(
            [str(s.step), s.method_name, s.status, str(s.attempts), _printable(a_text), _printable(outcome)]
        )
    heads = ["STEP", "METHOD", "STATUS", "ATT", "ARGUMENTS", "RESULT/ERROR"]
    fixed = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads[:4])]
    left = max(20, width - sum(fixed) - 2 * 5)
    share = [left * 2 // 5, left - left * 2 // 5]
    for r in rows:
        r[4], r[5] = _short(r[4], share[0]), _short(r[5], share[1])
    return _table(heads, rows)


def cmd_show(args: argparse.Namespace) -> int:
    _require_journal(args.db)
    codec = _unsafe_codec(args)
    if codec is not None and not codec.signing:
        print("transparent-de: warning: decoding unverified values (--no-verify)", file=sys.stderr)
    engine = Engine(args.db, readonly=True)
    try:
        steps = engine.steps(args.flow_id)
        flow = engine.store.flow_info(args.flow_id)
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
        head = f"flow {_printable(args.flow_id)}"
        if flow is not None:
            head += f"  {flow.class_name}.{flow.method_name}  {flow.status}"
        if args.wide:
            rows = []
            for s, a_text, _, r_text, _ in out:
                err = (s.error_text or "").strip().splitlines()[-1] if s.error_text else ""
                delay = "" if s.delay is None else f"{s.delay}ms"
                rows.append(
                    [str(s.step), s.kind, f"{s.class_name}.{s.method_name}", s.status, str(s.attempts), delay,
                     _when(s.timestamp), _printable(a_text), _printable(r_text), _printable(err)]
                )  # fmt: skip
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
        return head + "\n" + _narrow_steps(out, _columns())

    data = {
        "flow": _flow_dict(flow) if flow is not None else {"flow_id": args.flow_id},
        "steps": [step_dict(*o) for o in out],
    }
    _emit(args, data, text)
    return EXIT_OK


def _version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cmd_doctor(args: argparse.Namespace) -> int:
    _require_journal(args.db)
    problems: list[str] = []
    report: dict[str, Any] = {"journal": display(args.db)}
    try:
        health = inspect(args.db)
    except sqlite3.Error as exc:
        raise UsageError(f"{args.db} is not a readable SQLite database: {exc}") from None
    except Exception as exc:  # the backend's driver error (a server that cannot be reached ...)
        raise UsageError(f"{display(args.db)}: cannot read the journal: {type(exc).__name__}: {exc}") from None
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
        file_mode=f"{mode:04o}" if health.file_mode is not None else None,
        signed_flows=health.signed,
        unsigned_flows=health.unsigned,
    )
    damaged = _damaged_values(args.db) if health.ours and integrity == ["ok"] else []
    if damaged:
        flows = sorted({fid for fid, _, _ in damaged})
        problems.append(
            f"{len(damaged)} damaged value(s) in {len(flows)} flow(s): "
            + "; ".join(f"{_printable(fid)} step {step}: {why}" for fid, step, why in damaged[:5])
        )
    report.update(damaged=[{"flow_id": f, "step": st, "detail": d} for f, st, d in damaged])
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
        server=_server(args.db) if health.file_mode is None else None,
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
            f"values       {'all intact' if not damaged else f'{len(damaged)} DAMAGED'} (every row read, none unpickled)",
            (
                f"file mode    {mode:04o}" + ("" if mode & 0o077 == 0 else " (others may read or write it)")
                if health.file_mode is not None
                else "file mode    n/a (a database server: its roles and grants decide who may write)"
            ),
            "hooks        " + (", ".join(hooks) or "none installed in this process"),
            f"python       {report['python']} ({sys.implementation.name}, cache tag {_hook.CACHE_TAG})",
            f"supported    {'yes' if supported else 'NO'}",
            f"bytecode     {report['bytecode']}",
            f"dill         {report['dill']}",
            f"sqlite       {report['sqlite']}",
        ]
        if report["server"]:
            srv = report["server"]
            lines.insert(
                1,
                f"server       PostgreSQL {srv.get('server')} (schema {srv.get('schema')}, synchronous_commit "
                f"{srv.get('settings', {}).get('synchronous_commit')}, psycopg {srv.get('psycopg')})",
            )
        lines += [f"PROBLEM: {p}" for p in problems] or ["no problems found"]
        return "\n".join(lines)

    _emit(args, report, text)
    return EXIT_FAILED if problems else EXIT_OK


def _server(path: str) -> dict[str, Any]:
    """What a database-server backend says about itself (version, settings)."""
    store = open_store(path, readonly=True)
    try:
        return store.describe()
    finally:
        store.close()


def _damaged_values(path: str) -> list[tuple[str, int, str]]:
    """Every value of every row, checked (frame, CRC, and signature when a key is set) without
    unpickling: ``(flow_id, step, what is wrong)`` for each damaged one."""
    codec = Codec(hmac_key())
    store = open_store(path, readonly=True)
    damaged = []
    try:
        for fid, step, *blobs in store.values():
            for kind, blob in zip((b"p", b"r", b"e"), blobs, strict=True):
                if blob is None:
                    continue
                try:
                    codec.check(bytes(blob), step_context(fid, step, kind))
                except JournalKeyError:
                    continue  # signed, no key here: reported as such above, not as damage
                except CorruptJournalError as exc:
                    damaged.append((fid, step, str(exc.fields.get("detail", exc))))
    except JournalError as exc:
        damaged.append(("?", -1, str(exc)))
    finally:
        store.close()
    return damaged


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
