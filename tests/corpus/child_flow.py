"""A flow calling another flow's entry (a child flow), with steps before, inside and after it."""
from _support import effect

EXPECT = "identical"
ARGS = (4,)


class Shipping:
    __flow__ = "ship"

    def ship(self, n):
        label = self.label(n)
        return self.dispatch(label)

    def label(self, n):
        effect("label", n)
        return f"L{n}"

    def dispatch(self, label):
        effect("dispatch", label)
        return label + "-sent"


class Flow:
    __flow__ = "run"

    def run(self, n):
        order = self.order(n)
        shipped = Shipping().ship(order)
        return self.close(order, shipped)

    def order(self, n):
        effect("order", n)
        return n * 10

    def close(self, order, shipped):
        effect("close", order, shipped)
        return [order, shipped]
