"""A set of strings iterated through sorted(): the same order in every process."""
from _support import effect

EXPECT = "identical"
ARGS = ()


class Flow:
    __flow__ = "run"

    def run(self):
        tags = self.tags()
        return [self.tag(t) for t in sorted(tags)]

    def tags(self):
        effect("tags")
        return {"red", "green", "blue", "cyan", "magenta"}

    def tag(self, t):
        effect("tag", t)
        return t.upper()
