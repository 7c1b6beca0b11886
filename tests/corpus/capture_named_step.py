"""Steps named time and sleep next to the captured time.time() and the durable time.sleep()."""
import time

from _support import effect

EXPECT = "identical"
ARGS = ()


class Flow:
    __flow__ = "run"

    def run(self):
        started = time.time()
        label = self.time()
        time.sleep(0.01)
        self.sleep()
        return [label, isinstance(started, float), time.time() >= started]

    def time(self):
        effect("time-step")
        return "t"

    def sleep(self):
        effect("sleep-step")
        return "s"
