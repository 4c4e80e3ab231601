"""/forget hands out no fresh budget: what a forgotten chat cost still counts toward its
person's and its group's budgets (a person at their daily budget who said /forget in their
private chat was answered again, as was a group whose admin said it there)."""

from __future__ import annotations

import json

import pytest

from tests.bots.telegram.conftest import ADA, GROUP, PRIVATE_CHAT, Bot

# $1 per 1,000 tokens each way: one short exchange costs about a cent.
PRICED = {
    "prices": json.dumps({"gpt-4o-mini": {"input": 1000, "output": 1000}}),
    "reply_tokens": 5,
}


async def ask(bot: Bot, chat: int, text: str, topic: int | None = None) -> str:
    """What the bot answered to `text`, said in `chat` (in its forum topic `topic`)."""
    await bot.deliver(bot.telegram.text_update(chat, text, message_thread_id=topic))
    return bot.telegram.texts(chat, topic)[-1]


async def spend_it_all(bot: Bot, chat: int, prefix: str = "") -> str:
    """Ask until a budget says no; that refusal."""
    for i in range(20):
        answer = await ask(bot, chat, f"{prefix}question {i}")
        if not answer.startswith("echo:"):
            return answer
    raise AssertionError("no budget ran out")


def spent(answer: str, head: str) -> str:
    """What one line of /budget says was spent ("Your daily budget: $0.01 of ...")."""
    line = next(line for line in answer.splitlines() if line.startswith(head))
    return line.split(": ", 1)[1].split(" of ", 1)[0]


@pytest.mark.telegram_settings(**PRICED, budget_user_daily=0.05)
async def test_forget_in_a_private_chat_keeps_the_persons_spend(bot: Bot) -> None:
    refused = await spend_it_all(bot, PRIVATE_CHAT)
    calls = len(bot.openai.chat_requests())
    assert refused.startswith("Sorry, that would go over your daily budget of $0.05")

    for _ in range(2):
        done = await ask(bot, PRIVATE_CHAT, "/forget")
        again = await ask(bot, PRIVATE_CHAT, "one more question")
        assert again.startswith("Sorry, that would go over your daily budget of $0.05"), again
    assert len(bot.openai.chat_requests()) == calls
    assert done.startswith("Done. I deleted everything stored about this chat")
    assert done.endswith("but what it cost still counts toward this day's and month's budgets.")


@pytest.mark.telegram_settings(**PRICED, budget_chat_daily=0.05)
async def test_forget_by_a_groups_admin_keeps_the_groups_spend(bot: Bot) -> None:
    bot.telegram.chat_admins[GROUP] = {ADA}
    refused = await spend_it_all(bot, GROUP, "@relay_test_bot ")
    calls = len(bot.openai.chat_requests())
    assert refused.startswith("Sorry, that would go over this chat's daily budget of $0.05")

    done = await ask(bot, GROUP, "/forget")
    assert done.startswith("Done. I deleted everything stored about this chat")
    again = await ask(bot, GROUP, "@relay_test_bot one more question")
    assert again.startswith("Sorry, that would go over this chat's daily budget of $0.05"), again
    assert len(bot.openai.chat_requests()) == calls


@pytest.mark.telegram_settings(**PRICED, budget_user_daily=10.0, budget_chat_daily=10.0)
async def test_forget_in_a_topic_keeps_the_spend_of_its_person_and_its_group(bot: Bot) -> None:
    # A topic's spend counts toward its group's budget (kept under the group's key): before,
    # forgetting the topic took it out of the person's day only.
    bot.telegram.chat_admins[GROUP] = {ADA}
    assert (await ask(bot, GROUP, "@relay_test_bot hello in a topic", 7)).startswith("echo:")
    before = await ask(bot, GROUP, "/budget", 7)
    assert (await ask(bot, GROUP, "/forget", 7)).startswith("Done.")
    after = await ask(bot, GROUP, "/budget", 7)

    for head in ("Your daily budget", "This chat's daily budget"):
        assert spent(after, head) == spent(before, head) != "$0.00", (head, before, after)
