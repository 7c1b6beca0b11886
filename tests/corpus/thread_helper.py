"""A helper run in a thread that calls a step, while the flow goes on: the flow fails."""
import threading

from _support import effect

EXPECT = "refused: TransparentDEError"
ARGS = ()


class Flow:
    __flow__ = "run"

    def run(self):
        t = threading.Thread(target=self._helper)
        t.start()
        t.join()
        return self.work(2)

    def _helper(self):
        try:
            self.work(1)
        except Exception:
            pass

    def work(self, x):
        effect("work", x)
        return x
