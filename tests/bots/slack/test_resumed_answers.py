"""A streamed answer cut off by a dying process is finished in the message it had posted.

The first process posts (part of) the answer into the thread, notes that message's ts
beside the event, and is shut down before the answer is stored. The next process resumes
the message and updates that same Slack message instead of posting the answer again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from sqlalchemy import select

from bots.http_server import HttpServer
from bots.slack import SinkOptions, SlackAdapter
from core.app import Core, open_core
from core.config import Settings
from core.db.models import InboundEvent
from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_slack import FakeSlack, app_mention_event, event_callback, new_ts
from core.testing.fake_slack import signed_request as sign
from tests.bots.slack.conftest import SIGNING_SECRET

CHANNEL = "C0GENERAL"
ANSWER = " ".join(f"word{i}" for i in range(60))
OPTIONS = SinkOptions(update_interval=0.05, stream_interval=0.05, stream_buffer=16)


@asynccontextmanager
async def process(settings: Settings) -> AsyncIterator[tuple[Core, SlackAdapter, HttpServer]]:
    """One bot process: a core on the shared database and the Slack adapter (HTTP mode)."""
    async with open_core(settings) as core:
        server = HttpServer("127.0.0.1", 0)
        adapter = SlackAdapter(core, server, sink_options=OPTIONS)
        await adapter.setup()
        await server.start()
        await adapter.start()
        try:
            yield core, adapter, server
        finally:
            await core.service.shutdown()
            await adapter.stop()
            await server.stop()


async def noted_reply(core: Core) -> str:
    """The platform message the event notes, once the background write has landed."""
    async with asyncio.timeout(10):
        while True:
            async with core.engine.connect() as conn:
                rows = await conn.execute(select(InboundEvent.reply_ref))
                refs = [r[0] for r in rows]
            if refs and refs[0] is not None:
                return str(refs[0])
            await asyncio.sleep(0.01)


async def cut_off_in_a_thread(
    settings: Settings, slack: FakeSlack, fake_openai: FakeOpenAI
) -> tuple[str, str]:
    """A first process posts part of a slow answer in a channel thread, then dies.

    Returns (the person's message ts = the thread, the answer's message ts).
    """
    fake_openai.chunk_delay = 0.05
    fake_openai.reply = lambda messages: ANSWER
    thread = new_ts()
    async with process(settings.model_copy(update={"shutdown_grace": 0})) as (first, _, server):
        body, headers = sign(
            SIGNING_SECRET,
            event_callback(
                app_mention_event(channel=CHANNEL, ts=thread, text="<@U0BOT> count slowly"),
                team_id=slack.team_id,
            ),
        )
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(
                f"http://127.0.0.1:{server.port}/slack/events", content=body, headers=headers
            )
        assert response.status_code == 200
        await slack.wait_until(lambda: any(m.visible_text for m in slack.visible(CHANNEL, thread)))
        [posted] = slack.visible(CHANNEL, thread)
        # (a) the sink reported the answer's first message; it is noted beside the event.
        assert await noted_reply(first) == posted.ts
        # The process dies mid-answer: nothing stored, the event released.
        await first.service.shutdown()
    assert slack.visible_texts(CHANNEL, thread) != [ANSWER], "it should still have streamed"
    fake_openai.chunk_delay = 0.0
    return thread, posted.ts


def updated(slack: FakeSlack) -> list[str]:
    """The ts of every message chat.update was asked to change."""
    calls = slack.api_calls("chat.update")
    return [str((c.json if isinstance(c.json, dict) else c.form).get("ts")) for c in calls]


async def resume(settings: Settings) -> None:
    """The next process: resumes what the first left unfinished and answers it."""
    async with process(settings) as (core, adapter, _):
        assert await core.service.resume({"slack": adapter}) == 1
        await core.service.drain()


@pytest.mark.parametrize("native", [True, False], ids=["native-stream", "post-and-update"])
async def test_a_thread_answer_cut_off_mid_stream_is_finished_in_the_message_it_started(
    settings: Settings, slack: FakeSlack, fake_openai: FakeOpenAI, native: bool
) -> None:
    slack.native_streaming = native
    thread, posted = await cut_off_in_a_thread(settings, slack, fake_openai)
    started = len(slack.api_calls("chat.startStream"))

    await resume(settings)

    [message] = slack.visible(CHANNEL, thread)
    assert message.visible_text == ANSWER, "one message, holding the whole answer"
    assert message.ts == posted
    assert len(slack.api_calls("chat.startStream")) == started, "a stream is not resumed"
    assert len(fake_openai.chat_requests()) == 2


async def test_a_resumed_answer_whose_message_is_gone_is_posted_anew(
    settings: Settings, slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    thread, posted = await cut_off_in_a_thread(settings, slack, fake_openai)
    # Meanwhile someone deleted the partial answer: Slack no longer knows the message.
    [message] = slack.visible(CHANNEL, thread)
    message.deleted = True

    await resume(settings)

    [answer] = slack.visible(CHANNEL, thread)
    assert answer.visible_text == ANSWER
    assert answer.ts != posted
    assert posted in updated(slack), "the resumed answer first tried its old message"


async def test_a_resumed_answer_whose_message_cannot_be_updated_is_posted_anew(
    settings: Settings, slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    thread, posted = await cut_off_in_a_thread(settings, slack, fake_openai)
    partial = slack.visible_texts(CHANNEL, thread)
    slack.fail_next("chat.update", error="cant_update_message")

    await resume(settings)

    assert slack.visible_texts(CHANNEL, thread) == [*partial, ANSWER]
    assert posted in updated(slack), "the resumed answer first tried its old message"
