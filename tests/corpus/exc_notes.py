"""A caught exception with notes (3.11+), its notes read by flow code."""
from _support import effect

EXPECT = "identical"
ARGS = ()


class Flow:
    __flow__ = "run"

    def run(self):
        try:
            self.risky()
        except RuntimeError as e:
            return self.log(str(e), list(getattr(e, "__notes__", [])))
        return None

    def risky(self):
        effect("risky")
        e = RuntimeError("failed")
        if hasattr(e, "add_note"):
            e.add_note("retry later")
        raise e

    def log(self, text, notes):
        effect("log", text)
        return [text, notes]
