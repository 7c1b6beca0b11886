"""Private helpers that call steps, a match statement, closures and a while loop between steps."""
from _support import effect

EXPECT = "identical"
ARGS = ({"kind": "order", "items": [3, 1, 2]},)


class Flow:
    __flow__ = "run"

    def run(self, event):
        match event:
            case {"kind": "order", "items": [*items]}:
                total = self._sum(items)
            case _:
                total = 0
        scale = 2
        bump = lambda v: v * scale  # noqa: E731 - a closure over a local, called between steps
        i, acc = 0, []
        while i < 3:
            acc.append(self.tick(bump(i)))
            i += 1
        return [total, acc]

    def _sum(self, items):
        return sum(self.price(x) for x in sorted(items))

    def price(self, x):
        effect("price", x)
        return x * 100

    def tick(self, v):
        effect("tick", v)
        return v + 1
