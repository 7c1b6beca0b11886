"""Sign-up with e-mail confirmation: the flow waits, durably, for a ``confirm`` signal."""

import uuid

import transparent_de

OUTBOX = {}  # email -> the token in the last mail sent (a stand-in for a real mailbox)


class SignUp:
    __flow__ = "run"

    def run(self, email):
        token = str(uuid.uuid4())  # captured: the same token after a replay
        self.send_confirmation(email, token)
        clicked = transparent_de.wait_for(self.confirm, timeout=60)  # durable wait for signal(...)
        if clicked != token:
            return self.reject(email)
        return self.activate(email)

    def send_confirmation(self, email, token):
        print(f"  -> confirmation mail to {email} with link ?token={token[:8]}...", flush=True)
        OUTBOX[email] = token
        return token

    def confirm(self, token):
        print(f"  <- {token[:8]}... clicked", flush=True)
        return token

    def activate(self, email):
        print(f"  account {email} activated", flush=True)
        return {"email": email, "active": True}

    def reject(self, email):
        print(f"  wrong token for {email}", flush=True)
        return {"email": email, "active": False}
