"""Power loss: the journal after the unsynced tail of its WAL is lost or torn.

SQLite in WAL mode appends every commit to ``<db>-wal`` as frames (a 24-byte header and one
page each); a frame whose header carries a non-zero "database size" ends a transaction. On
power loss, whatever the OS had not written back is gone, so the WAL on disk is any prefix
of the bytes written, cut at an arbitrary offset (a torn frame included). SQLite recovers
the WAL by replaying frames up to the last complete, checksummed commit frame.

The model: run a flow in a forked child that dies (``os._exit``) without closing the journal,
so the WAL holds the whole history; then, in the parent, rebuild the journal with the WAL
cut at every frame boundary and at one random offset inside every frame, and check

* ``PRAGMA integrity_check`` is ok and the state is the one of the last whole commit before
  the cut: the journal is a prefix of committed history;
* history is monotone: a row that is ``COMPLETE`` at some commit is byte-identical at every
  later commit (a completed step is never rewritten);
* recovered from every distinct state, the flow finishes with the oracle's result and step
  sequence;
* in ``durability="full"``: everything committed before the last acknowledged
  ``*.after_commit`` point survives a cut at the last offset our own ``fsync`` covered.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import sqlite3
import struct
import tempfile
from dataclasses import dataclass, field
from typing import Any

from fuzz import harness
from fuzz.harness import FLOW_ID, STATS, PropertyFailure

WAL_HEADER = 32
FRAME_HEADER = 24


@dataclass
class Wal:
    page_size: int
    frames: list[tuple[int, bool]]  # (offset of the frame, ends a transaction)

    @property
    def frame_size(self) -> int:
        return FRAME_HEADER + self.page_size

    def commit_ends(self) -> list[int]:
        """Offsets just past each commit frame: the states a cut can leave."""
        return [off + self.frame_size for off, commit in self.frames if commit]


def parse_wal(data: bytes) -> Wal:
    """Frames of the current WAL generation (frames with another salt are stale and ignored)."""
    if len(data) < WAL_HEADER:
        return Wal(0, [])
    magic, _version, page_size, _ckpt, salt1, salt2 = struct.unpack(">6I", data[:24])
    if magic not in (0x377F0682, 0x377F0683):
        raise PropertyFailure(f"not a WAL file (magic {magic:#x})")
    frames: list[tuple[int, bool]] = []
    off = WAL_HEADER
    size = FRAME_HEADER + page_size
    while off + size <= len(data):
        _pgno, db_size, s1, s2 = struct.unpack(">4I", data[off : off + 16])
        if (s1, s2) != (salt1, salt2):
            break
        frames.append((off, db_size != 0))
        off += size
    return Wal(page_size, frames)


def cut_offsets(wal: Wal, rng: random.Random) -> list[int]:
    """Where the power goes out: inside the header, every frame boundary, inside every frame."""
    offsets = {0, rng.randrange(1, WAL_HEADER), WAL_HEADER}
    for off, _commit in wal.frames:
        offsets.add(off + wal.frame_size)
        offsets.add(off + rng.randrange(1, wal.frame_size))
    return sorted(offsets)


State = tuple[tuple[Any, ...], ...]


def read_state(db: str) -> tuple[str, State, State]:
    """``(integrity, execution_log rows, flows rows)`` of the journal at ``db``."""
    con = sqlite3.connect(db, isolation_level=None)
    try:
        ok = con.execute("PRAGMA integrity_check").fetchone()[0]
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "execution_log" not in tables:
            return ok, (), ()
        log = tuple(
            con.execute(
                "SELECT flow_id, step, kind, class_name, method_name, status, attempts, fingerprint, "
                "return_value, error FROM execution_log ORDER BY flow_id, step"
            )
        )
        flows = tuple(con.execute("SELECT flow_id, status FROM flows ORDER BY flow_id"))
        return ok, log, flows
    finally:
        con.close()


def materialize(src_db: str, wal_bytes: bytes, cut: int, dest: str) -> str:
    """A copy of the journal at ``dest`` whose WAL is the first ``cut`` bytes of ``wal_bytes``."""
    os.makedirs(dest, exist_ok=True)
    db = os.path.join(dest, "journal.db")
    shutil.copyfile(src_db, db)
    if cut > 0:
        with open(db + "-wal", "wb") as f:
            f.write(wal_bytes[:cut])
    return db


def _completed(log: State) -> dict[tuple[str, int], tuple[Any, ...]]:
    return {(r[0], r[1]): r for r in log if r[5] == "COMPLETE"}


def check_history(states: list[State]) -> None:
    """A COMPLETE row never changes at any later commit, and no row disappears."""
    for before, after in itertools.pairwise(states):
        later = {(r[0], r[1]): r for r in after}
        for key, row in _completed(before).items():
            if later.get(key) != row:
                raise PropertyFailure(
                    f"completed row {key} changed by a later commit: {row} -> {later.get(key)}"
                )
        missing = {(r[0], r[1]) for r in before} - set(later)
        if missing:
            raise PropertyFailure(f"rows {sorted(missing)} vanished at a later commit")


@dataclass
class Report:
    states: int = 0
    recoveries: int = 0
    failures: list[str] = field(default_factory=list)


def check(
    source: str,
    crash_at: int | None = None,
    durability: str = "process",
    seed: int = 0,
    recover_every: int = 1,
) -> Report:
    """Run ``source`` to hit ``crash_at`` (default: its last crash point), then cut its WAL everywhere.

    ``recover_every`` > 1 recovers from every n-th distinct state only (the cut states are all
    checked); the last state is always recovered.
    """
    rng = random.Random(seed)
    workdir = tempfile.mkdtemp(prefix="tdepower-")
    report = Report()
    STATS.flows += 1
    try:
        orc, module = harness.prepare(source)
        effects = os.path.join(workdir, "effects")
        module.EFFECTS = effects  # type: ignore[attr-defined]
        db = os.path.join(workdir, "journal.db")
        if crash_at is None:
            probe = harness.run_in_child(module, os.path.join(workdir, "probe.db"), workdir, None, durability)
            crash_at = len(probe.trace)
            if os.path.exists(effects):
                os.unlink(effects)
        outcome = harness.run_in_child(
            module, db, workdir, crash_at, durability, record_acks=durability == "full"
        )
        STATS.crash_points += len(outcome.trace)
        STATS.crashes += outcome.status == "crash"
        wal_path = db + "-wal"
        with open(wal_path, "rb") as f:
            wal_bytes = f.read()
        os.unlink(wal_path)
        shm = db + "-shm"
        if os.path.exists(shm):
            os.unlink(shm)
        wal = parse_wal(wal_bytes)
        ends = [0, *wal.commit_ends()]

        # The state after each commit, then every cut against it.
        history: list[State] = []
        for i, end in enumerate(ends):
            ok, log, flows = read_state(materialize(db, wal_bytes, end, os.path.join(workdir, f"h{i}")))
            if ok != "ok":
                STATS.corrupt_journals += 1
                raise PropertyFailure(f"integrity_check after commit {i}: {ok}")
            history.append((log, flows))  # type: ignore[arg-type]
        check_history([h[0] for h in history])  # type: ignore[misc]
        for cut in cut_offsets(wal, rng):
            k = sum(1 for e in ends[1:] if e <= cut)
            ok, log, flows = read_state(materialize(db, wal_bytes, cut, os.path.join(workdir, "cut")))
            shutil.rmtree(os.path.join(workdir, "cut"))
            report.states += 1
            STATS.power_loss_states += 1
            if ok != "ok":
                STATS.corrupt_journals += 1
                raise PropertyFailure(f"integrity_check with the WAL cut at byte {cut}: {ok}")
            if (log, flows) != history[k]:
                raise PropertyFailure(
                    f"WAL cut at byte {cut} is not the state of commit {k} (a prefix of committed history)"
                )

        if durability == "full":
            _check_acknowledged(db, wal_bytes, outcome, workdir)

        # Recover from each distinct state; the flow must finish as the oracle did.
        picks = list(range(0, len(ends), recover_every))
        if picks[-1] != len(ends) - 1:
            picks.append(len(ends) - 1)
        for i in picks:
            dest = os.path.join(workdir, f"h{i}")
            state_db = os.path.join(dest, "journal.db")
            module.EFFECTS = os.path.join(dest, "effects")  # type: ignore[attr-defined]
            for _ in range(3):
                final = harness.run_in_child(module, state_db, dest, None, durability)
                if final.status == "ok":
                    break
            report.recoveries += 1
            if final.status != "ok":
                STATS.lost_flows += 1
                raise PropertyFailure(f"flow did not complete when recovered from commit {i}: {final.value}")
            if final.value != orc.result:
                STATS.divergences += 1
                raise PropertyFailure(
                    f"recovered from commit {i} of {len(ends) - 1}: result {final.value!r}, oracle {orc.result!r}"
                )
            con = sqlite3.connect(state_db)
            try:
                ok = con.execute("PRAGMA integrity_check").fetchone()[0]
                seq = list(
                    con.execute(
                        "SELECT method_name, status FROM execution_log WHERE flow_id=? AND kind IN ('step', 'signal') "
                        "ORDER BY step",
                        (FLOW_ID,),
                    )
                )
            finally:
                con.close()
            if ok != "ok":
                STATS.corrupt_journals += 1
                raise PropertyFailure(f"integrity_check after recovering from commit {i}: {ok}")
            if seq != orc.sequence:
                STATS.divergences += 1
                raise PropertyFailure(f"recovered from commit {i}: steps {seq}, oracle {orc.sequence}")
        return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _check_acknowledged(db: str, wal_bytes: bytes, outcome: harness.Outcome, workdir: str) -> None:
    """``full``: a cut at the last fsync-covered offset keeps every commit acknowledged before."""
    if not outcome.acks:
        return
    durable = outcome.synced
    acked = outcome.acks[-1]
    for cut in sorted({durable, len(wal_bytes)}):
        ok, log, _flows = read_state(materialize(db, wal_bytes, cut, os.path.join(workdir, "ack")))
        shutil.rmtree(os.path.join(workdir, "ack"))
        STATS.power_loss_states += 1
        have = _completed(log)
        lost = [key for key, row in acked.items() if have.get(key) != row]
        if ok != "ok" or lost:
            STATS.lost_flows += bool(lost)
            raise PropertyFailure(
                f"durability='full': after power loss (WAL cut at byte {cut}, last fsync covered "
                f"{durable} of {len(wal_bytes)}) acknowledged steps are lost: {sorted(lost)}"
            )
