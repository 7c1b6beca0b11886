"""random.shuffle and random.choice on data, then a step using the order."""
import random

from _support import effect

EXPECT = "identical"
ENTROPY = True  # plain and journaled draw different values: compared by shape
ARGS = ()


class Flow:
    __flow__ = "run"

    def run(self):
        deck = list(range(10))
        random.shuffle(deck)
        pick = random.choice(deck)
        return self.deal(deck, pick)

    def deal(self, deck, pick):
        effect("deal", pick)
        return [deck, pick]
