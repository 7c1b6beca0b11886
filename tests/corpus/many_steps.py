"""Three hundred steps in one flow, each depending on the previous result."""
from _support import effect

EXPECT = "identical"
ARGS = (300,)


class Flow:
    __flow__ = "run"

    def run(self, n):
        value = 1
        for i in range(n):
            value = self.mix(i, value)
        return value

    def mix(self, i, value):
        effect("mix", i)
        return (value * 31 + i) % 1_000_003
