"""Lease times come from the database's clock: a replica whose own clock is off (ahead,
behind, or stepped while it runs) never takes a claim or a chat another replica holds live."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from sqlalchemy import text

import core.inbox
from core.app import Core
from core.db.models import utcnow
from core.inbox import Inbox
from core.types import ChatRef, IncomingMessage, Sender

LEASE = 5.0
SKEW = timedelta(seconds=2 * LEASE)  # twice the lease: every live lease looks run out
_ids = itertools.count(1)


def message(chat: str = "c1") -> IncomingMessage:
    n = next(_ids)
    return IncomingMessage(
        chat=ChatRef("test", chat),
        sender=Sender("u1", "Alice"),
        event_key=f"test:clock:{n}",
        text=f"m{n}",
    )


class Clock:
    """A host's clock, `off` from the true time (it may be stepped while a test runs)."""

    def __init__(self, off: timedelta = timedelta(0)) -> None:
        self.off = off

    def __call__(self) -> datetime:
        return utcnow() + self.off


class Replica:
    """An Inbox working as in a process on a host whose clock is `clock`: the inbox module's
    own clock (`utcnow`) reads `clock` while it works."""

    def __init__(self, core: Core, clock: Clock) -> None:
        self.inbox = Inbox(core.store.db, f"w-{next(_ids)}", LEASE)
        self.clock = clock

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inbox, name)
        if not inspect.iscoroutinefunction(method):
            return method

        async def on_this_host(*args: Any, **kwargs: Any) -> Any:
            with mock.patch.object(core.inbox, "utcnow", self.clock):
                return await method(*args, **kwargs)

        return on_this_host


@pytest.fixture
def shared(core: Core) -> Core:
    if not core.store.db.shared:
        pytest.skip("several replicas share a PostgreSQL database")
    return core


# (the holder's clock, the taker's clock, whether the taker's clock steps ahead after its
# first use)
CLOCKS: dict[str, tuple[timedelta, timedelta, bool]] = {
    "taker-ahead": (timedelta(0), SKEW, False),
    "holder-behind": (-SKEW, timedelta(0), False),
    "taker-stepped-ahead": (timedelta(0), timedelta(0), True),
}


def replicas(core: Core, clocks: str) -> tuple[Replica, Replica, Callable[[], None]]:
    """The holder, the taker, and what steps the taker's clock (when this case does)."""
    holder_off, taker_off, stepped = CLOCKS[clocks]
    taker_clock = Clock(taker_off)

    def step() -> None:
        if stepped:
            taker_clock.off = SKEW

    return Replica(core, Clock(holder_off)), Replica(core, taker_clock), step


@pytest.mark.parametrize("clocks", list(CLOCKS))
async def test_a_replica_whose_clock_is_off_does_not_claim_an_event_another_holds(
    shared: Core, clocks: str
) -> None:
    holder, taker, step = replicas(shared, clocks)
    event_id = await holder.record(message())
    assert event_id is not None
    assert await taker.claim_abandoned(["test"]) == []
    step()
    assert await taker.claim_abandoned(["test"]) == []
    # Renewed by its holder, the claim stays its holder's.
    await holder.renew([event_id], [])
    assert await taker.claim_abandoned(["test"]) == []
    # Given back, the event is the taker's to claim: the clocks only ever kept it out.
    await holder.release([event_id])
    assert [e.id for e in await taker.claim_abandoned(["test"])] == [event_id]


@pytest.mark.parametrize("clocks", list(CLOCKS))
async def test_a_replica_whose_clock_is_off_does_not_take_a_chat_another_holds(
    shared: Core, clocks: str
) -> None:
    holder, taker, step = replicas(shared, clocks)
    first, settings = await holder.record_and_take(message())
    assert first is not None and settings is not None
    # Its answer stored, the holder still holds the chat's turn (until it releases it).
    await holder.finish(first, "done")
    second, settings = await taker.record_and_take(message())
    assert second is not None and settings is None
    step()
    assert await taker.try_acquire_chat("test:c1", None, second) is None
    await holder.renew([], ["test:c1"])
    assert await taker.try_acquire_chat("test:c1", None, second) is None
    # Released, the chat is the taker's: the clocks only ever kept it out.
    await holder.release_chat("test:c1")
    assert await taker.try_acquire_chat("test:c1", None, second) is not None


async def test_an_inbox_given_a_clock_that_is_off_keeps_the_servers_time(shared: Core) -> None:
    """`clock` plays no part in leases on PostgreSQL: the server's clock does."""
    holder = Inbox(shared.store.db, "w-true", LEASE)
    ahead = Inbox(shared.store.db, "w-ahead", LEASE, clock=Clock(SKEW))
    async with shared.engine.connect() as conn:
        server = (await conn.execute(text("SELECT clock_timestamp()"))).scalar_one()
    assert abs(await ahead.now() - server) < timedelta(seconds=1)
    event_id = await holder.record(message())
    assert await ahead.claim_abandoned(["test"]) == []
    await holder.release([event_id] if event_id else [])
    assert len(await ahead.claim_abandoned(["test"])) == 1


async def test_on_sqlite_the_inboxs_clock_is_the_databases(core: Core) -> None:
    """One process on one host: its leases run by the clock it is given."""
    if core.store.db.shared:
        pytest.skip("SQLite only")
    clock = Clock()
    first, second = (Inbox(core.store.db, w, LEASE, clock=clock) for w in ("w-1", "w-2"))
    assert abs(await first.now() - clock()) < timedelta(seconds=1)
    event_id = await first.record(message())
    clock.off = timedelta(seconds=LEASE / 2)
    assert await second.claim_abandoned(["test"]) == []
    clock.off = SKEW
    assert [e.id for e in await second.claim_abandoned(["test"])] == [event_id]
