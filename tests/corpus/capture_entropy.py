"""Distributions, a Random() generator, process time and uuids in flow code: replayed as drawn."""
import random
import time
import uuid

from _support import effect

EXPECT = "identical"
ENTROPY = True  # plain and journaled draw different values: compared by shape
ARGS = ()


class Flow:
    __flow__ = "run"

    def run(self):
        g = random.Random()
        values = [random.gammavariate(2.0, 1.0), random.betavariate(2, 3), g.random(), g.randint(1, 9)]
        values.append(str(uuid.uuid4()))
        values.append(time.process_time() >= 0)
        return self.keep(values)

    def keep(self, values):
        effect("keep")
        return values
