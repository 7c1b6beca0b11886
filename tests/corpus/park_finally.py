"""A background flow sleeping inside try/finally: the finally runs once, after the sleep."""
import time

from _support import effect, flow_effect

EXPECT = "identical"
ARGS = ()
MODE = "start"


class Flow:
    __flow__ = "run"

    def run(self):
        self.reserve()
        try:
            time.sleep(0.5)
        finally:
            flow_effect("release")
        return self.charge()

    def reserve(self):
        effect("reserve")
        return 1

    def charge(self):
        effect("charge")
        return "charged"
