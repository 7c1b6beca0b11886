"""A step that fails twice, caught and retried by flow code in a loop, then succeeds."""
from _support import effect

EXPECT = "identical"
ARGS = ()


class Flow:
    __flow__ = "run"

    def run(self):
        errors = []
        for attempt in range(5):
            try:
                return [self.call(attempt), errors]
            except ConnectionError as e:
                errors.append(str(e))
        return None

    def call(self, attempt):
        effect("call", attempt)
        if attempt < 2:
            raise ConnectionError(f"refused on attempt {attempt}")
        return "ok"
