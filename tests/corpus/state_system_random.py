"""random.SystemRandom() in flow code: refused (nothing to record)."""
import random

from _support import effect

EXPECT = "refused: TransparentDEError"
ARGS = ()


class Flow:
    __flow__ = "run"

    def run(self):
        token = random.SystemRandom().getrandbits(64)
        return self.use(token)

    def use(self, token):
        effect("use")
        return token
