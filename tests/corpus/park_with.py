"""A background flow waiting inside a with block: __exit__ runs once, where plain Python runs it."""
import time

from _support import effect, flow_effect

EXPECT = "identical"
ARGS = ()
MODE = "start"


class Held:
    def __enter__(self):
        flow_effect("enter")
        return self

    def __exit__(self, *exc):
        flow_effect("exit")
        return False


class Flow:
    __flow__ = "run"

    def run(self):
        with Held():
            time.sleep(0.5)
            value = self.inside()
        return self.after(value)

    def inside(self):
        effect("inside")
        return 3

    def after(self, value):
        effect("after", value)
        return value * 2
