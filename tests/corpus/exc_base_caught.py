"""A step raising a BaseException that flow code catches: an outcome, replayed, not re-run."""
from _support import effect

EXPECT = "identical"
ARGS = ()


class Stop(BaseException):
    pass


class Flow:
    __flow__ = "run"

    def run(self):
        try:
            self.halt()
        except Stop as e:
            return self.after(str(e))
        return None

    def halt(self):
        effect("halt")
        raise Stop("halted")

    def after(self, why):
        effect("after", why)
        return why
