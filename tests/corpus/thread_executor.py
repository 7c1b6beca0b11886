"""A step called from an executor thread: refused (numbering would depend on timing)."""
import concurrent.futures

from _support import effect

EXPECT = "refused: TransparentDEError"
ARGS = ()


class Flow:
    __flow__ = "run"

    def run(self):
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            return pool.submit(lambda: self.work(1)).result()

    def work(self, x):
        effect("work", x)
        return x
