"""The SQLite store: the :class:`~.base.Store` interface over one journal file.

Every statement is a named query from ``sqlite_queries.sql``; the file itself (opening,
checks, connections, fenced transactions, fsync) is :class:`~.sqlite_file.SQLiteFile`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Callable, Sequence
from typing import Any

from .._serialization import is_signed
from .base import (
    Backoff,
    Captured,
    Complete,
    Conflict,
    ConsumeSignal,
    Fence,
    FlowComplete,
    FlowFailed,
    Health,
    Intent,
    NewFlow,
    Op,
    Parked,
    Release,
    Reopen,
    Retry,
    StepFailed,
    Store,
    Waiting,
)
from .reads import NamedReads
from .sqlite_file import SQLiteFile, ro_uri
from .sqlite_sql import APPLICATION_ID, SCHEMA_VERSION, Q


class SQLiteStore(NamedReads, Store):
    """A journal in one SQLite file."""

    Q = Q  # the named statements NamedReads runs

    def __init__(
        self, path: str, durability: str = "full", busy_timeout: float = 10.0, readonly: bool = False
    ) -> None:
        self.file = SQLiteFile(path, durability, busy_timeout, readonly=readonly)
        self.path = self.file.path
        self.readonly = readonly

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return self.file.read(sql, params)

    def close(self) -> None:
        self.file.close()

    # ---------------------------------------------------------------- flows

    def create_flow(self, flow: NewFlow) -> bool:
        with self.file.write(label="flow.start.mid_txn") as con:
            inserted = con.execute(
                Q["insert_flow"],
                (
                    flow.flow_id,
                    flow.module,
                    flow.qualname,
                    flow.method,
                    flow.instance,
                    flow.owner,
                    flow.lease_until,
                    flow.now,
                    flow.now,
                ),
            ).rowcount
            if inserted != 1:
                return False
            con.execute(
                Q["insert_flow_step"],
                (
                    flow.flow_id,
                    flow.now,
                    flow.entry_class,
                    flow.method,
                    flow.parameters,
                    flow.fingerprint,
                    flow.now,
                ),
            )
        return True

    def take_over(self, flow_id: str, seen_fence: int, owner: str, lease_until: int, now: int) -> int | None:
        with self.file.write(label="flow.start.mid_txn") as con:
            if con.execute(Q["take_over"], (owner, lease_until, now, flow_id, seen_fence)).rowcount != 1:
                return None
            con.execute(Q["count_attempt"], (now, flow_id))
        return seen_fence + 1

    def commit(self, fence: Fence, ops: Sequence[Op], label: str | None) -> None:
        fid = fence.flow_id
        with self.file.write(fence, label) as con:
            for op in ops:
                _APPLY[type(op)](con, fid, op)

    def sync(self) -> None:
        self.file.sync()

    def renew(self, owner: str, flow_ids: Sequence[str], lease_until: int) -> None:
        with self.file.write(label=None) as con:  # no crash point: the heartbeat's timing is not the flow's
            con.executemany(Q["renew"], [(lease_until, f, owner) for f in flow_ids])

    def rearm(self, flow_id: str, now: int) -> str | None:
        with self.file.write() as con:
            row = con.execute(Q["status"], (flow_id,)).fetchone()
            if row is None:
                return None
            if con.execute(Q["rearm_flow"], (now, flow_id)).rowcount == 1:
                con.execute(Q["rearm_step"], (now, flow_id))
        return str(row[0])

    def cancel(self, flow_id: str, now: int) -> str | None:
        with self.file.write() as con:
            row = con.execute(Q["status"], (flow_id,)).fetchone()
            if row is None:
                return None
            if con.execute(Q["cancel_flow"], (now, flow_id)).rowcount == 1:
                con.execute(Q["cancel_step"], (now, flow_id))
        return str(row[0])

    # ---------------------------------------------------------------- signals

    def add_signal(self, flow_id: str, step_name: str, sent: int, seal: Callable[[int], bytes]) -> int:
        with self.file.write(label="signal.send.mid_txn") as con:
            seq = con.execute(Q["insert_signal"], (flow_id, step_name, sent)).lastrowid
            assert seq is not None
            con.execute(Q["seal_signal"], (seal(seq), seq))
        return seq

    def signalled(self, flow_ids: Sequence[str]) -> list[str]:
        ids = json.dumps(list(flow_ids))
        return [r[0] for r in self.file.read(Q["signalled"], (ids, ids))]

    # ---------------------------------------------------------------- reads

    def unfinished_of(self, module: str, qualname: str, method: str) -> int:
        return int(self._one("unfinished_of", (module, qualname, method))[0])

    def describe(self) -> dict[str, Any]:
        return {"backend": "sqlite", "sqlite": sqlite3.sqlite_version, "durability": self.file.durability}


def inspect(path: str) -> Health:
    """Identity, schema version, integrity and counts of a SQLite file, read-only, refusing nothing
    (``doctor`` reports a foreign or damaged file instead of failing on it)."""
    con = sqlite3.connect(ro_uri(path), uri=True)
    try:
        app_id = int(con.execute("PRAGMA application_id").fetchone()[0])
        version = int(con.execute("PRAGMA user_version").fetchone()[0])
        integrity = [str(r[0]) for r in con.execute("PRAGMA integrity_check").fetchall()]
        counts: dict[str, int] = {}
        signed = {True: 0, False: 0, None: 0}
        if app_id == APPLICATION_ID:
            counts = {str(k): int(v) for k, v in con.execute(Q["status_counts"]).fetchall()}
            for (blob,) in con.execute(Q["instances"]):
                signed[is_signed(blob)] += 1
    finally:
        con.close()
    return Health(
        ours=app_id == APPLICATION_ID,
        application_id=app_id,
        schema_version=version,
        supported_schema=SCHEMA_VERSION,
        integrity=integrity,
        counts=counts,
        signed=signed[True],
        unsigned=signed[False],
        file_mode=stat.S_IMODE(os.stat(path).st_mode),
    )


# --------------------------------------------------------------------------- ops -> statements


def _intent(con: sqlite3.Connection, fid: str, op: Intent) -> None:
    con.execute(
        Q["intent"],
        (
            fid,
            op.step,
            op.timestamp,
            op.class_name,
            op.method_name,
            op.delay,
            op.status,
            op.parameters,
            op.kind,
            op.fingerprint,
            op.site,
            op.timestamp,
            op.lineage,
        ),
    )


def _retry(con: sqlite3.Connection, fid: str, op: Retry) -> None:
    con.execute(Q["retry"], (op.status, op.now, fid, op.step))


def _complete(con: sqlite3.Connection, fid: str, op: Complete) -> None:
    con.execute(Q["complete"], (op.return_value, op.now, fid, op.step))


def _step_failed(con: sqlite3.Connection, fid: str, op: StepFailed) -> None:
    con.execute(Q["step_failed"], (op.error, op.error_text, op.now, fid, op.step))


def _reopen(con: sqlite3.Connection, fid: str, op: Reopen) -> None:
    con.execute(Q["reopen"], (op.now, fid, op.step))


def _captured(con: sqlite3.Connection, fid: str, op: Captured) -> None:
    con.execute(
        Q["captured"],
        (fid, op.step, op.timestamp, op.module, op.method, op.value, op.fingerprint, op.timestamp, op.lineage),
    )


def _consume(con: sqlite3.Connection, fid: str, op: ConsumeSignal) -> None:
    if con.execute(Q["consume_signal"], (op.step, op.seq)).rowcount != 1:
        raise Conflict(f"signal {op.seq} of flow {fid} was consumed already")
    con.execute(Q["signal_arguments"], (op.parameters, op.now, fid, op.step))


def _flow_complete(con: sqlite3.Connection, fid: str, op: FlowComplete) -> None:
    con.execute(Q["flow_result"], (op.return_value, op.now, fid))
    con.execute(Q["flow_completed"], (op.now, fid))


def _flow_failed(con: sqlite3.Connection, fid: str, op: FlowFailed) -> None:
    con.execute(Q["flow_error"], (op.error, op.now, fid))
    con.execute(Q["flow_failed"], (op.failures, op.now, fid))


def _backoff(con: sqlite3.Connection, fid: str, op: Backoff) -> None:
    con.execute(Q["backoff"], (op.wake_at, op.failures, op.now, fid))


def _parked(con: sqlite3.Connection, fid: str, op: Parked) -> None:
    status = "WAITING_FOR_SIGNAL" if op.waiting_for else "PENDING"
    con.execute(Q["parked"], (op.wake_at, op.waiting_for, status, op.now, fid))


def _waiting(con: sqlite3.Connection, fid: str, op: Waiting) -> None:
    con.execute(Q["waiting"], (op.waiting_for, op.waiting_for, op.now, fid))


def _release(con: sqlite3.Connection, fid: str, op: Release) -> None:
    con.execute(Q["release"], (op.now, fid))


_APPLY: dict[type, Callable[[sqlite3.Connection, str, Any], None]] = {
    Intent: _intent,
    Retry: _retry,
    Complete: _complete,
    StepFailed: _step_failed,
    Reopen: _reopen,
    Captured: _captured,
    ConsumeSignal: _consume,
    FlowComplete: _flow_complete,
    FlowFailed: _flow_failed,
    Backoff: _backoff,
    Parked: _parked,
    Waiting: _waiting,
    Release: _release,
}
