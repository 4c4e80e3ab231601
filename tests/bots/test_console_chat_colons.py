"""A console chat's name may hold ":" ("work:notes"): it is a chat of its own, not chat "notes"
of a workspace "work". A budget or allow-list entry naming console:notes named work:notes too
(the match of a Slack channel's own id in TEAM:CHANNEL)."""

from __future__ import annotations

import io

from bots.console import run_console
from core.app import Core, open_core
from core.config import Settings
from core.testing.fake_openai import FakeOpenAI

REFUSED = "! This chat has no budget for the bot. Ask one of its admins."
PRIVATE = "! Sorry, this bot is private. Ask its operator to let you in."


async def chat(core: Core, *lines: str, name: str = "default", user: str = "you") -> str:
    out = io.StringIO()
    stdin = io.StringIO("".join(f"{x}\n" for x in lines))
    await run_console(core, chat=name, user=user, stdin=stdin, stdout=out)
    return out.getvalue()


async def test_a_chat_budget_applies_to_that_console_chat_only(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    out = await chat(core, "/budget chat console:notes day 0", name="admin")
    assert out.strip() == "The daily budget of chat console:notes is now $0 (no access)."
    assert (await chat(core, "hello", name="notes")).strip() == REFUSED
    for other in ("work:notes", "a:b:notes"):
        assert (await chat(core, "hello", name=other)).strip() == "echo: hello", other
    assert len(fake_openai.chat_requests()) == 2


async def test_an_allowed_console_chat_lets_in_that_chat_only(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    listed = {"allowed_chats": "console:notes", "admins": "console:boss"}
    async with open_core(settings.model_copy(update=listed)) as core:
        allowed = await chat(core, "hello", name="notes")
        other = await chat(core, "hello", name="work:notes")
    assert allowed.strip() == "echo: hello"
    assert other.strip() == PRIVATE
    assert len(fake_openai.chat_requests()) == 1
