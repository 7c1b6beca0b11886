"""A caught exception holding an unpicklable attribute: `except HttpError` must still match."""
import threading

from _support import effect

EXPECT = "identical"
ARGS = ()


class HttpError(Exception):
    def __init__(self, status):
        super().__init__(f"status {status}")
        self.status = status
        self.conn = threading.Lock()


class Flow:
    __flow__ = "run"

    def run(self):
        try:
            self.call()
        except HttpError as e:
            return self.fallback(e.status)
        return "unreachable"

    def call(self):
        effect("call")
        raise HttpError(503)

    def fallback(self, status):
        effect("fallback", status)
        return f"fallback after {status}"
