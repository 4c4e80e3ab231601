"""At DEBUG, Socket Mode would log every event it receives, whole: a message and the
people in it. The log at any level holds none of a conversation."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Iterator

import pytest
from pydantic import SecretStr

from bots.http_server import HttpServer
from bots.slack import SinkOptions, SlackAdapter
from core.app import Core, open_core
from core.config import Settings
from core.logs import configure_logging, settings_secrets
from core.testing.fake_slack import FakeSlack, event_callback, message_event, new_ts

DM = "D0ALICE"
WORDS = "my-diagnosis-is-QWERTY-confidential"


@pytest.fixture
def debug_log(settings: Settings) -> Iterator[io.StringIO]:
    """relaybot's logging at DEBUG, as `RELAYBOT_LOG_LEVEL=DEBUG` sets it up."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    loggers = {name: logging.getLogger(name).level for name in logging.root.manager.loggerDict}
    out = io.StringIO()
    configure_logging("DEBUG", secrets=settings_secrets(settings), fmt="json", stream=out)
    yield out
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, was in loggers.items():
        logging.getLogger(name).setLevel(was)


@pytest.fixture
async def socket_adapter(settings: Settings, slack: FakeSlack) -> AsyncIterator[SlackAdapter]:
    socket_settings = settings.model_copy(
        update={"slack_app_token": SecretStr(slack.app_token), "slack_signing_secret": None}
    )
    core: Core
    async with open_core(socket_settings) as core:
        server = HttpServer("127.0.0.1", 0)
        adapter = SlackAdapter(core, server, sink_options=SinkOptions(stream_interval=0.05))
        await adapter.setup()
        await server.start()
        await adapter.start()
        try:
            yield adapter
        finally:
            await adapter.stop()
            await server.stop()


async def test_a_socket_mode_conversation_at_debug_leaves_no_words_in_the_log(
    debug_log: io.StringIO, socket_adapter: SlackAdapter, slack: FakeSlack
) -> None:
    await slack.wait_socket_connected()
    event = message_event(channel=DM, user="U0ALICE", ts=new_ts(), text=WORDS)
    envelope = await slack.send_envelope(event_callback(event, team_id=slack.team_id))
    await slack.wait_ack(envelope)
    await slack.wait_until(lambda: any(WORDS in t for t in slack.visible_texts(DM)))
    await socket_adapter.drain()

    out = debug_log.getvalue()
    assert '"level": "DEBUG"' in out  # debug is on
    assert '"handled message"' in out
    assert WORDS not in out and "QWERTY" not in out
