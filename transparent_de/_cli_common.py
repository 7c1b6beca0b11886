"""What the command line's commands share: exit codes, bad-input errors, tables, journals."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import _hook
from ._ownership import owner_alive
from ._store import display, open_store
from ._store import exists as journal_exists
from ._store.base import FlowInfo
from .errors import (
    JournalError,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input: printed as one line on stderr, exit code 2."""


# --------------------------------------------------------------------------- helpers


def _default_db() -> str:
    return os.environ.get("TRANSPARENT_DE_DB", "transparent_de.db")


def _require_journal(path: str) -> None:
    try:
        found = journal_exists(path)
    except (JournalError, ValueError, ImportError) as exc:
        raise UsageError(str(exc)) from None
    if not found:
        raise UsageError(
            f"no journal at {display(path)!r} (use --db PATH or set TRANSPARENT_DE_DB); nothing was created"
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
    try:
        if not journal_exists(path):
            return []
        store = open_store(path, readonly=True)
    except (JournalError, sqlite3.Error, ValueError, ImportError):
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
        "owner_alive": owner_alive(f.owner) if f.owner else None,
        "lease_until": f.lease_until,
        "wake_at": f.wake_at,
        "waiting_for": f.waiting_for,
        "created": f.created,
        "updated": f.updated,
    }


def _columns() -> int:
    """The terminal's width when stdout is one, else 80 (what ``show`` and ``list`` fit)."""
    return shutil.get_terminal_size((80, 24)).columns if sys.stdout.isatty() else 80


def _printable(text: str) -> str:
    """Text for a terminal: control, format and separator characters escaped, never printed raw."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
