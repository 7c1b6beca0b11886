"""The same call spelt differently (positional, keyword, default spelt out) on a replay."""
from _support import effect

EXPECT = "identical"
ARGS = (3,)

SPELLING = [0]


class Flow:
    __flow__ = "run"

    def run(self, x):
        SPELLING[0] += 1
        if SPELLING[0] % 2:
            a = self.add(x, 2)
        else:
            a = self.add(x=x)
        return self.add(a, y=2)

    def add(self, x, y=2):
        effect("add", x, y)
        return x + y
