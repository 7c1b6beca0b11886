"""A background flow sleeping inside try/except ValueError: it parks (no handler runs)."""
import time

from _support import effect, flow_effect

EXPECT = "identical"
ARGS = ()
MODE = "start"


class Flow:
    __flow__ = "run"

    def run(self):
        try:
            self.first()
            time.sleep(1.2)
        except ValueError:
            flow_effect("never")
        return self.second()

    def first(self):
        effect("first")
        return 1

    def second(self):
        effect("second")
        return "done"
