"""The soak command, small: faults injected, nothing lost or doubled, and it notices when
something is."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from core.inbox import Inbox
from core.types import IncomingMessage
from soak.__main__ import main
from soak.run import SoakConfig, soak

SMALL = SoakConfig(messages=50, chats=8, concurrency=16, fault_rate=0.3, duplicate_rate=0.3)


def test_fifty_messages_through_faults_none_lost_or_doubled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--messages", "50", "--chats", "8", "--fault-rate", "0.3", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert "lost 0   duplicated 0   out of order 0" in out
    assert "faults injected: none" not in out
    assert "p99" in out
    assert out.rstrip().endswith("OK")


async def test_the_soak_fails_when_redeliveries_get_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = Inbox.record

    async def forgetful(self: Inbox, msg: IncomingMessage) -> int | None:
        # A broken inbox that no longer recognises a delivery it has seen.
        fresh = dataclasses.replace(msg, event_key=f"{msg.event_key}:{uuid.uuid4().hex}")
        return await original(self, fresh)

    monkeypatch.setattr(Inbox, "record", forgetful)
    report = await soak(dataclasses.replace(SMALL, fault_rate=0.0, duplicate_rate=0.5))
    assert report.redeliveries > 0
    assert report.redeliveries_accepted > 0
    assert report.duplicated > 0
    assert not report.ok
