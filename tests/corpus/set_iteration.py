"""Loops and comprehensions over sets of strings in flow code: one order in every process."""
from _support import effect

EXPECT = "identical"
UNORDERED = True  # plain Python iterates sets in the hash seed's order
ARGS = ({"pears", "apples", "plums", "figs", "kiwis"},)


class Flow:
    __flow__ = "run"

    def run(self, fruit):
        tags = {"red", "green", "blue", "amber"}
        shipped = [self.ship(name) for name in fruit]
        for tag in tags:
            self.label(tag)
        pairs = {(t, len(t)) for t in frozenset(tags)}
        codes = [self.code(t, n) for t, n in pairs]
        mixed = [self.note(v) for v in {None, 3, "x"}]
        return [sorted(shipped), sorted(codes), sorted(mixed, key=str)]

    def ship(self, name):
        effect("ship", name)
        return name.upper()

    def label(self, tag):
        effect("label", tag)

    def code(self, t, n):
        effect("code", t, n)
        return f"{t}:{n}"

    def note(self, v):
        effect("note", v)
        return v
