"""A flow with several entries calling another of its entries: a step."""
from _support import effect

EXPECT = "identical"
ARGS = (4,)


class Flow:
    __flow__ = True

    def run(self, x):
        return [self.double(x), self.double(x + 1)]

    def double(self, x):
        effect("double", x)
        return 2 * x
