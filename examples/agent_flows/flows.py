"""A small research agent: each model call is a step, so a crash never pays for it twice."""

import os
import random
import signal

MODEL_CALLS = []  # calls this process made to the (fake) model


class FakeModel:
    """Stands in for an LLM: slow, costly and non-deterministic. No network."""

    def complete(self, prompt):
        MODEL_CALLS.append(prompt)
        return f"{prompt.split(':', 1)[0]} -> idea #{random.randint(1000, 9999)}"


class ResearchAgent:
    __flow__ = "run"

    def run(self, question, rounds=3):
        notes = []
        for i in range(rounds):
            notes.append(self.think(f"round {i}: {question}", notes))
            if i == 1:
                self.checkpoint_hook(i)
        return self.answer(question, notes)

    def think(self, prompt, notes):  # a step: its (random) answer is journaled
        return FakeModel().complete(prompt)

    def checkpoint_hook(self, i):
        if os.environ.get("AGENT_CRASH"):
            print(f"  agent process killed with SIGKILL after round {i}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return i

    def answer(self, question, notes):
        return {"question": question, "notes": notes, "model_calls_this_process": len(MODEL_CALLS)}
