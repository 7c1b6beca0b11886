"""A journal written by one CPython and resumed by another: used by test_cross_version.py and CI.

    python tests/xversion.py write DIR    # start two flows in DIR/journal.db, SIGKILL each mid-way
    python tests/xversion.py resume DIR   # recover them here, print what happened as one JSON line

Users upgrade Python with flows in flight, so a journal must resume on another supported
version: the flow instance, arguments, results of many types, a caught exception, captured
time/random/uuid values and a durable sleep are replayed, and no completed step runs again.
A value holding code (a lambda, stored with dill) cannot cross versions: there the resume
must stop with UnsupportedPythonError, not crash the interpreter.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

FLOWS = """
import collections, dataclasses, datetime, decimal, enum, fractions, json, math, os, random, signal, time, uuid

def effect(name, value=None):
    with open(os.environ["XV_EFFECTS"], "a") as f:
        f.write(json.dumps([name, value]) + "\\n")

class Color(enum.Enum):
    RED = 1
    BLUE = 2

@dataclasses.dataclass(frozen=True)
class Item:
    sku: str
    qty: int
    price: decimal.Decimal

Point = collections.namedtuple("Point", "x y")
ITEMS = [Item("sku-1", 2, decimal.Decimal("9.95")), Item("sku-2", 1, decimal.Decimal("120.00"))]
WHEN = datetime.datetime(2026, 10, 7, 9, 30, tzinfo=datetime.timezone.utc)

class Order:
    __flow__ = "run"

    def __init__(self, customer):
        self.customer = customer
        self.tags = {"new", "vip"}

    def run(self, order_id, items, when):
        token = str(uuid.uuid4())
        started = time.time()
        lucky = random.randint(1, 10**6)
        basket = self.load(order_id, items, when)
        try:
            self.reserve(basket)
            note = None
        except LookupError as exc:
            note = str(exc)
        total = self.price(basket, {"currency": "EUR", "rates": {3, 1, 2}}, Point(1, 2), Color.BLUE)
        module = self.tools()
        self.record(token, started, lucky)
        time.sleep(0.01)
        self.crash_here("order")
        return {
            "customer": self.customer,
            "tags": self.tags,
            "basket": basket,
            "module": module,
            "note": note,
            "total": total,
            "captured": [token, started, lucky],
            "receipt": self.charge(total, token),
        }

    def load(self, order_id, items, when):
        effect("load")
        return {
            "id": order_id, "items": items, "when": when, "weights": frozenset({1.5, 2.5}),
            "raw": b"\\x00\\xff", "z": 1 + 2j, "nested": [(1, "a"), {"k": None}], "big": 10**30,
        }

    def tools(self):
        effect("tools")
        return math  # only dill stores a module (by name): portable. A result, not an argument:
        # an argument's fingerprint would walk the module's namespace, which differs by version.

    def reserve(self, basket):
        effect("reserve")
        raise LookupError(f"out of stock: {basket['items'][1].sku}")

    def price(self, basket, currency, origin, color):
        effect("price")
        cents = sum(i.qty * i.price for i in basket["items"])
        return (cents, fractions.Fraction(1, 3), currency["currency"], origin, color)

    def record(self, token, started, lucky):
        effect("record", [token, started, lucky])

    def crash_here(self, tag):
        effect("crash_here", tag)
        if os.environ.get("XV_KILL") == tag:
            os.kill(os.getpid(), signal.SIGKILL)

    def charge(self, total, token):
        effect("charge")
        return f"paid {total[0]} {total[2]} key={token[:8]}"

class Callbacks:
    __flow__ = "run"

    def run(self, k):
        f = self.make(k)
        self.crash_here("callbacks")
        return f(4)

    def make(self, k):
        effect("make")
        return lambda x: x * k  # code: stored by value, tied to the writer's bytecode

    def crash_here(self, tag):
        effect("crash_here", tag)
        if os.environ.get("XV_KILL") == tag:
            os.kill(os.getpid(), signal.SIGKILL)
"""

START = """
import sys, transparent_de
transparent_de.install("xvflows")
import xvflows.flows as m
if sys.argv[1] == "order":
    transparent_de.run(m.Order("ann").run, 7, m.ITEMS, m.WHEN, flow_id="xv-order")
else:
    transparent_de.run(m.Callbacks().run, 3, flow_id="xv-callbacks")
print("not killed")
"""

RESUME = """
import json, sys, transparent_de
transparent_de.install("xvflows")
out = {}
for handle in transparent_de.recover():
    try:
        out[handle.id] = {"value": handle.result(timeout=60)}
    except Exception as exc:
        out[handle.id] = {"error": type(exc).__name__, "message": str(exc)}
import xvflows.flows as m
order = out.get("xv-order", {}).get("value")
if order is not None:  # compared here, on this interpreter's types
    basket = order["basket"]
    out["xv-order"] = {
        "customer": order["customer"], "tags": sorted(order["tags"]), "note": order["note"],
        "captured": order["captured"], "receipt": order["receipt"],
        "basket_ok": basket["items"] == m.ITEMS and basket["when"] == m.WHEN and order["module"] is m.math
            and basket["weights"] == frozenset({1.5, 2.5}) and basket["raw"] == b"\\x00\\xff"
            and basket["z"] == 1 + 2j and basket["nested"] == [(1, "a"), {"k": None}] and basket["big"] == 10**30,
        "total_ok": order["total"] == (m.decimal.Decimal("139.90"), m.fractions.Fraction(1, 3), "EUR", m.Point(1, 2), m.Color.BLUE),
    }
print(json.dumps({"python": "%d.%d" % sys.version_info[:2], "flows": out}))
"""


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRANSPARENT_DE", "XV_"))}
    here = str(Path(__file__).resolve().parents[1])  # this checkout's transparent_de
    env.update(
        PYTHONPATH=os.pathsep.join([str(root), here]),
        TRANSPARENT_DE_DB=str(root / "journal.db"),
        XV_EFFECTS=str(root / "effects.log"),
        **extra,
    )
    return env


def write(root: Path, python: str = sys.executable) -> None:
    """Start both flows under ``python`` in ``root`` and let each be killed inside a step."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "xvflows").mkdir(exist_ok=True)
    (root / "xvflows" / "__init__.py").write_text("")
    (root / "xvflows" / "flows.py").write_text(textwrap.dedent(FLOWS))
    for tag in ("order", "callbacks"):
        proc = subprocess.run(
            [python, "-c", START, tag], cwd=root, env=_env(root, XV_KILL=tag), capture_output=True, text=True
        )
        if proc.returncode != -9:
            raise RuntimeError(
                f"the {tag} flow was not killed mid-way (rc {proc.returncode}): {proc.stderr[-2000:]}"
            )
    version = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (root / "writer.json").write_text(json.dumps({"python": version}))


def resume(root: Path, python: str = sys.executable) -> dict[str, Any]:
    """Recover the flows of ``root`` under ``python`` (a fresh process); returns what it reported."""
    proc = subprocess.run(
        [python, "-c", RESUME], cwd=root, env=_env(root), capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        raise RuntimeError(f"resume failed (rc {proc.returncode}): {proc.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    report["writer"] = json.loads((root / "writer.json").read_text())["python"]
    report["effects"] = [json.loads(line) for line in (root / "effects.log").read_text().splitlines()]
    return report


def copy(src: Path, dst: Path) -> Path:
    """A private copy of a written journal directory (each resume consumes the one it gets)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


if __name__ == "__main__":
    command, directory = sys.argv[1], Path(sys.argv[2]).resolve()
    if command == "write":
        if directory.exists():
            shutil.rmtree(directory)
        write(directory)
        print(
            f"journal written by CPython {json.loads((directory / 'writer.json').read_text())['python']} in {directory}"
        )
    elif command == "resume":
        print(json.dumps(resume(directory), indent=2))
    else:
        raise SystemExit(__doc__)
