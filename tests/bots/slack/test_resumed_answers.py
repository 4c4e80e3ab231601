"""A streamed answer cut off by a dying process is finished in the message it had posted.

The first process posts (part of) the answer into the thread, notes that message's ts
beside the event, and is shut down before the answer is stored. The next process resumes
the message and updates that same Slack message instead of posting the answer again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import select

from bots.http_server import HttpServer
from bots.slack import SinkOptions, SlackAdapter
from core.app import Core, open_core
from core.config import Settings
from core.db.models import InboundEvent
from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_slack import (
    FakeMessage,
    FakeSlack,
    app_mention_event,
    event_callback,
    message_event,
    new_ts,
)
from core.testing.fake_slack import signed_request as sign
from tests.bots.slack.conftest import SIGNING_SECRET

CHANNEL = "C0GENERAL"
ANSWER = " ".join(f"word{i}" for i in range(60))
OPTIONS = SinkOptions(update_interval=0.05, stream_interval=0.05, stream_buffer=16)


@asynccontextmanager
async def process(
    settings: Settings, options: SinkOptions = OPTIONS
) -> AsyncIterator[tuple[Core, SlackAdapter, HttpServer]]:
    """One bot process: a core on the shared database and the Slack adapter (HTTP mode)."""
    async with open_core(settings) as core:
        server = HttpServer("127.0.0.1", 0)
        adapter = SlackAdapter(core, server, sink_options=options)
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
        await die(first, slack)
    assert slack.visible_texts(CHANNEL, thread) != [ANSWER], "it should still have streamed"
    fake_openai.chunk_delay = 0.0
    return thread, posted.ts


async def die(core: Core, slack: FakeSlack) -> None:
    """The process dies mid-answer. A shutdown still stops its native stream; a killed
    process never does, so the stream is left open, as Slack would have it."""
    streaming = [(m, m.metadata) for m in slack.messages if m.streaming]
    await core.service.shutdown()
    for message, metadata in streaming:
        message.streaming = True
        message.metadata = metadata  # chat.stopStream tags a stream; it never came


def updated(slack: FakeSlack) -> list[str]:
    """The ts of every message chat.update was asked to change."""
    calls = slack.api_calls("chat.update")
    return [str((c.json if isinstance(c.json, dict) else c.form).get("ts")) for c in calls]


async def resume(settings: Settings, options: SinkOptions = OPTIONS) -> None:
    """The next process: resumes what the first left unfinished and answers it."""
    async with process(settings, options) as (core, adapter, _):
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


# -- answers that rolled over into several messages ------------------------------------------
# Small messages, so a short answer rolls over (Slack's own limits are far larger).
ROLLING = SinkOptions(
    update_interval=0.05,
    stream_interval=0.05,
    stream_buffer=16,
    message_limit=400,
    stream_limit=400,
)


def long_answer(tag: str, words: int = 40) -> str:
    """About 40 characters a word: 40 words roll over into four or five small messages."""
    return " ".join(f"{tag}{i:03d}" + "x" * 32 for i in range(words))


FIRST_LONG = long_answer("first")
SECOND_LONG = long_answer("again")


def words(texts: list[str]) -> list[str]:
    return " ".join(texts).split()


async def noted_refs(core: Core, count: int) -> list[str]:
    """The answer's messages noted beside the event, once `count` of them are."""
    async with asyncio.timeout(10):
        while True:
            async with core.engine.connect() as conn:
                rows = await conn.execute(select(InboundEvent.reply_ref))
                refs = [r[0] for r in rows]
            if refs and refs[0] is not None and len(refs[0].split()) >= count:
                return list(refs[0].split())
            await asyncio.sleep(0.01)


async def post_mention(server: HttpServer, slack: FakeSlack, thread: str, text: str) -> None:
    """A person @-mentions the bot in the channel (Slack's signed Events API request)."""
    await post_event(
        server, slack, app_mention_event(channel=CHANNEL, ts=thread, text=f"<@U0BOT> {text}")
    )


async def post_event(server: HttpServer, slack: FakeSlack, event: dict[str, Any]) -> None:
    body, headers = sign(SIGNING_SECRET, event_callback(event, team_id=slack.team_id))
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"http://127.0.0.1:{server.port}/slack/events", content=body, headers=headers
        )
    assert response.status_code == 200


async def cut_off_after_a_rollover(
    settings: Settings,
    slack: FakeSlack,
    fake_openai: FakeOpenAI,
    *,
    noted: bool = True,
) -> tuple[str, list[str]]:
    """A first process streams a long answer past one message into a second, then dies.

    Returns the thread and the two messages it had posted; with `noted=False` the process
    dies before its notes of them reach the database.
    """
    fake_openai.chunk_delay = 0.03
    fake_openai.reply = lambda messages: FIRST_LONG
    thread = new_ts()
    dying = settings.model_copy(update={"shutdown_grace": 0})
    async with process(dying, ROLLING) as (first, _, server):
        if not noted:
            first.service.remember_reply = lambda msg, refs: None  # type: ignore[method-assign]
        await post_mention(server, slack, thread, "tell me a long story")
        await slack.wait_until(
            lambda: (
                len(slack.visible(CHANNEL, thread)) >= 2
                and bool(slack.visible(CHANNEL, thread)[1].visible_text)
            )
        )
        posted = [m.ts for m in slack.visible(CHANNEL, thread)]
        if noted:
            assert await noted_refs(first, 2) == posted
        await die(first, slack)
    assert len(slack.visible(CHANNEL, thread)) == 2, "the answer should still have streamed"
    fake_openai.chunk_delay = 0.0
    return thread, posted


def called_on(slack: FakeSlack, method: str) -> list[str]:
    """The ts each call of a chat.* method named."""
    return [str(args.get("ts")) for args in slack.api_arguments(method)]


@pytest.mark.parametrize("native", [True, False], ids=["native-stream", "post-and-update"])
async def test_a_rolled_over_answer_cut_off_is_finished_in_all_the_messages_it_had_posted(
    settings: Settings, slack: FakeSlack, fake_openai: FakeOpenAI, native: bool
) -> None:
    slack.native_streaming = native
    thread, posted = await cut_off_after_a_rollover(settings, slack, fake_openai)
    started = len(slack.api_calls("chat.startStream"))

    fake_openai.reply = lambda messages: SECOND_LONG
    await resume(settings, ROLLING)

    shown = slack.visible(CHANNEL, thread)
    assert words([m.visible_text for m in shown]) == SECOND_LONG.split()
    assert all(len(m.visible_text) <= ROLLING.message_limit for m in shown)
    # The earlier run's two messages hold the start of the answer, in order; the rest is new.
    assert [m.ts for m in shown[:2]] == posted
    assert len(shown) > 2
    assert not any(m.streaming for m in shown)
    assert len(slack.api_calls("chat.startStream")) == started, "a stream is not resumed"
    assert called_on(slack, "chat.delete") == []
    if native:
        # The second was a stream the dead process never stopped: Slack refuses to update
        # it (streaming_state_conflict) until it is stopped.
        assert posted[1] in called_on(slack, "chat.stopStream")


@pytest.mark.parametrize("native", [True, False], ids=["native-stream", "post-and-update"])
async def test_remembered_messages_a_shorter_resumed_answer_does_not_need_are_deleted(
    settings: Settings, slack: FakeSlack, fake_openai: FakeOpenAI, native: bool
) -> None:
    slack.native_streaming = native
    thread, posted = await cut_off_after_a_rollover(settings, slack, fake_openai)

    fake_openai.reply = lambda messages: "this time, a short answer"
    await resume(settings, ROLLING)

    shown = slack.visible(CHANNEL, thread)
    assert [(m.ts, m.visible_text) for m in shown] == [(posted[0], "this time, a short answer")]
    assert posted[1] in called_on(slack, "chat.delete")
    assert [m.deleted for m in slack.messages if m.ts == posted[1]] == [True]


async def test_when_a_remembered_message_is_gone_the_ones_after_it_are_not_reused_out_of_order(
    settings: Settings, slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    slack.native_streaming = False
    thread, posted = await cut_off_after_a_rollover(settings, slack, fake_openai)
    slack.visible(CHANNEL, thread)[0].deleted = True

    fake_openai.reply = lambda messages: SECOND_LONG
    await resume(settings, ROLLING)

    shown = slack.visible(CHANNEL, thread)
    assert words([m.visible_text for m in shown]) == SECOND_LONG.split()
    assert not {m.ts for m in shown} & set(posted)
    assert called_on(slack, "chat.delete") == [posted[1]]


async def test_a_remembered_message_that_cannot_be_deleted_is_left_and_the_answer_finished(
    settings: Settings,
    slack: FakeSlack,
    fake_openai: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    slack.native_streaming = False
    thread, posted = await cut_off_after_a_rollover(settings, slack, fake_openai)
    slack.fail_next("chat.delete", error="cant_delete_message", times=2)

    fake_openai.reply = lambda messages: "this time, a short answer"
    with caplog.at_level(logging.WARNING, logger="relaybot.slack.sink"):
        await resume(settings, ROLLING)

    shown = slack.visible(CHANNEL, thread)
    assert [m.ts for m in shown] == posted
    assert shown[0].visible_text == "this time, a short answer"
    assert "could not delete a message of an answer" in caplog.text


# -- tagged answers: found even when the note never reached the database ----------------------
@pytest.mark.parametrize("native", [True, False], ids=["native-stream", "post-and-update"])
async def test_every_message_of_an_answer_is_tagged_with_its_event(
    settings: Settings, slack: FakeSlack, fake_openai: FakeOpenAI, native: bool
) -> None:
    slack.native_streaming = native
    fake_openai.reply = lambda messages: FIRST_LONG
    thread = new_ts()
    async with process(settings, ROLLING) as (core, _, server):
        await post_mention(server, slack, thread, "tell me a long story")
        await core.service.drain()

    shown = slack.visible(CHANNEL, thread)
    assert len(shown) > 2
    assert words([m.visible_text for m in shown]) == FIRST_LONG.split()
    tag = {
        "event_type": "relaybot_answer",
        "event_payload": {"event": f"slack:{CHANNEL}:{thread}"},
    }
    assert [m.metadata for m in shown] == [tag] * len(shown)
    if native:
        # chat.startStream takes no metadata: a streamed message is tagged when it stops.
        assert all("metadata" not in args for args in slack.api_arguments("chat.startStream"))


def lookups(slack: FakeSlack, method: str) -> list[dict[str, Any]]:
    return slack.api_arguments(method)


@pytest.mark.parametrize("native", [True, False], ids=["native-stream", "post-and-update"])
async def test_an_answer_whose_notes_never_reached_the_database_is_found_by_its_tags(
    settings: Settings, slack: FakeSlack, fake_openai: FakeOpenAI, native: bool
) -> None:
    slack.native_streaming = native
    thread, posted = await cut_off_after_a_rollover(settings, slack, fake_openai, noted=False)
    async with open_core(settings) as core, core.engine.connect() as conn:
        assert [r[0] for r in await conn.execute(select(InboundEvent.reply_ref))] == [None]
    if native:
        # The first message's stream was stopped (and tagged) at the rollover; the second
        # is still streaming, untagged: chat.startStream takes no metadata.
        first, second = slack.visible(CHANNEL, thread)
        assert first.metadata is not None and not first.streaming
        assert second.metadata is None and second.streaming
    started = len(slack.api_calls("chat.startStream"))

    fake_openai.reply = lambda messages: SECOND_LONG
    await resume(settings, ROLLING)

    # The person sees one answer, in the messages the dead process had started.
    shown = slack.visible(CHANNEL, thread)
    assert words([m.visible_text for m in shown]) == SECOND_LONG.split()
    assert [m.ts for m in shown[:2]] == posted
    assert len(slack.api_calls("chat.startStream")) == started, "no new stream is started"
    assert not any(m.streaming for m in shown)
    [lookup] = [q for q in lookups(slack, "conversations.replies") if q.get("oldest")]
    assert lookup["ts"] == thread and lookup["oldest"] == thread
    assert lookup["include_all_metadata"] in ("1", "true")


async def test_without_auth_test_the_tagged_messages_are_still_found(
    settings: Settings, slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    slack.native_streaming = False
    thread, posted = await cut_off_after_a_rollover(settings, slack, fake_openai, noted=False)
    # Who the bot is (for streams left open) cannot be asked: the tags still tell. (Not a
    # token Slack rejects, which stops the start: an error Slack answers for a while.)
    slack.fail_next("auth.test", error="internal_error", times=5)

    fake_openai.reply = lambda messages: SECOND_LONG
    await resume(settings, ROLLING)

    shown = slack.visible(CHANNEL, thread)
    assert [m.ts for m in shown[:2]] == posted
    assert words([m.visible_text for m in shown]) == SECOND_LONG.split()
    assert slack.api_calls("auth.test"), "the look-up asked who the bot is"


async def test_only_an_untagged_text_message_of_the_bot_is_taken_for_a_stream_left_open(
    settings: Settings, slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    slack.native_streaming = True
    thread, posted = await cut_off_after_a_rollover(settings, slack, fake_openai, noted=False)
    # Also in the thread after the question: a notice relaybot posted (tagged as one), an
    # image it uploaded, another app's message and a person's. None is part of the answer.
    others = [
        FakeMessage(
            channel=CHANNEL,
            ts=new_ts(),
            thread_ts=thread,
            text="a notice",
            user=slack.bot_user_id,
            bot_id=slack.bot_id,
            metadata={"event_type": "relaybot_notice", "event_payload": {"event": "x"}},
        ),
        FakeMessage(
            channel=CHANNEL,
            ts=new_ts(),
            thread_ts=thread,
            text="an image",
            files=[{"id": "F0IMG", "name": "image.png"}],
            user=slack.bot_user_id,
            bot_id=slack.bot_id,
        ),
        FakeMessage(
            channel=CHANNEL, ts=new_ts(), thread_ts=thread, text="hi", user="U0OTHER", bot_id="B0X"
        ),
    ]
    slack.messages.extend(others)
    slack.add_person_message(CHANNEL, new_ts(), "and a person", thread_ts=thread)
    before = {m.ts: m.visible_text for m in slack.visible(CHANNEL, thread) if m.ts not in posted}

    fake_openai.reply = lambda messages: SECOND_LONG
    await resume(settings, ROLLING)

    shown = slack.visible(CHANNEL, thread)
    assert {m.ts: m.visible_text for m in shown if m.ts in before} == before
    answer = [m for m in shown if m.ts not in before]
    assert [m.ts for m in answer[:2]] == posted
    assert words([m.visible_text for m in answer]) == SECOND_LONG.split()
    assert not set(called_on(slack, "chat.update")) & set(before)


async def test_an_unthreaded_dm_answer_is_found_by_its_tags_in_the_conversation(
    settings: Settings, slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    dm = "D0ALICE"
    # Earlier in the DM: the person's first question and the (tagged) answer to it.
    first_question = new_ts()
    slack.add_person_message(dm, first_question, "an earlier question")
    async with process(settings, ROLLING) as (core, _, server):
        fake_openai.reply = lambda messages: "an earlier answer"
        await post_event(server, slack, message_event(channel=dm, ts=first_question, text="hi"))
        await core.service.drain()
    earlier = [m.ts for m in slack.visible(dm)]

    fake_openai.chunk_delay = 0.03
    fake_openai.reply = lambda messages: FIRST_LONG
    question = new_ts()
    slack.add_person_message(dm, question, "tell me a long story")
    dying = settings.model_copy(update={"shutdown_grace": 0})
    async with process(dying, ROLLING) as (first, _, server):
        first.service.remember_reply = lambda msg, refs: None  # type: ignore[method-assign]
        await post_event(server, slack, message_event(channel=dm, ts=question, text="story"))
        await slack.wait_until(lambda: len(slack.visible(dm)) >= len(earlier) + 3)
        await first.service.shutdown()
    posted = [m.ts for m in slack.visible(dm) if m.user == slack.bot_user_id][1:]
    assert len(posted) == 2
    fake_openai.chunk_delay = 0.0

    fake_openai.reply = lambda messages: SECOND_LONG
    await resume(settings, ROLLING)

    mine = [m for m in slack.visible(dm) if m.user == slack.bot_user_id]
    assert mine[0].ts == earlier[1] and mine[0].visible_text == "an earlier answer"
    assert [m.ts for m in mine[1:3]] == posted
    assert words([m.visible_text for m in mine[1:]]) == SECOND_LONG.split()
    [lookup] = lookups(slack, "conversations.history")
    assert lookup["channel"] == dm and lookup["oldest"] == question


async def test_when_the_tag_look_up_is_refused_the_resumed_answer_is_posted_anew(
    settings: Settings,
    slack: FakeSlack,
    fake_openai: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    slack.native_streaming = False
    thread, posted = await cut_off_after_a_rollover(settings, slack, fake_openai, noted=False)
    partial = slack.visible_texts(CHANNEL, thread)
    # An install without the history scope: the look-up is refused, as today nothing is.
    slack.fail_next("conversations.replies", error="missing_scope")

    fake_openai.reply = lambda messages: SECOND_LONG
    with caplog.at_level(logging.INFO, logger="relaybot.slack"):
        await resume(settings, ROLLING)

    shown = slack.visible(CHANNEL, thread)
    assert [(m.ts, m.visible_text) for m in shown[:2]] == list(zip(posted, partial, strict=True))
    assert words([m.visible_text for m in shown[2:]]) == SECOND_LONG.split()
    assert len(slack.api_calls("conversations.replies")) == 1
    assert "missing_scope" in caplog.text


async def test_metadata_is_read_back_only_when_asked_for(slack: FakeSlack) -> None:
    """The fake, as Slack: conversations.* return metadata with include_all_metadata only."""
    client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
    thread = new_ts()
    tag = {"event_type": "relaybot_answer", "event_payload": {"event": "slack:C:1"}}
    await client.chat_postMessage(channel=CHANNEL, thread_ts=thread, text="hi", metadata=tag)
    plain = await client.conversations_replies(channel=CHANNEL, ts=thread)
    assert [m.get("metadata") for m in plain["messages"]] == [None]
    full = await client.conversations_replies(
        channel=CHANNEL, ts=thread, include_all_metadata=True
    )
    assert [m.get("metadata") for m in full["messages"]] == [tag]


# -- a stream Slack itself ended -------------------------------------------------------------
async def test_an_answer_whose_stream_slack_ended_is_finished_by_updates(
    settings: Settings, slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    """Slack ends a native stream about 5 minutes after it started; appendStream then
    answers message_not_in_streaming_state. The answer goes on in that message."""
    fake_openai.chunk_delay = 0.03
    fake_openai.reply = lambda messages: ANSWER
    thread = new_ts()
    async with process(settings) as (core, _, server):
        await post_mention(server, slack, thread, "count slowly")
        await slack.wait_until(lambda: any(m.visible_text for m in slack.visible(CHANNEL, thread)))
        [streaming] = slack.visible(CHANNEL, thread)
        assert streaming.streaming
        slack.expire_stream(streaming.ts)
        await core.service.drain()

    [message] = slack.visible(CHANNEL, thread)
    assert message.ts == streaming.ts
    assert message.visible_text == ANSWER
    assert slack.api_calls("chat.update")
