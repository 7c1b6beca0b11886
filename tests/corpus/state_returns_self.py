"""A step returning self (a fluent chain): refused, a replay would chain on a copy."""
from _support import effect

EXPECT = "refused: TransparentDEError"
ARGS = ()


class Flow:
    __flow__ = "run"

    def run(self):
        return self.configure().execute()

    def configure(self):
        return self

    def execute(self):
        effect("execute")
        return "ran"
