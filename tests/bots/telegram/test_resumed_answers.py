"""A streamed answer cut off by a dying process is finished in the message it had posted.

The first process posts (part of) the answer, notes that message beside the event, and is
shut down before the answer is stored. The next process resumes the message and edits that
same Telegram message instead of sending the answer a second time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import select

from bots.http_server import HttpServer
from bots.telegram import Pacing, TelegramAdapter
from bots.telegram.formatting import SEGMENT_UTF16, split_markdown
from bots.telegram.limits import FloodLimits
from core.app import Core, open_core
from core.config import Settings
from core.db.models import InboundEvent
from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_telegram import FakeTelegram
from tests.bots.telegram.conftest import GROUP, PRIVATE_CHAT

ANSWER = " ".join(f"word{i}" for i in range(60))


@asynccontextmanager
async def process(settings: Settings) -> AsyncIterator[tuple[Core, TelegramAdapter]]:
    """One bot process: a core on the shared database and a polling Telegram adapter."""
    async with open_core(settings) as core:
        adapter = TelegramAdapter(
            core,
            HttpServer("127.0.0.1", 0),
            rate_limiter=FloodLimits(overall=(0, 1.0), group=(0, 60.0)),
            pacing=Pacing(draft_interval=0.02, edit_interval=0.05, typing_refresh=0.5),
            poll_timeout=1,
        )
        await adapter.setup()
        await adapter.start()
        try:
            yield core, adapter
        finally:
            await core.service.shutdown()
            await adapter.stop()


async def reply_refs(core: Core) -> list[str | None]:
    async with core.engine.connect() as conn:
        rows = await conn.execute(select(InboundEvent.reply_ref).order_by(InboundEvent.id))
        return [r[0] for r in rows]


async def noted_reply(core: Core) -> str:
    """The platform message the event notes, once the background write has landed."""
    async with asyncio.timeout(10):
        while True:
            refs = await reply_refs(core)
            if refs and refs[0] is not None:
                return refs[0]
            await asyncio.sleep(0.01)


def edited(telegram: FakeTelegram, since: int = 0) -> list[int]:
    """The message_id of every editMessageText request (from the `since`-th on)."""
    calls = telegram.calls("/editMessageText")[since:]
    return [int((c.json if isinstance(c.json, dict) else c.form)["message_id"]) for c in calls]


async def resume(settings: Settings) -> None:
    """The next process: resumes what the first left unfinished and answers it."""
    async with process(settings) as (core, adapter):
        assert await core.service.resume({"telegram": adapter}) == 1
        await core.service.drain()


async def cut_off_in_a_group(
    settings: Settings, telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> int:
    """A first process posts part of a slow group answer, then dies; returns that message."""
    fake_openai.chunk_delay = 0.05
    fake_openai.reply = lambda messages: ANSWER
    async with process(settings.model_copy(update={"shutdown_grace": 0})) as (first, _):
        update_id = await telegram.push_update(
            telegram.text_update(GROUP, "@relay_test_bot count slowly")
        )
        await telegram.wait_delivered(update_id)
        await telegram.wait_until(lambda: bool(telegram.texts(GROUP)))
        posted = telegram.chat_log(GROUP)[0].message_id
        # (a) the sink reported the answer's first message; it is noted beside the event.
        assert await noted_reply(first) == str(posted)
        # The process dies mid-answer: nothing stored, the event released.
        await first.service.shutdown()
        assert telegram.texts(GROUP) != [ANSWER], "the answer should still have been streaming"
    fake_openai.chunk_delay = 0.0
    return posted


async def test_a_group_answer_cut_off_mid_stream_is_finished_in_the_message_it_started(
    settings: Settings, telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    posted = await cut_off_in_a_group(settings, telegram, fake_openai)
    partial = telegram.texts(GROUP)[0]
    assert ANSWER.startswith(partial)

    await resume(settings)

    log = telegram.chat_log(GROUP)
    assert [m.text for m in log] == [ANSWER], "one message, holding the whole answer"
    assert log[0].message_id == posted
    assert partial in log[0].edits
    assert len(fake_openai.chat_requests()) == 2


async def test_a_private_answer_sent_but_not_stored_is_not_sent_again(
    settings: Settings,
    telegram: FakeTelegram,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # In a private chat the answer streams as drafts: its message exists only once the
    # final sendMessage went out. The first process dies right after that, before storing.
    fake_openai.reply = lambda messages: "the first run's answer"
    async with process(settings.model_copy(update={"shutdown_grace": 0})) as (first, _):
        store = first.store
        original = store.append_messages
        storing = asyncio.Event()

        async def never_stores_an_answer(chat_key: str, rows: Any, **kwargs: Any) -> Any:
            if any(row.get("role") == "assistant" for row in rows):
                storing.set()
                await asyncio.Event().wait()  # the process dies here
            return await original(chat_key, rows, **kwargs)

        monkeypatch.setattr(store, "append_messages", never_stores_an_answer)
        update_id = await telegram.push_update(telegram.text_update(PRIVATE_CHAT, "hello"))
        await telegram.wait_delivered(update_id)
        async with asyncio.timeout(10):
            await storing.wait()
        [sent] = telegram.chat_log(PRIVATE_CHAT)
        assert sent.text == "the first run's answer"
        assert await noted_reply(first) == str(sent.message_id)
        await first.service.shutdown()
    drafts = len(telegram.drafts)

    # The next process answers again (a model rarely says the same twice) into that message.
    fake_openai.reply = lambda messages: "the answer, written again"
    await resume(settings)

    log = telegram.chat_log(PRIVATE_CHAT)
    assert [m.text for m in log] == ["the answer, written again"]
    assert log[0].message_id == sent.message_id
    assert log[0].edits == ["the first run's answer"]
    assert len(telegram.drafts) == drafts, "no drafts while continuing in a message"


async def test_a_resumed_answer_whose_message_is_gone_is_sent_anew(
    settings: Settings, telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    posted = await cut_off_in_a_group(settings, telegram, fake_openai)
    # Meanwhile someone deleted the partial answer: Telegram no longer knows the message.
    telegram.chat_log(GROUP)[0].deleted = True
    edits = len(edited(telegram))

    await resume(settings)

    log = telegram.chat_log(GROUP)
    assert [m.text for m in log] == [ANSWER]
    assert log[0].message_id != posted
    assert posted in edited(telegram, edits), "the resumed answer first tried its old message"


async def test_a_resumed_answer_whose_message_cannot_be_edited_is_sent_anew(
    settings: Settings, telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    posted = await cut_off_in_a_group(settings, telegram, fake_openai)
    partial = telegram.texts(GROUP)[0]
    telegram.fail_next("editMessageText", description="Bad Request: message can't be edited")
    edits = len(edited(telegram))

    await resume(settings)

    assert telegram.texts(GROUP) == [partial, ANSWER]
    assert posted in edited(telegram, edits), "the resumed answer first tried its old message"


# -- answers that rolled over into several messages ------------------------------------------
def long_answer(tag: str, words: int = 110) -> str:
    """About 100 characters a word: 110 words roll over into three Telegram messages."""
    return " ".join(f"{tag}{i:03d}" + "x" * 94 for i in range(words))


FIRST_LONG = long_answer("first")
SECOND_LONG = long_answer("again")


async def noted_refs(core: Core, count: int) -> list[int]:
    """The answer's messages noted beside the event, once `count` of them are."""
    async with asyncio.timeout(10):
        while True:
            refs = await reply_refs(core)
            if refs and refs[0] is not None and len(refs[0].split()) >= count:
                return [int(ref) for ref in refs[0].split()]
            await asyncio.sleep(0.01)


async def cut_off_after_a_rollover(
    settings: Settings, telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> list[int]:
    """A first process streams a long group answer past one message into a second, then
    dies; returns the two messages it had sent (both noted beside the event, in order)."""
    fake_openai.chunk_delay = 0.03
    fake_openai.reply = lambda messages: FIRST_LONG
    async with process(settings.model_copy(update={"shutdown_grace": 0})) as (first, _):
        update_id = await telegram.push_update(
            telegram.text_update(GROUP, "@relay_test_bot tell me a long story")
        )
        await telegram.wait_delivered(update_id)
        await telegram.wait_until(lambda: len(telegram.chat_log(GROUP)) >= 2)
        sent = [m.message_id for m in telegram.chat_log(GROUP)]
        assert await noted_refs(first, 2) == sent
        await first.service.shutdown()
    assert len(telegram.chat_log(GROUP)) == 2, "the answer should still have been streaming"
    assert " ".join(telegram.texts(GROUP)) != FIRST_LONG
    fake_openai.chunk_delay = 0.0
    return sent


def deleted(telegram: FakeTelegram) -> list[int]:
    """The message_id of every deleteMessage request."""
    calls = telegram.calls("/deleteMessage")
    return [int((c.json if isinstance(c.json, dict) else c.form)["message_id"]) for c in calls]


async def test_a_rolled_over_answer_cut_off_is_finished_in_all_the_messages_it_had_sent(
    settings: Settings, telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    sent = await cut_off_after_a_rollover(settings, telegram, fake_openai)

    fake_openai.reply = lambda messages: SECOND_LONG
    await resume(settings)

    log = telegram.chat_log(GROUP)
    assert [m.text for m in log] == split_markdown(SECOND_LONG, SEGMENT_UTF16)
    assert len(log) == 3
    # The first two are the earlier run's messages, rewritten in order; only the third is new.
    assert [m.message_id for m in log[:2]] == sent
    assert all(m.edits for m in log[:2])
    assert log[2].message_id not in sent
    assert deleted(telegram) == []


async def test_remembered_messages_a_shorter_resumed_answer_does_not_need_are_deleted(
    settings: Settings, telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    sent = await cut_off_after_a_rollover(settings, telegram, fake_openai)

    fake_openai.reply = lambda messages: "this time, a short answer"
    await resume(settings)

    log = telegram.chat_log(GROUP)
    assert [(m.message_id, m.text) for m in log] == [(sent[0], "this time, a short answer")]
    assert deleted(telegram) == [sent[1]]


async def test_when_a_remembered_message_is_gone_the_ones_after_it_are_not_reused_out_of_order(
    settings: Settings, telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    sent = await cut_off_after_a_rollover(settings, telegram, fake_openai)
    # Someone deleted the answer's first message: a new one takes its place, below the
    # second, which would then show part two above part one. It goes too.
    telegram.chat_log(GROUP)[0].deleted = True

    fake_openai.reply = lambda messages: SECOND_LONG
    await resume(settings)

    log = telegram.chat_log(GROUP)
    assert [m.text for m in log] == split_markdown(SECOND_LONG, SEGMENT_UTF16)
    assert not {m.message_id for m in log} & set(sent)
    assert deleted(telegram) == [sent[1]]


async def test_a_remembered_message_that_cannot_be_deleted_is_left_and_the_answer_finished(
    settings: Settings,
    telegram: FakeTelegram,
    fake_openai: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent = await cut_off_after_a_rollover(settings, telegram, fake_openai)
    telegram.fail_next("deleteMessage", description="Bad Request: message can't be deleted")

    fake_openai.reply = lambda messages: "this time, a short answer"
    with caplog.at_level(logging.WARNING, logger="relaybot.telegram"):
        await resume(settings)

    assert deleted(telegram) == [sent[1]]
    log = telegram.chat_log(GROUP)
    assert [m.message_id for m in log] == sent
    assert log[0].text == "this time, a short answer"
    assert "could not delete a message" in caplog.text
    async with open_core(settings) as core, core.engine.connect() as conn:
        statuses = await conn.execute(select(InboundEvent.status))
        assert [s[0] for s in statuses] == ["done"]
