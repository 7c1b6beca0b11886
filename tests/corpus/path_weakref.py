"""A step called through weakref.proxy(self) and through type(self).step(self, ...)."""
import weakref

from _support import effect

EXPECT = "identical"
ARGS = ()


class Flow:
    __flow__ = "run"

    def run(self):
        proxy = weakref.proxy(self)
        return [proxy.step(1), type(self).step(self, 2), self.step.__func__(self, 3), self.step(4)]

    def step(self, x):
        effect("step", x)
        return x
