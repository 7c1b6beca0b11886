"""A caught exception whose __init__ takes other arguments than its args."""
from _support import effect

EXPECT = "identical"
ARGS = (3,)


class Coded(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class Flow:
    __flow__ = "run"

    def run(self, n):
        try:
            self.fetch(n)
        except Coded as e:
            return self.record(e.code, str(e), e.args)
        return None

    def fetch(self, n):
        effect("fetch", n)
        raise Coded(404 + n, "not found")

    def record(self, code, text, args):
        effect("record", code)
        return [code, text, list(args)]
