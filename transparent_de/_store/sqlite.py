"""The SQLite store: the :class:`~.base.Store` interface over one journal file.

Every statement is a named query from ``sqlite_queries.sql``; the file itself (opening,
checks, connections, fenced transactions, fsync) is :class:`~.sqlite_file.SQLiteFile`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator, Sequence
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
    FlowIdentity,
    FlowInfo,
    FlowState,
    Health,
    Intent,
    NewFlow,
    Op,
    Outcome,
    Parked,
    Release,
    Reopen,
    Retry,
    StepFailed,
    StepInfo,
    StepRow,
    Store,
    Unfinished,
    Waiting,
    WaitState,
)
from .sqlite_file import SQLiteFile, ro_uri
from .sqlite_sql import APPLICATION_ID, SCHEMA_VERSION, Q


class SQLiteStore(Store):
    """A journal in one SQLite file."""

    def __init__(
        self, path: str, durability: str = "full", busy_timeout: float = 10.0, readonly: bool = False
    ) -> None:
        self.file = SQLiteFile(path, durability, busy_timeout, readonly=readonly)
        self.path = self.file.path
        self.readonly = readonly

    def close(self) -> None:
        self.file.close()

    def _one(self, name: str, params: tuple[Any, ...]) -> Any:
        rows = self.file.read(Q[name], params)
        return rows[0] if rows else None

    # ---------------------------------------------------------------- flows

    def flow_state(self, flow_id: str) -> FlowState | None:
        row = self._one("flow_state", (flow_id,))
        return FlowState(*row) if row else None

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

    def load_steps(self, flow_id: str) -> dict[int, StepRow]:
        return {r[0]: StepRow(*r) for r in self.file.read(Q["load_steps"], (flow_id,))}

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

    def next_signal(self, flow_id: str, step_name: str) -> tuple[int, bytes] | None:
        row = self._one("next_signal", (flow_id, step_name))
        return (int(row[0]), bytes(row[1])) if row else None

    def signalled(self, flow_ids: Sequence[str]) -> list[str]:
        ids = json.dumps(list(flow_ids))
        return [r[0] for r in self.file.read(Q["signalled"], (ids, ids))]

    # ---------------------------------------------------------------- reads

    def status(self, flow_id: str) -> str | None:
        row = self._one("status", (flow_id,))
        return str(row[0]) if row else None

    def identity(self, flow_id: str) -> FlowIdentity | None:
        row = self._one("identity", (flow_id,))
        return FlowIdentity(*row) if row else None

    def outcome(self, flow_id: str) -> Outcome | None:
        row = self._one("outcome", (flow_id,))
        return Outcome(*row) if row else None

    def flow_class(self, flow_id: str) -> str | None:
        row = self._one("flow_class", (flow_id,))
        return str(row[0]) if row else None

    def wait_state(self, flow_id: str) -> WaitState | None:
        row = self._one("wait_state", (flow_id,))
        return WaitState(*row) if row else None

    def unfinished(self) -> list[Unfinished]:
        return [Unfinished(*r) for r in self.file.read(Q["unfinished"])]

    def flows(self, status: str | None = None) -> list[FlowInfo]:
        return [FlowInfo(*r) for r in self.file.read(Q["flows"], (status, status))]

    def flow_info(self, flow_id: str) -> FlowInfo | None:
        row = self._one("flow_info", (flow_id,))
        return FlowInfo(*row) if row else None

    def unfinished_of(self, module: str, qualname: str, method: str) -> int:
        return int(self._one("unfinished_of", (module, qualname, method))[0])

    def values(self) -> Iterator[tuple[str, int, bytes | None, bytes | None, bytes | None]]:
        for r in self.file.read(Q["all_values"]):
            yield str(r[0]), int(r[1]), r[2], r[3], r[4]

    def steps(self, flow_id: str) -> list[StepInfo]:
        return [StepInfo(*r) for r in self.file.read(Q["steps"], (flow_id,))]

    def modules(self, flow_id: str | None = None, unfinished: bool = False) -> list[str]:
        rows = self.file.read(Q["modules"], (flow_id, flow_id, int(unfinished)))
        return sorted(str(r[0]) for r in rows if r[0])

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
        (fid, op.step, op.timestamp, op.module, op.method, op.value, op.fingerprint, op.timestamp),
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
