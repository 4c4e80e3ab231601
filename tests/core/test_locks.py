"""Per-chat locks: one message of a chat at a time, in arrival order, keys forgotten when idle."""

from __future__ import annotations

import asyncio

from core.locks import ChatLocks


async def test_same_chat_runs_in_order_and_other_chats_in_parallel() -> None:
    locks = ChatLocks()
    order: list[str] = []
    gate = asyncio.Event()

    async def work(chat: str, name: str, wait: bool) -> None:
        async with locks.hold(chat):
            order.append(f"start {name}")
            if wait:
                await gate.wait()
            order.append(f"end {name}")

    first = asyncio.create_task(work("a", "a1", wait=True))
    await asyncio.sleep(0)
    second = asyncio.create_task(work("a", "a2", wait=False))
    other = asyncio.create_task(work("b", "b1", wait=False))
    await other
    assert order == ["start a1", "start b1", "end b1"]
    gate.set()
    await asyncio.gather(first, second)
    assert order[3:] == ["end a1", "start a2", "end a2"]
    assert len(locks) == 0


async def test_idle_keys_are_released_even_after_errors() -> None:
    locks = ChatLocks()
    for i in range(100):
        try:
            async with locks.hold(f"chat{i}"):
                raise RuntimeError("boom")
        except RuntimeError:
            pass
    assert len(locks) == 0


async def test_order_is_the_order_of_reservation_not_of_awaiting() -> None:
    locks = ChatLocks()
    order: list[int] = []

    async def work(i: int) -> None:
        ticket = locks.reserve("chat")
        # Simulate a database write whose duration differs per message.
        await asyncio.sleep(0.001 * (5 - i))
        async with ticket:
            order.append(i)

    await asyncio.gather(*(work(i) for i in range(5)))
    assert order == [0, 1, 2, 3, 4]
    assert len(locks) == 0


async def test_a_cancelled_waiter_does_not_block_the_chat() -> None:
    locks = ChatLocks()
    gate = asyncio.Event()
    done: list[str] = []

    async def first() -> None:
        async with locks.hold("chat"):
            await gate.wait()
            done.append("first")

    async def third() -> None:
        async with locks.hold("chat"):
            done.append("third")

    async def never_runs() -> None:
        async with locks.hold("chat"):
            done.append("cancelled one ran")

    t1 = asyncio.create_task(first())
    await asyncio.sleep(0)
    t_cancel = asyncio.create_task(never_runs())
    await asyncio.sleep(0)
    t2 = asyncio.create_task(third())
    await asyncio.sleep(0)
    t_cancel.cancel()
    gate.set()
    await asyncio.gather(t1, t2)
    assert done == ["first", "third"]
    assert t_cancel.cancelled()
    assert len(locks) == 0
