"""super().step() into a base class that is not a flow, and an override."""
from _support import effect

EXPECT = "identical"
ARGS = (5,)


class Base:
    def price(self, x):
        effect("base.price", x)
        return x * 2


class Flow(Base):
    __flow__ = "run"

    def run(self, x):
        return [self.price(x), super().price(x)]

    def price(self, x):
        effect("flow.price", x)
        return x + 1
