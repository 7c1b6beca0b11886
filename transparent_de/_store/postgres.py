"""The PostgreSQL store: the :class:`~.base.Store` interface over one schema of a PostgreSQL database.

Every statement is a named query from ``postgres_queries.sql``, the same statements as the
SQLite store's with the same meanings; the database side (URL, pool, schema, fenced
transactions) is :class:`~.postgres_db.PostgresDB`. Many processes on many hosts may share one
journal: a flow's writes are fenced by its token, claims are compare-and-set on it. Storing a
signal and parking a flow also NOTIFY the journal's channel in their transaction, so that
other engines wake the flow at once (:mod:`.postgres_wake`).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from .._serialization import is_signed
from . import postgres_wake
from .base import (
    Backoff,
    Captured,
    Complete,
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
    WakeHint,
)
from .postgres_db import PostgresDB, Statement, parse_url
from .postgres_sql import APPLICATION_ID, SCHEMA_VERSION, Q
from .reads import NamedReads


class PostgresStore(NamedReads, Store):
    """A journal in one schema of a PostgreSQL database (``postgresql://...?schema=name``)."""

    Q = Q  # the named statements NamedReads runs
    remote = True  # a commit is a round trip to the server

    def __init__(
        self, url: str, durability: str = "full", busy_timeout: float = 10.0, readonly: bool = False
    ) -> None:
        self.db = PostgresDB(url, durability, busy_timeout, readonly=readonly)
        self.path = self.db.path
        self.readonly = readonly
        self.channel = postgres_wake.channel(self.db.location.schema)  # wake-up hints (NOTIFY)

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return self.db.read(sql, params)

    def close(self) -> None:
        self.db.close()

    # ---------------------------------------------------------------- flows

    def create_flow(self, flow: NewFlow) -> bool:
        params = (
            flow.flow_id,
            flow.module,
            flow.qualname,
            flow.method,
            flow.instance,
            flow.owner,
            flow.lease_until,
            flow.now,
            flow.now,
            flow.now,
            flow.entry_class,
            flow.method,
            flow.parameters,
            flow.fingerprint,
            flow.now,
        )
        (cur,) = self.db.write([(Q["create_flow"], params)], label="flow.start.mid_txn")
        return cur.rowcount == 1

    def take_over(self, flow_id: str, seen_fence: int, owner: str, lease_until: int, now: int) -> int | None:
        params = (owner, lease_until, now, flow_id, seen_fence, now)
        (cur,) = self.db.write([(Q["take_over"], params)], label="flow.start.mid_txn")
        return seen_fence + 1 if cur.rowcount == 1 else None

    def commit(self, fence: Fence, ops: Sequence[Op], label: str | None) -> None:
        fid = fence.flow_id
        statements: list[Statement] = []
        for op in ops:
            statements += _STATEMENTS[type(op)](fid, op)
            if type(op) is Parked:  # delivered on COMMIT: other engines may wake it from now on
                payload = postgres_wake.parked_payload(fid, op, fence.owner)
                statements.append((Q["notify"], (self.channel, payload)))
        self.db.write(statements, fence, label)

    def sync(self) -> None:
        """Nothing to do: with ``durability="full"`` every COMMIT returned after the server flushed
        its WAL (``synchronous_commit=on``)."""

    def renew(self, owner: str, flow_ids: Sequence[str], lease_until: int) -> None:
        if flow_ids:  # no crash point: the heartbeat's timing is not the flow's
            self.db.write([(Q["renew"], (lease_until, owner, list(flow_ids)))], label=None)

    def rearm(self, flow_id: str, now: int) -> str | None:
        (cur,) = self.db.write([(Q["rearm"], (flow_id, now, flow_id, now))])
        row = cur.fetchone()
        return str(row[0]) if row else None

    def cancel(self, flow_id: str, now: int) -> str | None:
        (cur,) = self.db.write([(Q["cancel"], (flow_id, now, flow_id, now))])
        row = cur.fetchone()
        return str(row[0]) if row else None

    # ---------------------------------------------------------------- signals

    def add_signal(self, flow_id: str, step_name: str, sent: int, seal: Callable[[int], bytes]) -> int:
        if self.readonly:
            raise TypeError(f"journal {self.path} was opened read-only")
        seq = int(self.db.read(Q["next_seq"])[0][0])  # allocated first: the payload is signed for it
        self.db.write(
            [
                (Q["insert_signal"], (seq, flow_id, step_name, seal(seq), sent)),
                (Q["notify"], (self.channel, postgres_wake.signal_payload(flow_id))),  # on COMMIT
            ],
            label="signal.send.mid_txn",
        )
        return seq

    def listen(self, on_hint: Callable[[WakeHint | None], None]) -> postgres_wake.Listener | None:
        """One LISTEN connection of this engine's own (see :mod:`.postgres_wake`)."""
        if self.readonly or self.db.empty or not postgres_wake.SUPPORTED:
            return None
        loc = self.db.location
        return postgres_wake.Listener(loc.conninfo, self.channel, on_hint, self.path, self.db.busy_timeout)

    def signalled(self, flow_ids: Sequence[str]) -> list[str]:
        ids = list(flow_ids)
        return [r[0] for r in self.db.read(Q["signalled"], (ids, ids))]

    # ---------------------------------------------------------------- reads

    def unfinished_of(self, module: str, qualname: str, method: str) -> int:
        row = self._one("unfinished_of", (module, qualname, method))
        return int(row[0]) if row else 0

    def describe(self) -> dict[str, Any]:
        settings = self.db.settings()
        return {
            "backend": "postgresql",
            "url": self.path,
            "schema": self.db.location.schema,
            "server": settings.pop("server_version", None),
            "durability": self.db.durability,
            "pool_size": self.db.location.pool_size,
            "psycopg": psycopg.__version__,
            "settings": settings,
        }


def exists(url: str) -> bool:
    """Is there a journal schema at this URL (read without creating anything)?"""
    store = PostgresStore(url, readonly=True)
    try:
        return not store.db.empty
    finally:
        store.close()


def with_schema(url: str, name: str) -> str:
    """The URL of schema ``<schema>_<name>`` in the same database."""
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if k != "schema"]
    query.append(("schema", f"{parse_url(url).schema}_{name}"[:63]))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def drop_schema(url: str) -> None:
    """Drop the URL's schema with everything in it (a crash sweep's scratch journals)."""
    loc = parse_url(url)
    with psycopg.connect(loc.conninfo, autocommit=True) as con:
        con.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(loc.schema)))


def inspect(url: str) -> Health:
    """Identity, schema version, integrity and counts of a journal schema, read-only, refusing
    nothing (``doctor`` reports a foreign or newer schema instead of failing on it)."""
    loc = parse_url(url)
    con = psycopg.connect(loc.conninfo, autocommit=True)
    try:
        con.execute("SET default_transaction_read_only = on")
        con.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(loc.schema)))
        qualified = sql.Identifier(loc.schema, "journal_meta").as_string(con)
        present = con.execute(Q["has_meta"], (qualified,)).fetchone()
        app_id = version = 0
        integrity = ["ok"]
        counts: dict[str, int] = {}
        signed = {True: 0, False: 0, None: 0}
        if present and present[0]:
            meta = con.execute(Q["meta"]).fetchone()
            app_id, version = (int(meta[0]), int(meta[1])) if meta else (0, 0)
        if app_id == APPLICATION_ID and version <= SCHEMA_VERSION:
            integrity = [str(r[0]) for r in con.execute(Q["integrity"]).fetchall()] or ["ok"]
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
        file_mode=None,
    )


# --------------------------------------------------------------------------- ops -> statements


def _intent(fid: str, op: Intent) -> list[Statement]:
    params = (
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
    )
    return [(Q["intent"], params)]


def _retry(fid: str, op: Retry) -> list[Statement]:
    return [(Q["retry"], (op.status, op.now, fid, op.step))]


def _complete(fid: str, op: Complete) -> list[Statement]:
    return [(Q["complete"], (op.return_value, op.now, fid, op.step))]


def _step_failed(fid: str, op: StepFailed) -> list[Statement]:
    return [(Q["step_failed"], (op.error, op.error_text, op.now, fid, op.step))]


def _reopen(fid: str, op: Reopen) -> list[Statement]:
    return [(Q["reopen"], (op.now, fid, op.step))]


def _captured(fid: str, op: Captured) -> list[Statement]:
    params = (fid, op.step, op.timestamp, op.module, op.method, op.value, op.fingerprint, op.timestamp, op.lineage)
    return [(Q["captured"], params)]


def _consume(fid: str, op: ConsumeSignal) -> list[Statement]:
    # tde_consume aborts the transaction (-> Conflict) if the signal was taken already.
    return [
        (Q["consume_signal"], (op.seq, op.step)),
        (Q["signal_arguments"], (op.parameters, op.now, fid, op.step)),
    ]


def _flow_complete(fid: str, op: FlowComplete) -> list[Statement]:
    return [(Q["flow_result"], (op.return_value, op.now, fid)), (Q["flow_completed"], (op.now, fid))]


def _flow_failed(fid: str, op: FlowFailed) -> list[Statement]:
    return [(Q["flow_error"], (op.error, op.now, fid)), (Q["flow_failed"], (op.failures, op.now, fid))]


def _backoff(fid: str, op: Backoff) -> list[Statement]:
    return [(Q["backoff"], (op.wake_at, op.failures, op.now, fid))]


def _parked(fid: str, op: Parked) -> list[Statement]:
    status = "WAITING_FOR_SIGNAL" if op.waiting_for else "PENDING"
    return [(Q["parked"], (op.wake_at, op.waiting_for, status, op.now, fid))]


def _waiting(fid: str, op: Waiting) -> list[Statement]:
    return [(Q["waiting"], (op.waiting_for, op.waiting_for, op.now, fid))]


def _release(fid: str, op: Release) -> list[Statement]:
    return [(Q["release"], (op.now, fid))]


_STATEMENTS: dict[type, Callable[[str, Any], list[Statement]]] = {
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
