"""Steps reached through getattr, the class attribute, a dispatch table and methodcaller."""
import operator

from _support import effect

EXPECT = "identical"
ARGS = (2,)


class Flow:
    __flow__ = "run"

    def __init__(self):
        self.table = {"a": self.alpha}

    def run(self, x):
        out = [getattr(self, "alpha")(x), Flow.beta(self, x), self.table["a"](x + 1)]
        out.append(operator.methodcaller("beta", x + 2)(self))
        return out

    def alpha(self, x):
        effect("alpha", x)
        return x * 10

    def beta(self, x):
        effect("beta", x)
        return -x
