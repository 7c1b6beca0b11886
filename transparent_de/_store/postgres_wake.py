"""Wake-up hints over PostgreSQL's LISTEN/NOTIFY: a parked flow is woken at once, not at the next poll.

Two writes send a notification on the journal's channel, in their own transaction (so it is
delivered only once they commit, and never for a transaction that rolled back): storing a
signal, and parking a flow (released, with its wake-up time or awaited step). Nothing on a
step's path sends one. Each engine with a scheduler keeps **one** connection of its own (not
from the pool, which holds a connection only per statement) that LISTENs in a daemon thread
and hands every hint to the scheduler, which acts on it as on what polling would have found.

* **The channel** is ``transparent_de:<schema>``: journals in other schemas of the same
  database (test runs, applications) never hear each other; a schema whose channel would be
  longer than an identifier (63 bytes) gets a digest of its name instead of its tail.
* **Payloads** are small JSON objects, ``{"k": "s", "f": flow}`` for a signal and ``{"k": "p",
  "f": flow, "w": wake_at, "l": ms left, "s": awaited step, "o": parking owner}`` for a park.
  Anything else on the channel is ignored: anyone who may connect can NOTIFY, so a hint only
  ever makes the scheduler look (read the journal) sooner; it is never taken as a fact.
* **Failures.** When the server goes away the listener reconnects, after 0.5 s doubling up to
  30 s, and then tells the scheduler (``on_hint(None)``) to poll at once for what it missed.
  TCP keepalives find a peer that vanished without closing the connection. The engine polls
  every ``poll_interval`` whatever happens here: a lost hint costs latency, never a flow.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from .base import Parked, WakeHint

log = logging.getLogger("transparent_de")

#: ``Connection.notifies(timeout=...)`` (psycopg 3.2): without it the thread could not stop.
SUPPORTED = "timeout" in inspect.signature(psycopg.Connection.notifies).parameters
_MAX_DELAY = 30.0


def channel(schema: str) -> str:
    """The NOTIFY channel of the journal in ``schema`` (at most 63 bytes, as an identifier)."""
    name = f"transparent_de:{schema}"
    if len(name.encode()) <= 63:
        return name
    digest = hashlib.sha256(schema.encode()).hexdigest()[:16]
    head = schema.encode()[:30].decode(errors="ignore")
    return f"transparent_de:{head}:{digest}"


def signal_payload(flow_id: str) -> str:
    return json.dumps({"k": "s", "f": flow_id}, separators=(",", ":"))


def parked_payload(flow_id: str, op: Parked, origin: str) -> str:
    left = op.wake_at - op.now if op.wake_at else None
    hint = {"k": "p", "f": flow_id, "w": op.wake_at, "l": left, "s": op.waiting_for, "o": origin}
    return json.dumps(hint, separators=(",", ":"))


def parse(payload: str) -> WakeHint | None:
    """The hint a payload holds, or None for anything that is not one of ours."""
    try:
        data = json.loads(payload)
        kind = {"s": "signal", "p": "parked"}[data["k"]]
        fid = data["f"]
        if not isinstance(fid, str):
            return None
        if kind == "signal":
            return WakeHint(kind, fid)
        wake_at, left, step, origin = data.get("w"), data.get("l"), data.get("s"), data.get("o")
        if not all(isinstance(v, int) or v is None for v in (wake_at, left)):
            return None
        if not all(isinstance(v, str) or v is None for v in (step, origin)):
            return None
        return WakeHint(kind, fid, wake_at, left, step, origin)
    except (ValueError, KeyError, TypeError):
        return None


class Listener:
    """A LISTEN connection in a daemon thread, calling ``on_hint`` for each hint until :meth:`close`."""

    def __init__(
        self,
        conninfo: str,
        channel: str,
        on_hint: Callable[[WakeHint | None], None],
        display: str,
        connect_timeout: float = 10.0,
        tick: float = 0.1,
    ) -> None:
        self.conninfo, self.channel, self.display = conninfo, channel, display
        self._on_hint = on_hint
        self._connect_timeout = max(1, int(connect_timeout))
        self._tick = tick  # how often the thread looks whether it must stop (close() waits that long)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tde-listen", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=self._tick + 2)

    def _connect(self) -> psycopg.Connection[Any]:
        con = psycopg.connect(
            self.conninfo,
            autocommit=True,
            connect_timeout=self._connect_timeout,
            application_name="transparent_de:listen",
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )
        try:
            con.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except BaseException:
            con.close()
            raise
        return con

    def _loop(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                con = self._connect()
            except psycopg.Error as exc:
                log.info("transparent_de: wake-up hints of %s unavailable (%s); again in %.1f s", self.display,
                         str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, delay)  # fmt: skip
                self._stop.wait(delay)
                delay = min(delay * 2, _MAX_DELAY)
                continue
            delay = 0.5
            try:
                self._hint(None)  # listening (again): what happened before is found by one poll
                while not self._stop.is_set():
                    for note in con.notifies(timeout=self._tick):
                        if note.channel == self.channel:
                            hint = parse(note.payload)
                            if hint is not None:
                                self._hint(hint)
            except psycopg.Error as exc:
                log.info(
                    "transparent_de: wake-up hints of %s interrupted (%s)", self.display, type(exc).__name__
                )
                self._stop.wait(delay)
            finally:
                with contextlib.suppress(Exception):
                    con.close()

    def _hint(self, hint: WakeHint | None) -> None:
        try:
            self._on_hint(hint)
        except Exception:  # the scheduler's business; the listener must go on
            log.debug("transparent_de: wake-up hint %r failed", hint, exc_info=True)
