"""Step identity under asyncio concurrency (transparent_de._lineage, issue #16).

Real event loops, real tasks, no mocks. A small harness plays the engine: ``h.step(label)`` is
a trampoline that reserves a slot synchronously at the call and returns a coroutine whose body
sleeps a random time, so steps finish (and tasks reach their calls) in an order that changes
with the seed. Every test that claims "the same whatever the timing" also asserts that the
timing did change between its runs, so it cannot pass by running one schedule only.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transparent_de._decisions import Decisions
from transparent_de._lineage import (
    Lineage,
    LineageError,
    Slot,
    current,
    key_sort,
    parse_ident,
    reserve,
    suspended,
)

HAS_TASKGROUP = hasattr(asyncio, "TaskGroup")
HAS_EAGER = hasattr(asyncio, "eager_task_factory")
SEEDS = range(10)


class Harness:
    """A stand-in engine: journals nothing, records which slot each logical call got."""

    def __init__(self, seed: int, scale: float = 0.003) -> None:
        self.rng = random.Random(seed)
        self.scale = scale
        self.slots: dict[str, Slot] = {}
        self.finished: list[str] = []

    def step(self, label: str) -> Coroutine[Any, Any, str]:
        slot = reserve()  # synchronously, at the call: before any await
        assert slot is not None, f"{label} was called outside a flow"
        assert label not in self.slots, f"logical call {label} made twice"
        self.slots[label] = slot
        return self._body(label)

    async def _body(self, label: str) -> str:
        with suspended():  # a step body is plain code
            await asyncio.sleep(self.rng.random() * self.scale)
        self.finished.append(label)
        return label

    async def pause(self) -> None:
        await asyncio.sleep(self.rng.random() * self.scale)


Flow = Callable[[Harness], Awaitable[Any]]


@dataclass
class Run:
    keys: dict[str, tuple[str, int]]  # logical call -> (lineage key, n)
    steps: dict[str, int]  # logical call -> global step number
    finished: list[str]
    assigned: dict[str, int]  # slot ident -> step, what the journal would hold
    value: Any = None
    lineage: Lineage | None = None
    made: dict[str, tuple[str, ...]] = field(default_factory=dict)


def run(
    flow: Flow,
    seed: int,
    *,
    recorded: dict[str, int] | None = None,
    setup: Callable[[asyncio.AbstractEventLoop], None] | None = None,
) -> Run:
    h = Harness(seed)

    async def main() -> Run:
        if setup is not None:
            setup(asyncio.get_running_loop())
        lineage = Lineage(flow_id=f"seed-{seed}", recorded=recorded)
        with lineage.bound():
            value = await flow(h)
        return Run(
            keys={label: (s.key, s.n) for label, s in h.slots.items()},
            steps={label: s.step for label, s in h.slots.items()},
            finished=h.finished,
            assigned=lineage.assigned(),
            value=value,
            lineage=lineage,
        )

    return asyncio.run(main())


def check(flow: Flow, seeds: range = SEEDS, **kwargs: Any) -> list[Run]:
    """Same keys on every seed, timing that did differ, and a replay that keeps every step."""
    runs = [run(flow, seed, **kwargs) for seed in seeds]
    assert len({tuple(r.finished) for r in runs}) > 1, "the delays never changed the completion order"
    for r in runs[1:]:
        assert r.keys == runs[0].keys
    for seed in seeds:  # replay run 0's journal under every other timing
        replay = run(flow, seed + 1000, recorded=runs[0].assigned, **kwargs)
        assert replay.steps == runs[0].steps
        assert replay.lineage is not None and replay.lineage.unclaimed() == {}
    return runs


# --------------------------------------------------------------------------- shapes


def test_gather_of_steps_reserves_in_the_calling_task_in_argument_order() -> None:
    async def flow(h: Harness) -> Any:
        return await asyncio.gather(*(h.step(f"s{i}") for i in range(8)))

    runs = check(flow)
    assert runs[0].keys == {f"s{i}": ("0", i + 1) for i in range(8)}
    assert runs[0].value == [f"s{i}" for i in range(8)]


def test_gather_of_helpers_numbers_tasks_by_creation_not_by_first_step() -> None:
    async def helper(h: Harness, i: int) -> None:
        await h.pause()  # the tasks reach their step in a random order
        await h.step(f"h{i}")

    async def flow(h: Harness) -> None:
        await asyncio.gather(*(helper(h, i) for i in range(8)))

    runs = check(flow)
    assert runs[0].keys == {f"h{i}": (f"0.{i + 1}", 1) for i in range(8)}


def test_interleaved_sequences_keep_their_ids_though_live_step_numbers_vary() -> None:
    async def seq(h: Harness, tag: str) -> None:
        for i in range(4):
            await h.pause()
            await h.step(f"{tag}{i}")

    async def flow(h: Harness) -> None:
        await h.step("first")
        await asyncio.gather(seq(h, "a"), seq(h, "b"), seq(h, "c"))
        await h.step("last")

    runs = check(flow)
    expected = {f"{tag}{i}": (f"0.{t + 1}", i + 1) for t, tag in enumerate("abc") for i in range(4)}
    assert runs[0].keys == {"first": ("0", 1), **expected, "last": ("0", 2)}
    # Reservation order (the live numbering) is timing: it did differ, so only the replay
    # mapping, not renumbering, can give a resumed flow its old step numbers.
    assert len({tuple(sorted(r.steps.items())) for r in runs}) > 1


def test_nested_gathers() -> None:
    async def leaf(h: Harness, path: str) -> None:
        await h.pause()
        await h.step(path)

    async def branch(h: Harness, path: str) -> None:
        await h.step(f"{path}/before")
        await asyncio.gather(*(leaf(h, f"{path}/{i}") for i in range(3)), h.step(f"{path}/direct"))

    async def flow(h: Harness) -> None:
        await asyncio.gather(branch(h, "x"), branch(h, "y"))

    runs = check(flow)
    keys = runs[0].keys
    assert keys["x/before"] == ("0.1", 1)
    assert keys["x/direct"] == ("0.1", 2)  # reserved in the branch's task, at the call
    assert keys["y/2"] == ("0.2.3", 1)
    assert keys["x/0"] == ("0.1.1", 1)


@pytest.mark.skipif(not HAS_TASKGROUP, reason="asyncio.TaskGroup is 3.11+")
def test_taskgroup() -> None:
    async def seq(h: Harness, tag: str) -> str:
        await h.pause()
        await h.step(f"{tag}1")
        await h.step(f"{tag}2")
        return tag

    async def flow(h: Harness) -> list[str]:
        async with asyncio.TaskGroup() as tg:  # type: ignore[attr-defined,unused-ignore]
            tasks = [tg.create_task(seq(h, tag)) for tag in "pqr"]
            tg.create_task(h.step("direct"))
        await h.step("after")
        return [t.result() for t in tasks]

    runs = check(flow)
    assert runs[0].keys["q2"] == ("0.2", 2)
    assert runs[0].keys["direct"] == ("0", 1)
    assert runs[0].keys["after"] == ("0", 2)


def test_create_task_awaited_later_interleaves_with_the_parent() -> None:
    async def background(h: Harness) -> None:
        for i in range(3):
            await h.pause()
            await h.step(f"bg{i}")

    async def flow(h: Harness) -> None:
        task = asyncio.create_task(background(h))
        for i in range(3):
            await h.pause()
            await h.step(f"fg{i}")
        await task

    runs = check(flow)
    assert runs[0].keys == {
        **{f"fg{i}": ("0", i + 1) for i in range(3)},
        **{f"bg{i}": ("0.1", i + 1) for i in range(3)},
    }


def test_a_helper_awaited_from_two_tasks_counts_in_each_caller() -> None:
    async def shared(h: Harness, tag: str) -> None:
        await h.step(f"{tag}.x")
        await h.pause()
        await h.step(f"{tag}.y")

    async def worker(h: Harness, tag: str) -> None:
        await h.pause()
        await h.step(f"{tag}.own")
        await shared(h, tag)  # a coroutine, not a task: same task, same counter

    async def flow(h: Harness) -> None:
        await asyncio.gather(worker(h, "a"), worker(h, "b"))
        await shared(h, "root")

    runs = check(flow)
    assert runs[0].keys["a.y"] == ("0.1", 3)
    assert runs[0].keys["b.own"] == ("0.2", 1)
    assert runs[0].keys["root.y"] == ("0", 2)


def test_as_completed_over_tasks() -> None:
    async def job(h: Harness, i: int) -> int:
        await h.pause()
        await h.step(f"job{i}")
        return i

    async def flow(h: Harness) -> None:
        tasks = [asyncio.create_task(job(h, i)) for i in range(5)]
        for k, next_done in enumerate(asyncio.as_completed(tasks)):
            await next_done
            await h.step(f"after{k}")  # by position: the value it got is timing, see Decisions

    runs = check(flow)
    assert runs[0].keys["job3"] == ("0.4", 1)
    assert runs[0].keys["after4"] == ("0", 5)


def test_replay_after_a_crash_keeps_recorded_numbers_and_gives_fresh_ones_above() -> None:
    async def seq(h: Harness, tag: str) -> None:
        for i in range(5):
            await h.pause()
            await h.step(f"{tag}{i}")

    async def flow(h: Harness) -> None:
        await asyncio.gather(seq(h, "a"), seq(h, "b"))

    live = run(flow, 1)
    crashed = {ident: step for ident, step in live.assigned.items() if step <= 6}  # what was journaled
    replay = run(flow, 2, recorded=crashed)
    by_ident = {f"{k}:{n}": label for label, (k, n) in live.keys.items()}
    for ident, step in crashed.items():
        assert replay.steps[by_ident[ident]] == step
    fresh = [s for ident, s in replay.assigned.items() if ident not in crashed]
    assert min(fresh) == 7 and len(set(replay.assigned.values())) == len(replay.assigned)
    for tag in "ab":  # within a task, numbers grow with n
        steps = [replay.steps[f"{tag}{i}"] for i in range(5)]
        assert steps == sorted(steps)


def test_replay_with_unreserved_slot_reports_it() -> None:
    async def flow(h: Harness) -> None:
        await h.step("only")

    replay = run(flow, 0, recorded={"0:1": 1, "0.1:1": 2})
    assert replay.lineage is not None and replay.lineage.unclaimed() == {"0.1:1": 2}
    assert replay.steps == {"only": 1}


# --------------------------------------------------------------------------- decisions


def _racing_flow(decisions: Decisions, mode: str) -> Flow:
    async def job(h: Harness, i: int) -> int:
        await h.pause()
        await h.step(f"job{i}")
        return i

    async def flow(h: Harness) -> list[int]:
        order: list[int] = []
        if mode == "wait":
            tasks = [job(h, i) for i in range(5)]
            done, pending = await decisions.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            order = sorted(t.result() for t in done)
            await h.step(f"winner{order}")  # the arguments depend on the race
            await asyncio.gather(*pending)
        else:
            for next_done in decisions.as_completed([job(h, i) for i in range(5)]):
                i = await next_done
                order.append(i)
                await h.step(f"after{i}")
        return order

    return flow


@pytest.mark.parametrize("mode", ["wait", "as_completed"])
def test_decisions_replay_the_race_as_it_was_decided(mode: str) -> None:
    lives = []
    live_events: list[tuple[Slot, tuple[str, ...]]] = []
    for seed in SEEDS:
        decisions = Decisions(on_record=lambda slot, outcome: live_events.append((slot, outcome)))
        r = run(_racing_flow(decisions, mode), seed)
        r.made = dict(decisions.made)
        lives.append(r)
    assert [(s.ident, o) for s, o in live_events] == [item for r in lives for item in r.made.items()]
    assert len({tuple(r.value) for r in lives}) > 1, "the race was never decided differently"
    live = lives[0]
    recorded_live: list[tuple[Slot, tuple[str, ...]]] = []
    for seed in SEEDS:
        decisions = Decisions(
            live.made, on_record=lambda slot, outcome: recorded_live.append((slot, outcome))
        )
        replay = run(_racing_flow(decisions, mode), seed + 1000, recorded=live.assigned)
        assert replay.value == live.value
        assert replay.steps == live.steps  # the labels (arguments) and their step numbers
        assert decisions.made == live.made
    assert recorded_live == []  # every decision was replayed, none decided again


def test_decision_recorded_for_another_task_is_refused() -> None:
    async def flow(h: Harness) -> None:
        decisions = Decisions({"0:2": ("0.9",)})  # 0:1 is the step's own slot
        await decisions.wait([h.step("a")])

    with pytest.raises(LineageError, match=r"task\(s\) 0.9 finished"):
        run(flow, 0)


def test_decisions_outside_a_flow_are_refused() -> None:
    async def main() -> None:
        with pytest.raises(LineageError, match="async flow code"):
            Decisions().wait([])  # type: ignore[unused-coroutine]  # raises before making one

    asyncio.run(main())


# --------------------------------------------------------------------------- the task factory


def test_a_user_task_factory_is_composed_and_restored() -> None:
    made: list[str] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future[Any]:
        made.append(getattr(coro, "__name__", "?"))
        return asyncio.Task(coro, loop=loop, **kwargs)

    async def helper(h: Harness, i: int) -> None:
        await h.pause()
        await h.step(f"h{i}")

    async def flow(h: Harness) -> None:
        loop = asyncio.get_running_loop()
        assert loop.get_task_factory() is not factory  # ours, wrapping it
        await asyncio.gather(*(helper(h, i) for i in range(3)))

    def setup(loop: asyncio.AbstractEventLoop) -> None:
        loop.set_task_factory(factory)

    runs = check(flow, setup=setup)
    assert made[:3] == ["helper"] * 3
    assert runs[0].keys["h2"] == ("0.3", 1)

    async def after() -> None:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(factory)
        with Lineage().bound():
            pass
        assert loop.get_task_factory() is factory
        loop.set_task_factory(None)
        with Lineage().bound():
            pass
        assert loop.get_task_factory() is None

    asyncio.run(after())


def test_two_flows_on_one_loop_have_their_own_lineages() -> None:
    async def one(tag: str, h: Harness) -> dict[str, tuple[str, int]]:
        lineage = Lineage(flow_id=tag)
        with lineage.bound():
            await asyncio.gather(*(h.step(f"{tag}{i}") for i in range(3)))
            task = asyncio.create_task(h.pause())
            await task
            assert lineage.key_of(task) == "0.4"
        return {label: (s.key, s.n) for label, s in h.slots.items()}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = await asyncio.gather(one("a", Harness(1)), one("b", Harness(2)))
        assert a == {f"a{i}": ("0", i + 1) for i in range(3)}
        assert b == {f"b{i}": ("0", i + 1) for i in range(3)}
        assert loop.get_task_factory() is None

    asyncio.run(main())


@pytest.mark.skipif(not HAS_EAGER, reason="eager task factories are 3.12+")
def test_eager_task_factory_gives_the_same_keys() -> None:
    async def seq(h: Harness, tag: str) -> None:
        await h.step(f"{tag}0")  # runs inside create_task when eager
        await h.pause()
        await h.step(f"{tag}1")
        await asyncio.gather(*(h.step(f"{tag}/g{i}") for i in range(2)))

    async def flow(h: Harness) -> None:
        await asyncio.gather(seq(h, "a"), seq(h, "b"))
        inner = asyncio.create_task(seq(h, "c"))
        await h.step("root")
        await inner

    def eager(loop: asyncio.AbstractEventLoop) -> None:
        loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined,unused-ignore]

    plain = check(flow)
    eagerly = check(flow, setup=eager)
    assert eagerly[0].keys == plain[0].keys
    assert plain[0].keys["c1"] == ("0.3", 2)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="create_task(context=) is 3.11+")
def test_a_context_passed_to_create_task_is_copied_not_changed() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def child(h: Harness) -> str:
        await h.step("child")
        return var.get()

    async def flow(h: Harness) -> str:
        ctx = contextvars.copy_context()
        ctx.run(var.set, "mine")
        task = asyncio.get_running_loop().create_task(child(h), context=ctx)  # type: ignore[call-arg,unused-ignore]
        value = await task
        node = ctx.run(current)  # the caller's context still holds the flow's root, not the child
        assert node is not None and node.key == "0"
        return value

    r = run(flow, 0)
    assert r.value == "mine"
    assert r.keys["child"] == ("0.1", 1)


def test_wait_for_wraps_in_a_task_before_3_12_only() -> None:
    """Pins a cross-version trap the engine must handle (see the module docstring)."""

    async def inner(h: Harness) -> None:
        await h.step("inside")

    async def flow(h: Harness) -> None:
        await asyncio.wait_for(inner(h), timeout=5)

    expected = ("0", 1) if sys.version_info >= (3, 12) else ("0.1", 1)
    assert run(flow, 0).keys["inside"] == expected


# --------------------------------------------------------------------------- misuse is refused


def test_outside_a_flow_and_in_step_bodies_nothing_is_numbered() -> None:
    async def main() -> None:
        assert reserve() is None and current() is None
        lineage = Lineage()
        with lineage.bound():
            assert current() is lineage.root
            with suspended():
                assert reserve() is None
                plain = asyncio.create_task(asyncio.sleep(0))  # a step body's task: no lineage
            numbered = asyncio.create_task(asyncio.sleep(0))
            await asyncio.gather(plain, numbered)
            assert lineage.key_of(plain) is None and lineage.key_of(numbered) == "0.1"
            assert reserve() == Slot("0", 1, 1)

    asyncio.run(main())


def test_a_step_from_a_thread_is_refused() -> None:
    async def flow(h: Harness) -> None:
        await asyncio.to_thread(reserve)

    with pytest.raises(LineageError, match="outside the flow's tasks"):
        run(flow, 0)


def test_a_task_created_without_the_factory_is_refused() -> None:
    async def inner(h: Harness) -> None:
        await h.step("bypass")

    async def flow(h: Harness) -> None:
        await asyncio.Task(inner(h))  # shares the root's node: its counter would be shared too

    with pytest.raises(LineageError, match="created without the flow's task factory"):
        run(flow, 0)


def test_a_task_created_from_a_loop_callback_cannot_take_steps() -> None:
    async def flow(h: Harness) -> None:
        loop = asyncio.get_running_loop()
        made: asyncio.Future[asyncio.Task[Any]] = loop.create_future()

        async def late() -> None:
            await h.step("late")

        loop.call_soon(lambda: made.set_result(asyncio.ensure_future(late())))
        await (await made)

    with pytest.raises(LineageError, match="no lineage: it was created outside"):
        run(flow, 0)


def test_a_task_left_running_after_the_flow_returns() -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def straggler() -> None:
            await gate.wait()
            reserve()

        lineage = Lineage(flow_id="f1")
        with lineage.bound():
            task = asyncio.create_task(straggler())
            await asyncio.sleep(0)
        assert lineage.unfinished() == ["0.1"]
        gate.set()
        with pytest.raises(
            LineageError, match=r"flow f1, task 0\.1: a step was called after the flow returned"
        ):
            await task

    asyncio.run(main())


def test_bound_needs_a_task_and_is_entered_once() -> None:
    with pytest.raises(LineageError, match="running asyncio task"), Lineage().bound():
        pass

    async def twice() -> None:
        lineage = Lineage()
        with lineage.bound():
            pass
        with pytest.raises(LineageError, match="bound once"), lineage.bound():
            pass

    asyncio.run(twice())


@pytest.mark.parametrize(
    ("recorded", "next_step", "match"),
    [
        ({"0:1": 1, "0.1:1": 1}, None, "step 1 to two slots"),
        ({"0:0": 1}, None, "not a lineage slot"),
        ({"0.01:1": 1}, None, "not a lineage slot"),
        ({"0:1": 0}, None, "has step 0"),
        ({"0:1": 4}, 3, "not above the highest recorded step 4"),
    ],
)
def test_a_damaged_journal_mapping_is_refused(
    recorded: dict[str, int], next_step: int | None, match: str
) -> None:
    with pytest.raises(LineageError, match=match):
        Lineage(recorded=recorded, next_step=next_step)


def test_next_step_leaves_room_for_rows_without_a_slot() -> None:
    async def main() -> None:
        with Lineage(recorded={"0:1": 1}, next_step=5).bound():
            assert reserve() == Slot("0", 1, 1)
            assert reserve() == Slot("0", 2, 5)

    asyncio.run(main())


def test_idents_and_key_order() -> None:
    assert parse_ident("0.12.3:7") == ("0.12.3", 7)
    assert Slot("0.12.3", 7, 9).ident == "0.12.3:7"
    assert sorted(["0.10", "0.2", "0", "0.2.1"], key=key_sort) == ["0", "0.2", "0.2.1", "0.10"]
    with pytest.raises(ValueError, match="not a lineage slot"):
        parse_ident("1:1")


# --------------------------------------------------------------------------- random programs

Tree = tuple[Any, ...]
KINDS = ["seq", "gather", "spawn"] + (["group"] if HAS_TASKGROUP else [])
trees = st.recursive(
    st.just(("step",)),
    lambda kids: st.tuples(st.sampled_from(KINDS), st.lists(kids, min_size=1, max_size=4)),
    max_leaves=16,
)


async def execute(h: Harness, node: Tree, path: str) -> None:
    """Interpret a random program: every leaf is one logical step call, named by its path."""
    kind = node[0]
    await h.pause()
    if kind == "step":
        await h.step(path)
        return
    children = [(child, f"{path}/{i}") for i, child in enumerate(node[1])]
    if kind == "seq":
        for child, sub in children:
            await execute(h, child, sub)
    elif kind == "gather":  # leaves are called as steps here (slots in this task), others as helpers
        await asyncio.gather(*(h.step(sub) if c == ("step",) else execute(h, c, sub) for c, sub in children))
    elif kind == "spawn":
        tasks = [asyncio.create_task(execute(h, c, sub)) for c, sub in children]
        await h.step(f"{path}/mid")
        for task in reversed(tasks):
            await task
    else:
        async with asyncio.TaskGroup() as tg:  # type: ignore[attr-defined,unused-ignore]
            for child, sub in children:
                tg.create_task(execute(h, child, sub))


class _Model:
    """One task of the expected program: what :func:`execute` must give, from the tree alone."""

    def __init__(self, key: str, keys: dict[str, tuple[str, int]]) -> None:
        self.key, self.keys, self.calls, self.children = key, keys, 0, 0

    def call(self, label: str) -> None:
        self.calls += 1
        self.keys[label] = (self.key, self.calls)

    def task(self) -> _Model:
        self.children += 1
        return _Model(f"{self.key}.{self.children}", self.keys)

    def run(self, node: Tree, path: str) -> None:
        kind = node[0]
        if kind == "step":
            self.call(path)
            return
        children = [(child, f"{path}/{i}") for i, child in enumerate(node[1])]
        if kind == "seq":
            for child, sub in children:
                self.run(child, sub)
            return
        if kind == "gather":  # leaves reserve here at the call; then every awaitable becomes a task
            for child, sub in children:
                if child == ("step",):
                    self.call(sub)
        tasks = [(self.task(), child, sub) for child, sub in children]
        if kind == "spawn":
            self.call(f"{path}/mid")
        for task, child, sub in tasks:
            if not (kind == "gather" and child == ("step",)):
                task.run(child, sub)


def expected_keys(tree: Tree) -> dict[str, tuple[str, int]]:
    keys: dict[str, tuple[str, int]] = {}
    _Model("0", keys).run(tree, "r")
    return keys


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees, seeds=st.tuples(st.integers(0, 2**32), st.integers(0, 2**32)), eager=st.booleans())
def test_random_programs_get_the_same_ids_under_any_timing(
    tree: Tree, seeds: tuple[int, int], eager: bool
) -> None:
    def flow(h: Harness) -> Awaitable[None]:
        return execute(h, tree, "r")

    def setup(loop: asyncio.AbstractEventLoop) -> None:
        if eager and HAS_EAGER:
            loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined,unused-ignore]

    first = run(flow, seeds[0], setup=setup)
    second = run(flow, seeds[1])
    assert first.keys == second.keys == expected_keys(tree)
    replay = run(flow, seeds[1] + 1, recorded=first.assigned, setup=setup)
    assert replay.steps == first.steps
