"""Access: allow-lists per platform, admins, and admin-only commands."""

from __future__ import annotations

import itertools

import pytest

from core.access import Access, names_chat
from core.app import open_core
from core.config import Settings
from core.errors import ConfigError
from core.testing.fake_openai import FakeOpenAI
from core.testing.sink import RecordingSink
from core.types import ChatRef, IncomingMessage, Sender

_ids = itertools.count(1)


def message(
    text: str, user: str, chat: str, platform: str = "telegram", direct: bool = True
) -> IncomingMessage:
    return IncomingMessage(
        chat=ChatRef(platform, chat),
        sender=Sender(user, user),
        event_key=f"access:{next(_ids)}",
        text=text,
        is_direct=direct,
    )


async def test_only_allowed_people_and_chats_get_answers(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    restricted = settings.model_copy(
        update={
            "allowed_users": "telegram:111, slack:U1",
            "allowed_chats": "telegram:-1001",
            "admins": "telegram:999",
        }
    )
    async with open_core(restricted) as core:

        async def say(msg: IncomingMessage) -> list[str]:
            sink = RecordingSink()
            await core.service.handle(msg, sink)
            return sink.texts

        stranger = await say(message("hi", "222", "222"))
        allowed = await say(message("hi", "111", "111"))
        in_group = await say(message("hi", "333", "-1001", direct=False))
        admin = await say(message("hi", "999", "999"))
        slack_stranger = await say(message("hi", "U2", "D2", platform="slack"))
        # A platform with no list stays open.
        console = await say(message("hi", "you", "default", platform="console"))
    assert stranger == ["Sorry, this bot is private. Ask its operator to let you in."]
    assert allowed == in_group == admin == console == ["echo: hi"]
    assert slack_stranger == stranger
    assert len(fake_openai.chat_requests()) == 4


async def test_changing_the_model_is_for_admins(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    async with open_core(settings.model_copy(update={"admins": "telegram:999"})) as core:

        async def say(text: str, user: str) -> str:
            sink = RecordingSink()
            await core.service.handle(message(text, user, "-1001", direct=False), sink)
            return sink.texts[0]

        listing = await say("/model", "111")
        refused = await say("/model gpt-4o", "111")
        changed = await say("/model gpt-4o", "999")
    assert "Available models" in listing
    assert refused == "Sorry, only the bot's admins can do that."
    assert changed == "This chat now uses gpt-4o."


def test_without_admins_the_console_user_is_admin() -> None:
    access = Access(Settings(_env_file=None))  # type: ignore[call-arg]
    assert access.is_admin("console", "alice")
    assert not access.is_admin("telegram", "123")
    configured = Access(Settings(_env_file=None, admins="telegram:123"))  # type: ignore[call-arg]
    assert configured.is_admin("telegram", "123")
    assert not configured.is_admin("console", "alice")


@pytest.mark.parametrize("value", ["123", "telegram:", ":123", "telegram:1,slack"])
def test_malformed_lists_are_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError, match="RELAYBOT_ALLOWED_USERS"):
        Access(Settings(_env_file=None, allowed_users=value))  # type: ignore[call-arg]


def test_a_chats_own_id_names_it_only_where_the_workspace_qualifies_it() -> None:
    # Slack's chat ids are TEAM:CHANNEL, and people copy the channel's own id from the app;
    # elsewhere a ":" is part of the chat's id (console chat "work:notes" is not "notes").
    assert names_chat("slack", "C0GENERAL", "T0TEAM:C0GENERAL")
    assert names_chat("slack", "T0TEAM:C0GENERAL", "T0TEAM:C0GENERAL")
    assert not names_chat("slack", "C0GENERAL", "T0TEAM:C0RANDOM")
    assert names_chat("console", "work:notes", "work:notes")
    assert not names_chat("console", "notes", "work:notes")
    assert not names_chat("telegram", "1", "-1001")
