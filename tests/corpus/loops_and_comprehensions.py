"""Steps in loops, comprehensions, a generator expression and a lambda."""
from _support import effect

EXPECT = "identical"
ARGS = (4,)


class Flow:
    __flow__ = "run"

    def run(self, n):
        squares = [self.square(i) for i in range(n)]
        total = sum(self.square(i) for i in range(n))
        halve = lambda v: self.half(v)  # noqa: E731
        return [squares, total, halve(total), {k: self.square(k) for k in (1, 2)}]

    def square(self, i):
        effect("square", i)
        return i * i

    def half(self, v):
        effect("half", v)
        return v / 2
