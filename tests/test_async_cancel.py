"""A step task cancelled by the flow's own code (issue #16: "cancellation of a step task").

Found while writing the async crash sweep: the cancellation was not journaled as the step's
outcome, so the row stayed PENDING in a COMPLETE flow, and every replay of the flow started the
step's body again (a Retry, attempts + 1) until the cancellation landed again. Now it is the
step's journaled outcome (3.11+, where ``Task.cancelling()`` tells it from the flow itself being
cancelled), and a replay cancels the step again without running its body.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
from helpers import query

import transparent_de

SOURCE = """
import asyncio

STARTED = []


class Cancelling:
    __flow__ = ("run", "slow_flow")

    async def slow_flow(self):
        return await self.slow(7)

    async def run(self):
        task = asyncio.create_task(self.slow(1))
        await asyncio.sleep(0)  # not journaled: the task starts, writes its intent, awaits
        task.cancel()  # deterministic: always while slow() awaits its 50 ms
        try:
            await task
            out = "finished"
        except asyncio.CancelledError:
            out = "cancelled"
        return out, await self.fast(2)

    async def slow(self, x):
        STARTED.append(x)  # an effect before the first await (a request sent, say)
        await asyncio.sleep(0.05)
        return x

    async def fast(self, x):
        return x
"""


@pytest.mark.skipif(sys.version_info < (3, 11), reason="3.10 has no Task.cancelling(): not journaled there")
def test_a_step_cancelled_in_flight_is_not_run_again_by_a_replay(flow_module: Any, engine: Any) -> None:
    m = flow_module(SOURCE)
    assert transparent_de.run(m.Cancelling().run, flow_id="c1") == ("cancelled", 2)
    # The body started unless the cancel came while its intent was written (a server's round
    # trip, an fsync): either way it was cancelled once, and that is journaled.
    started = list(m.STARTED)
    assert started in ([1], [])
    (status,) = query(engine, "SELECT status FROM execution_log WHERE flow_id='c1' AND method_name='slow'")
    assert status == ("FAILED",)
    # A replay of the whole flow (what a crash just before the flow's last commit leaves):
    query(engine, "UPDATE flows SET status='PENDING', owner=NULL, lease_until=NULL WHERE flow_id='c1'")
    query(
        engine, "UPDATE execution_log SET status='PENDING', return_value=NULL WHERE flow_id='c1' AND step=0"
    )
    assert transparent_de.run(m.Cancelling().run, flow_id="c1") == ("cancelled", 2)
    rows = query(engine, "SELECT lineage, status, attempts FROM execution_log WHERE flow_id='c1' AND step>0")
    assert started == m.STARTED, "the replay started the cancelled step's body again"
    assert all(status != "PENDING" for _, status, _ in rows), rows


def test_cancelling_the_flow_itself_leaves_its_steps_resumable(flow_module: Any, engine: Any) -> None:
    """The flow's caller cancels it (or its loop shuts down): an interruption, not an outcome.
    The step in flight stays PENDING and runs again when the flow is resumed."""
    import asyncio

    m = flow_module(SOURCE)

    async def main() -> None:
        task = asyncio.ensure_future(transparent_de.run_async(m.Cancelling().slow_flow, flow_id="c2"))
        while not m.STARTED:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    (status,) = query(engine, "SELECT status FROM execution_log WHERE flow_id='c2' AND method_name='slow'")
    assert status == ("PENDING",)
    assert transparent_de.run(m.Cancelling().slow_flow, flow_id="c2") == 7  # resumed: run again
    assert m.STARTED == [7, 7]


ESCAPING = """
import asyncio

RUNS = []


class Escaping:
    __flow__ = {"entries": "run", "failure": "final"}

    async def run(self):
        RUNS.append(1)
        task = asyncio.create_task(self.slow())
        await asyncio.sleep(0)
        task.cancel()
        return await task  # the flow's own cancellation, not caught: it ends the flow

    async def slow(self):
        await asyncio.sleep(0.05)
        return "never"
"""


@pytest.mark.skipif(sys.version_info < (3, 11), reason="3.10 has no Task.cancelling()")
def test_a_cancellation_the_flow_lets_escape_ends_it_like_an_exception(flow_module: Any, engine: Any) -> None:
    """Not an interruption to resume (every recovery would end the same way): the run's outcome."""
    import asyncio

    m = flow_module(ESCAPING, name="escaping")
    with pytest.raises(asyncio.CancelledError):
        transparent_de.run(m.Escaping().run, flow_id="esc")
    assert {f.flow_id: f.status for f in engine.flows()} == {"esc": "FAILED"}
    with pytest.raises(transparent_de.errors.FlowFailedError, match="CancelledError"):  # journaled
        transparent_de.run(m.Escaping().run, flow_id="esc")
    assert m.RUNS == [1]
