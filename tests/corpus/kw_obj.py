"""A step taking a keyword argument named obj (the trampoline's own parameter name)."""
from _support import effect

EXPECT = "identical"
ARGS = ()


class Flow:
    __flow__ = "run"

    def run(self):
        return self.put(obj="o", key="k")

    def put(self, obj, key):
        effect("put", obj, key)
        return obj + key
