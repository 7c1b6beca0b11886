"""Onboarding: send a welcome, durably sleep, send a reminder; flows run in the background.

Run it with ``python examples/onboarding.py`` (``TDE_EXAMPLE_FAST=1`` for a short delay). It
uses a journal in a fresh temporary directory. ``time.sleep`` inside the flow is a durable
timer: while it sleeps longer than ``park_after`` the flow is parked and holds no thread.
"""

import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    sys.path.insert(0, HERE)
    import transparent_de

    fast = bool(os.environ.get("TDE_EXAMPLE_FAST"))
    delay = 0.5 if fast else 3.0
    work = tempfile.mkdtemp(prefix="tde-onboarding-")
    transparent_de.configure(database=os.path.join(work, "onboarding.db"), park_after=0.2, poll_interval=0.05)
    transparent_de.install("onboarding_flows")
    from onboarding_flows.flows import SENT, Onboarding

    users = ["ada", "grace", "linus"]
    print(f"Starting {len(users)} onboarding flows; each sleeps {delay} s between welcome and reminder:")
    t0 = time.monotonic()
    handles = [transparent_de.start(Onboarding().run, u, delay, flow_id=f"onboard-{u}") for u in users]
    results = [h.result(timeout=delay + 30) for h in handles]
    elapsed = time.monotonic() - t0
    for r in results:
        print(f"  {r}")
    ok = (
        results == [f"onboarded {u}" for u in users]
        and sorted(SENT) == sorted([(kind, u) for u in users for kind in ("welcome", "reminder")])
        and elapsed >= delay
    )
    print("\nThe journal of one flow:")
    for s in transparent_de.default_engine().steps("onboard-ada"):
        print(f"  step {s.step}  {s.method_name:<14} {s.status:<9} kind={s.kind} delay={s.delay}")
    print(
        f"\n{'OK' if ok else 'FAILED'} in {elapsed:.2f} s: journal at {os.path.join(work, 'onboarding.db')}"
    )
    transparent_de.default_engine().close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
