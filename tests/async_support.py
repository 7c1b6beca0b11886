"""What the async differential tests share: the flow module, the driver, and the three runs.

Each shape runs three ways: as a plain asyncio program (the entry's own function, outside any
flow), journaled, and replayed in a fresh interpreter, which must return the same result and
execute no step. Steps sleep a delay that depends on a seed (``TDE_ORDER``) and their label, so
steps finish in another order under another seed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from helpers import query

import transparent_de

HAS_TASKGROUP = sys.version_info >= (3, 11)

PRELUDE = """
import asyncio
import os
import signal
import hashlib
import time

EFFECTS = []
ORDER = [os.environ.get("TDE_ORDER", "0")]


def effect(label):
    EFFECTS.append(label)
    path = os.environ.get("TDE_EFFECTS")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (label + "\\n").encode())
        finally:
            os.close(fd)
    if os.environ.get("TDE_KILL") == label:
        os.kill(os.getpid(), signal.SIGKILL)


def delay(label):
    # 0..28 ms in steps of 4 ms, a function of the seed and the label: another seed, another order.
    # (A hash, not a CRC: CRCs are affine, so labels of one length kept their order across seeds.)
    return hashlib.sha256(f"{ORDER[0]}:{label}".encode()).digest()[0] % 8 * 0.004


"""

FLOWS = PRELUDE + """
class Agent:
    __flow__ = ("sequential", "fanout", "after_await", "interleaved", "group", "caught", "crashy", "timer")

    async def sequential(self, x):
        a = await self.fetch("a", x)
        b = await self.fetch("b", a["x"] + 1)
        c = self.combine(a["x"], b["x"])  # a sync step called from async flow code
        return [a, b, c, await self.fetch("c", c)]

    async def fanout(self, n):  # DBOS #688 / #551: gather of distinct steps
        return await asyncio.gather(*(self.fetch(f"g{i}", i) for i in range(n)))

    async def after_await(self, n):  # DBOS #714: slots taken after awaits, in tasks
        first = await self.fetch("first", n)
        tasks = []
        for i in range(n):
            await asyncio.sleep(0)
            tasks.append(asyncio.create_task(self._later(i, first["x"])))
        return [await t for t in reversed(tasks)]

    async def _later(self, i, base):
        await self.fetch(f"pre{i}", i)  # finishes after a seed-dependent delay: then the next slot
        return await self.fetch(f"later{i}", base + i)

    async def interleaved(self, n):  # the interleaved sequences DBOS forbids
        return await asyncio.gather(self._seq("a", n), self._seq("b", n))

    async def _seq(self, tag, n):
        out = []
        for i in range(n):
            out.append((await self.fetch(f"{tag}{i}", len(out)))["label"])
        return out

    async def group(self, n):  # TaskGroup with a failing task (3.11+)
        tasks = []
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self.fetch(f"t{i}", i)) for i in range(n)]
                tg.create_task(self._fail_after(tasks))
        except Exception as eg:
            errors = sorted(f"{type(e).__name__}: {e}" for e in getattr(eg, "exceptions", [eg]))
        return [t.result() for t in tasks], errors

    async def _fail_after(self, tasks):
        await asyncio.gather(*tasks)
        await self.explode("the group's last task")

    async def caught(self, x):  # a failing step caught in flow code
        try:
            await self.explode(f"bad {x}")
        except ValueError as e:
            message = str(e)
        return message, await self.fetch("after", x)

    async def crashy(self, n):
        first = await self.fetch("first", n)
        parts = await asyncio.gather(*(self._seq(f"s{k}_", 2) for k in range(n)))
        return first, parts, await self.fetch("last", n)

    async def timer(self, ms):
        started = time.time()
        await asyncio.sleep(ms / 1000)
        return await self.fetch("woke", round(time.time() - started, 3))

    async def fetch(self, label, x):
        await asyncio.sleep(delay(label))
        effect(label)
        return {"label": label, "x": x}

    def combine(self, a, b):
        effect("combine")
        return a * 10 + b

    async def explode(self, message):
        await asyncio.sleep(0.001)
        effect("explode")
        raise ValueError(message)
"""

DRIVER = """
import asyncio, importlib, json, os, sys
sys.path.insert(0, sys.argv[1])
import transparent_de
transparent_de.install(sys.argv[2].partition(".")[0])
m = importlib.import_module(sys.argv[2])
eng = transparent_de.configure(database=sys.argv[3], durability="process", poll_interval=0.02, park_after=0.2)
mode = sys.argv[4]
if mode == "recover":
    out = {h.id: h.result(timeout=60) for h in transparent_de.recover()}
elif mode == "await":
    entry, fid, args = sys.argv[5], sys.argv[6], json.loads(sys.argv[7])
    out = asyncio.run(transparent_de.run_async(getattr(m.Agent(), entry), *args, flow_id=fid))
else:
    entry, fid, args = sys.argv[5], sys.argv[6], json.loads(sys.argv[7])
    out = transparent_de.run(getattr(m.Agent(), entry), *args, flow_id=fid)
print(json.dumps({"result": out, "effects": m.EFFECTS}))
eng.close()
"""


def agent_module(flow_module: Any, tmp_path: Path, source: str = FLOWS) -> Any:
    """Import ``source`` (:data:`PRELUDE` and an ``Agent`` flow class) through the hook, beside the driver."""
    m = flow_module(source)
    (tmp_path / "driver.py").write_text(textwrap.dedent(DRIVER))
    return m


def normal(value: Any) -> Any:
    """What a value is after the journey through JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def plain(m: Any, entry: str, *args: Any, order: str) -> tuple[Any, list[str]]:
    """The program as plain asyncio: the entry's own function, outside any flow."""
    import asyncio

    m.EFFECTS.clear()
    m.ORDER[0] = order
    fn = getattr(m.Agent, entry).__tde_entry__
    result = asyncio.run(fn(m.Agent(), *args))
    return normal(result), list(m.EFFECTS)


def journaled(m: Any, entry: str, *args: Any, fid: str, order: str) -> tuple[Any, list[str]]:
    m.EFFECTS.clear()
    m.ORDER[0] = order
    result = transparent_de.run(getattr(m.Agent(), entry), *args, flow_id=fid)
    return normal(result), list(m.EFFECTS)


def fresh(
    m: Any, tmp: Path, db: str, mode: str, *rest: str, order: str, env: dict[str, str] | None = None
) -> Any:
    """Run the driver in a fresh interpreter; returns its JSON output."""
    e = dict(os.environ, TDE_ORDER=order, **(env or {}))
    e.pop("TRANSPARENT_DE_HMAC_KEY", None)
    p = subprocess.run(
        [sys.executable, str(tmp / "driver.py"), str(tmp / "src"), m.__name__, db, mode, *rest],
        env=e, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def reopen(db: str, fid: str, steps: list[int] | None = None) -> None:
    """Make the journal what a crash just before the flow's last commit leaves (and, for
    ``steps``, before their results were committed): a re-run replays from it."""
    query(db, "UPDATE flows SET status='PENDING', owner=NULL, lease_until=NULL WHERE flow_id=?", (fid,))
    query(
        db, "UPDATE execution_log SET status='PENDING', return_value=NULL WHERE flow_id=? AND step=0", (fid,)
    )
    for step in steps or []:
        query(
            db,
            "UPDATE execution_log SET status='PENDING', return_value=NULL WHERE flow_id=? AND step=?",
            (fid, step),
        )


def rows(db: str, fid: str) -> list[tuple[int, str, str, str | None]]:
    """``(step, method, lineage, label)`` of the flow's rows; label: the step's first argument."""
    import pickle

    out = []
    for step, method, lineage, params in query(
        db,
        "SELECT step, method_name, lineage, parameters FROM execution_log WHERE flow_id=? AND step>0 ORDER BY step",
        (fid,),
    ):
        label = None
        if params is not None:
            blob = bytes(params)
            assert blob[:2] == b"TD" and blob[3:4] == b"P"  # framed plain pickle, unsigned: 9-byte header
            args, _ = pickle.loads(blob[9:])
            label = args[0] if args else None
        out.append((step, method, lineage, label))
    return out


def differential(
    m: Any, tmp: Path, db: str, entry: str, *args: Any, fid: str, mode: str = "run"
) -> tuple[Any, list[str], list[tuple[int, str, str, str | None]]]:
    """Plain (order 1) == journaled (order 2) == replayed in a fresh process (order 3), which
    executes no step; the completion order did differ between plain and journaled."""
    expected, plain_fx = plain(m, entry, *args, order="1")
    live, live_fx = journaled(m, entry, *args, fid=fid, order="2")
    assert live == expected
    assert sorted(live_fx) == sorted(plain_fx)
    journal = rows(db, fid)
    reopen(db, fid)
    out = fresh(m, tmp, db, mode, entry, fid, json.dumps(list(args)), order="3")
    assert out == {"result": expected, "effects": []}
    assert rows(db, fid) == journal  # the replay wrote no row and moved none
    return expected, [plain_fx, live_fx], journal  # type: ignore[return-value]


