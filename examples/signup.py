"""Sign-up with e-mail confirmation: ``wait_for(self.confirm)`` in the flow, ``signal(...)`` elsewhere.

Run it with ``python examples/signup.py`` (``TDE_EXAMPLE_FAST=1`` to click sooner). It uses a
journal in a fresh temporary directory. The flow is started in the background, parks while it
waits for the click, and a "web request" thread delivers the confirmation with
``transparent_de.signal(flow_id, "confirm", token)``.
"""

import os
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    sys.path.insert(0, HERE)
    import transparent_de

    click_after = 0.3 if os.environ.get("TDE_EXAMPLE_FAST") else 2.0
    work = tempfile.mkdtemp(prefix="tde-signup-")
    db = os.path.join(work, "signup.db")
    transparent_de.configure(database=db, park_after=0.2, poll_interval=0.05)
    transparent_de.install("signup_flows")
    from signup_flows.flows import OUTBOX, SignUp

    print("1) Start the sign-up flow for ada@example.org:")
    handle = transparent_de.start(SignUp().run, "ada@example.org", flow_id="signup-ada")

    def user_clicks() -> None:  # stands in for the web request behind the link in the mail
        time.sleep(click_after)
        print(
            f"2) After {click_after} s the flow is {handle.status()}; the user clicks the link:", flush=True
        )
        transparent_de.signal("signup-ada", "confirm", OUTBOX["ada@example.org"])

    clicker = threading.Thread(target=user_clicks)
    clicker.start()
    result = handle.result(timeout=30)
    clicker.join()
    print(f"3) Flow result: {result}")
    ok = result == {"email": "ada@example.org", "active": True}
    print(f"\n{'OK' if ok else 'FAILED'}: journal at {db}")
    transparent_de.default_engine().close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
