"""A paste longer than a Telegram message, which the client cut into several, gets one answer.

Telegram takes at most 4,096 UTF-16 units of text per message: a client sends a longer text
as several messages, one right after the other (consecutive ids), each but the last close
to the limit. The bot answers the whole text once, as one message.
"""

from __future__ import annotations

from typing import Any

import pytest

import core.service
from core.config import Settings
from core.testing.fake_openai import FakeOpenAI, message_text
from core.testing.fake_telegram import FakeTelegram, utf16_len
from tests.bots.telegram.conftest import GROUP, PRIVATE_CHAT, Bot
from tests.bots.telegram.test_albums import deliver_all, joined_then_killed, statuses
from tests.bots.telegram.test_resumed_answers import process

BOB = {"id": 2002, "is_bot": False, "first_name": "Bob", "username": "bob"}
CAROL = {"id": 3003, "is_bot": False, "first_name": "Carol", "username": "carol"}
BASIC_GROUP = -4005  # a basic group (not a supergroup)


def log_text(tag: str, units: int) -> str:
    """Lines of a pasted log, as close to `units` UTF-16 units as whole lines come; no
    newline at either end (Telegram drops them from a message)."""
    lines: list[str] = []
    n = 0
    while True:
        line = f"{tag} 2024-05-01 12:00:{n % 60:02d} INFO request {n} handled in {n % 97} ms"
        if utf16_len("\n".join([*lines, line])) > units:
            return "\n".join(lines)
        lines.append(line)
        n += 1


def asked(request: dict[str, Any]) -> str:
    """What a chat request asks: its last message's text."""
    return message_text(request["messages"][-1]["content"])


@pytest.fixture(autouse=True)
def short_answers(fake_openai: FakeOpenAI) -> None:
    """The model says how much it read (an echo of a paste would be several messages)."""

    def reply(messages: list[dict[str, Any]]) -> str:
        users = [m for m in messages if m.get("role") == "user"]
        return f"read {len(message_text(users[-1]['content']))} characters"

    fake_openai.reply = reply


@pytest.fixture
def wide_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """A quiet window wide enough for a loaded test machine (four test processes on two
    cores) to store a paste's next part within it: with 0.3 s a part stored later than that
    was answered on its own. No test here waits a window out but a restart's."""
    monkeypatch.setattr(core.service, "PARTS_QUIET_SECONDS", 2.0)


async def user_turns(bot: Bot, chat_id: int) -> list[str]:
    rows = await bot.stored(f"telegram:{chat_id}")
    return [r.content for r in reversed(rows) if r.role == "user"]


@pytest.mark.usefixtures("wide_window")
async def test_a_paste_cut_in_two_gets_one_answer(bot: Bot) -> None:
    tg = bot.telegram
    first = log_text("a", 4090)
    rest = "a 2024-05-01 12:01:00 INFO the last line"
    assert 4000 < utf16_len(first) <= 4090

    await deliver_all(
        bot, [tg.text_update(PRIVATE_CHAT, first), tg.text_update(PRIVATE_CHAT, rest)]
    )

    whole = f"{first}\n{rest}"
    (request,) = bot.openai.chat_requests()
    assert asked(request) == whole, "the whole paste, once, in order"
    assert tg.texts(PRIVATE_CHAT) == [f"read {len(whole)} characters"]
    (answer,) = tg.chat_log(PRIVATE_CHAT)
    assert answer.reply_to is not None
    assert await user_turns(bot, PRIVATE_CHAT) == [whole], "one user turn"
    assert await statuses(bot) == ["done", "done"]

    # The next message is answered on its own, the paste in its history.
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "what failed?"))
    assert tg.texts(PRIVATE_CHAT)[-1] == "read 12 characters"
    assert asked(bot.openai.chat_requests()[-1]) == "what failed?"


@pytest.mark.usefixtures("wide_window")
async def test_a_paste_cut_in_three_gets_one_answer(bot: Bot) -> None:
    tg = bot.telegram
    # Characters outside the BMP count twice: this part is long in UTF-16 units, which is
    # what Telegram counts, though not in characters.
    middle = "\n".join(["🔥" * 40] * 49)
    parts = [log_text("a", 4090), middle, "the end"]
    assert len(middle) < 3500 <= utf16_len(middle)

    await deliver_all(bot, [tg.text_update(PRIVATE_CHAT, p) for p in parts])

    whole = "\n".join(parts)
    (request,) = bot.openai.chat_requests()
    assert asked(request) == whole
    assert len(tg.texts(PRIVATE_CHAT)) == 1
    assert await user_turns(bot, PRIVATE_CHAT) == [whole]
    assert await statuses(bot) == ["done", "done", "done"]


@pytest.mark.usefixtures("wide_window")
async def test_short_messages_sent_quickly_are_answered_one_by_one(bot: Bot) -> None:
    tg = bot.telegram
    first, rest = log_text("a", 4090), "the end"
    updates = [
        tg.text_update(PRIVATE_CHAT, "hello"),
        tg.text_update(PRIVATE_CHAT, "how are you?"),
        # Then a paste: it is joined, the messages before it are not.
        tg.text_update(PRIVATE_CHAT, first),
        tg.text_update(PRIVATE_CHAT, rest),
    ]

    await deliver_all(bot, updates)

    assert [asked(r) for r in bot.openai.chat_requests()] == [
        "hello",
        "how are you?",
        f"{first}\n{rest}",
    ]
    assert len(tg.texts(PRIVATE_CHAT)) == 3


@pytest.mark.usefixtures("wide_window")
async def test_a_long_message_is_not_joined_to_one_that_does_not_directly_follow_it(
    bot: Bot,
) -> None:
    # A supergroup numbers its own messages: the rest of a cut text has the next id.
    tg = bot.telegram
    long = log_text("a", 4070)
    updates = [tg.text_update(GROUP, f"@relay_test_bot\n{long}")]
    tg.message(GROUP, text="a message the bot never saw")  # takes the next id
    updates.append(tg.text_update(GROUP, "@relay_test_bot another question"))

    await deliver_all(bot, updates)

    assert [asked(r) for r in bot.openai.chat_requests()] == [long, "another question"]
    assert len(tg.texts(GROUP)) == 2


@pytest.mark.usefixtures("wide_window")
async def test_a_long_private_message_is_not_joined_to_one_sent_later(bot: Bot) -> None:
    # A private chat's ids count across the bot's chats: what follows a cut text is told by
    # when it was sent (the bot still answering an earlier message meanwhile).
    tg = bot.telegram
    long = log_text("a", 4090)
    updates = [tg.text_update(PRIVATE_CHAT, long)]
    later = tg.text_update(PRIVATE_CHAT, "another question")
    later["message"]["date"] += 10
    updates.append(later)
    first, rest = log_text("b", 4090), "the end"  # then a real paste, joined
    updates += [tg.text_update(PRIVATE_CHAT, first), tg.text_update(PRIVATE_CHAT, rest)]

    await deliver_all(bot, updates)

    assert [asked(r) for r in bot.openai.chat_requests()] == [
        long,
        "another question",
        f"{first}\n{rest}",
    ]
    assert len(tg.texts(PRIVATE_CHAT)) == 3


@pytest.mark.usefixtures("wide_window")
@pytest.mark.parametrize(
    "chat",
    [
        pytest.param(PRIVATE_CHAT, id="private"),
        pytest.param(  # privacy mode off: the rest, which mentions nobody, reaches the bot
            BASIC_GROUP,
            id="basic-group",
            marks=pytest.mark.bot_user(can_read_all_group_messages=True),
        ),
    ],
)
async def test_a_paste_is_joined_when_other_chats_took_the_ids_between_its_parts(
    bot: Bot, chat: int
) -> None:
    # Private chats and basic groups share one sequence of ids, the bot's: another person
    # writing to the bot between a paste's parts takes the id that would have followed.
    tg = bot.telegram
    kind = "private" if chat > 0 else "group"
    mention = "" if chat > 0 else "@relay_test_bot\n"
    first, rest = log_text("a", 4070), "a 2024-05-01 12:01:00 INFO the last line"
    updates = [
        tg.text_update(chat, f"{mention}{first}", chat_type=kind),
        tg.text_update(CAROL["id"], "hi bot", from_user=CAROL),
        tg.text_update(chat, rest, chat_type=kind),
    ]
    ids = [u["message"]["message_id"] for u in updates]
    assert ids == [ids[0], ids[0] + 1, ids[0] + 2], "one sequence for all three"

    await deliver_all(bot, updates)

    whole = f"{first}\n{rest}"
    assert sorted(asked(r) for r in bot.openai.chat_requests()) == sorted([whole, "hi bot"])
    assert tg.texts(chat) == [f"read {len(whole)} characters"]
    assert tg.texts(CAROL["id"]) == ["read 6 characters"]
    assert await user_turns(bot, chat) == [whole]


@pytest.mark.usefixtures("wide_window")
@pytest.mark.bot_user(can_read_all_group_messages=True)  # privacy mode off
async def test_a_group_paste_is_not_joined_to_someone_elses_message(bot: Bot) -> None:
    tg = bot.telegram
    long = log_text("a", 4090)
    updates = [
        tg.text_update(GROUP, f"@relay_test_bot\n{long}"),
        tg.text_update(GROUP, "@relay_test_bot what time is it?", from_user=BOB),
        tg.text_update(GROUP, "lol", from_user=BOB),  # chatter
        tg.text_update(GROUP, "the end of Ada's log"),  # follows Bob's, not hers: chatter
    ]
    first, rest = log_text("b", 4090), "the end"  # then Ada's real paste, joined
    updates += [tg.text_update(GROUP, f"@relay_test_bot\n{first}"), tg.text_update(GROUP, rest)]

    await deliver_all(bot, updates)

    assert [asked(r) for r in bot.openai.chat_requests()] == [
        long,
        "what time is it?",
        f"{first}\n{rest}",
    ]
    assert len(tg.texts(GROUP)) == 3
    # The chatter was never stored; each answered message has its event, the paste two.
    assert await statuses(bot) == ["done"] * 4


@pytest.mark.usefixtures("wide_window")
@pytest.mark.bot_user(can_read_all_group_messages=True)  # privacy mode off
async def test_a_group_paste_to_the_bot_takes_in_its_unaddressed_rest(bot: Bot) -> None:
    tg = bot.telegram
    first = log_text("a", 4080)
    middle, rest = log_text("b", 4090), "the end, which mentions nobody"
    updates = [
        tg.text_update(GROUP, f"@relay_test_bot what went wrong here?\n{first}"),
        tg.text_update(GROUP, middle),
        tg.text_update(GROUP, rest),
    ]

    await deliver_all(bot, updates)

    whole = f"what went wrong here?\n{first}\n{middle}\n{rest}"
    (request,) = bot.openai.chat_requests()
    assert asked(request) == whole
    (answer,) = tg.chat_log(GROUP)
    assert answer.reply_to == updates[0]["message"]["message_id"], "under the paste's start"
    assert await statuses(bot) == ["done", "done", "done"]


async def test_a_paste_cut_off_by_a_restart_before_it_was_joined_is_answered_once(
    settings: Settings,
    telegram: FakeTelegram,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first process dies while the paste's first part waits for more."""
    parts = [log_text("a", 4090), log_text("b", 4090)]  # the second may be continued too
    # A long window: the process is stopped within it, before the parts are joined.
    monkeypatch.setattr(core.service, "PARTS_QUIET_SECONDS", 30.0)
    async with process(settings.model_copy(update={"shutdown_grace": 0})) as (first, _):
        ids = [await telegram.push_update(telegram.text_update(PRIVATE_CHAT, p)) for p in parts]
        await telegram.wait_delivered(ids[-1])
        await first.service.shutdown()
    assert fake_openai.chat_requests() == []

    monkeypatch.setattr(core.service, "PARTS_QUIET_SECONDS", 0.3)
    async with process(settings) as (core_, adapter):
        assert await core_.service.resume({"telegram": adapter}) == 2
        await core_.service.drain()

    (request,) = fake_openai.chat_requests()
    assert asked(request) == "\n".join(parts)
    assert len(telegram.texts(PRIVATE_CHAT)) == 1


@pytest.mark.usefixtures("wide_window")
async def test_a_joined_paste_cut_off_by_a_restart_is_answered_once(
    settings: Settings,
    telegram: FakeTelegram,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first process joins the paste's parts, then dies before answering it."""
    parts = [log_text("a", 4090), "the end"]
    updates = [telegram.text_update(PRIVATE_CHAT, p) for p in parts]
    await joined_then_killed(settings, telegram, monkeypatch, updates)

    (request,) = fake_openai.chat_requests()
    assert asked(request) == "\n".join(parts)
    assert len(telegram.texts(PRIVATE_CHAT)) == 1
