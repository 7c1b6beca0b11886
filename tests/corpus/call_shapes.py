"""Positional-only, keyword-only, defaults, *args and **kwargs forwarding into steps."""
from _support import effect

EXPECT = "identical"
ARGS = (2,)


class Flow:
    __flow__ = "run"

    def run(self, n):
        a = self.posonly(n, 3)
        b = self.kwonly(n, scale=4)
        c = self.star(*range(n), **{"tag": "x"})
        d = self.defaults(n)
        return [a, b, c, d]

    def posonly(self, x, y, /):
        effect("posonly", x, y)
        return x * y

    def kwonly(self, x, *, scale, offset=1):
        effect("kwonly", x, scale, offset)
        return x * scale + offset

    def star(self, *args, **kwargs):
        effect("star", args, sorted(kwargs.items()))
        return [list(args), kwargs]

    def defaults(self, x, y=10, z=None):
        effect("defaults", x, y, z)
        return (x, y, z)
