"""An order flow: plain Python, no import of transparent_de, marked with ``__flow__``."""

import os
import signal
import uuid


class OrderFlow:
    __flow__ = "run"  # run() starts a flow; the other public methods are its steps

    def run(self, order_id):
        order = self.load(order_id)
        reservation = self.reserve(order)
        charge = self.charge(order, idempotency_key=str(uuid.uuid4()))  # uuid4 is journaled too
        self.ship(order, reservation)
        return {"order": order_id, "charge": charge, "total": self._total(order)}

    def load(self, order_id):
        print(f"  step load({order_id}) runs", flush=True)
        return {"id": order_id, "items": [("book", 12.5), ("pen", 2.0)]}

    def reserve(self, order):
        print("  step reserve runs", flush=True)
        return f"res-{order['id']}"

    def charge(self, order, idempotency_key):
        print(f"  step charge runs (idempotency key {idempotency_key[:8]}...)", flush=True)
        return {"amount": self._total(order), "key": idempotency_key}

    def ship(self, order, reservation):
        if os.environ.get("DEMO_CRASH_IN_SHIP"):
            print("  step ship: the process is killed with SIGKILL right now", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        print(f"  step ship runs ({reservation})", flush=True)
        return True

    def _total(self, order):  # a helper: runs inline, never journaled
        return sum(price for _, price in order["items"])
