"""Onboarding: a welcome now, a reminder later. Plain Python: ``time.sleep`` is a durable timer."""

import time

SENT = []  # what this process sent, for the example's own check


class Onboarding:
    __flow__ = "run"  # run() starts a flow; the other public methods are its steps

    def run(self, user, delay):
        self.send_welcome(user)
        time.sleep(delay)  # journaled: after a crash only the rest is slept; parked in the background
        self.send_reminder(user)
        return f"onboarded {user}"

    def send_welcome(self, user):
        print(f"  -> welcome mail to {user}", flush=True)
        SENT.append(("welcome", user))
        return True

    def send_reminder(self, user):
        print(f"  -> reminder mail to {user}", flush=True)
        SENT.append(("reminder", user))
        return True
