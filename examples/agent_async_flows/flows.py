"""An async research agent: each tool call is a step, several run at once, a crash pays for none twice.

Every tool call appends one line to the file named by ``AGENT_CALLS`` (an ``O_APPEND`` write,
which a kill cannot lose), so the example can count executions across processes.
"""

import asyncio
import os
import random


def record(call):
    """Count one execution of a tool call (in a file: the count survives the process)."""
    path = os.environ.get("AGENT_CALLS")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (call + "\n").encode())
        finally:
            os.close(fd)


async def slow_io():
    """Stands in for a network call: a random latency, so parallel calls finish in any order."""
    await asyncio.sleep(random.uniform(0.02, 0.2))


class ResearchAgent:
    __flow__ = "run"

    async def run(self, question, wait=1.0):
        plan = await self.plan(question)  # a step
        docs = await asyncio.gather(*(self.search(q) for q in plan))  # parallel steps
        await asyncio.sleep(wait)  # a durable timer (the search API's rate limit, say)
        if hasattr(asyncio, "TaskGroup"):  # CPython 3.11+
            async with asyncio.TaskGroup() as tg:
                summary = tg.create_task(self.summarize(docs))
                review = tg.create_task(self.review(docs))
            summary, review = summary.result(), review.result()
        else:  # 3.10: the same two parallel steps with gather
            summary, review = await asyncio.gather(self.summarize(docs), self.review(docs))
        return self.answer(question, summary, review)  # a sync step, journaled too

    async def plan(self, question):
        await slow_io()
        record("plan")
        return [f"{question} / {aspect}" for aspect in ("history", "design", "failure modes")]

    async def search(self, query):
        await slow_io()
        record(f"search {query}")
        return {"query": query, "hits": random.randint(3, 30)}  # journaled: the same after a replay

    async def summarize(self, docs):
        await slow_io()
        record("summarize")
        return f"{sum(d['hits'] for d in docs)} hits in {len(docs)} searches"

    async def review(self, docs):
        await slow_io()
        record("review")
        return "ok" if all(d["hits"] for d in docs) else "thin"

    def answer(self, question, summary, review):
        record("answer")
        return {"question": question, "summary": summary, "review": review}
