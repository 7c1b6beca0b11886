"""A caught exception with a cause, passed to a later step (its fingerprint must match)."""
from _support import effect

EXPECT = "identical"
ARGS = ()


class Flow:
    __flow__ = "run"

    def run(self):
        try:
            self.parse()
        except ValueError as e:
            cause = e.__cause__
            return self.report(e, type(cause).__name__, cause.args)
        return None

    def parse(self):
        effect("parse")
        try:
            {}["missing"]
        except KeyError as inner:
            raise ValueError("bad input") from inner

    def report(self, e, cause_type, cause_args):
        effect("report", str(e))
        return [str(e), cause_type, list(cause_args)]
