"""Usage, budgets, access and privacy as a person meets them in the console and the CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from bots.console import run_console
from core.app import Core, open_core
from core.config import Settings
from core.testing.fake_openai import FakeOpenAI
from tests.conftest import FIXTURES
from tests.processes import run_relaybot

PRICES = json.dumps({"gpt-4o-mini": {"input": 1000, "output": 1000}})


async def chat(core: Core, *lines: str, name: str = "default", user: str = "you") -> str:
    out = io.StringIO()
    stdin = io.StringIO("".join(f"{x}\n" for x in lines))
    await run_console(core, chat=name, user=user, stdin=stdin, stdout=out)
    return out.getvalue()


async def test_usage_in_the_console_shows_spend_and_everyone_to_the_operator(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    async with open_core(settings.model_copy(update={"prices": PRICES})) as core:
        await chat(core, "hello", name="work")
        out = await chat(core, "/usage", name="work")
    assert out.startswith("Your usage:\n  today")
    # Nobody is configured as admin: the person at the console runs the bot and sees it all.
    assert "All users" in out and "console:you" in out and "console:work" in out


async def test_a_console_user_with_budget_zero_is_told_once_per_message(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    zero = settings.model_copy(update={"budget_user_daily": 0.0})
    async with open_core(zero) as core:
        out = await chat(core, "hello", "/budget")
    assert out.splitlines() == [
        "! You have no budget for this bot. Ask one of its admins if you need one.",
        "Your daily budget: $0 (no access)",
    ]
    assert not fake_openai.chat_requests()


async def test_console_users_who_are_not_admins_cannot_change_the_model(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    async with open_core(settings.model_copy(update={"admins": "console:boss"})) as core:
        refused = await chat(core, "/model gpt-4o", user="you")
        allowed = await chat(core, "/model gpt-4o", user="boss")
    assert refused.strip() == "! Sorry, only the bot's admins can do that."
    assert allowed.strip() == "This chat now uses gpt-4o."


async def test_forget_in_the_console(core: Core, fake_openai: FakeOpenAI) -> None:
    out = await chat(core, "remember 42", "/forget", "what did I say?")
    assert "Done. I deleted everything stored about this chat (2 messages" in out
    last = fake_openai.chat_requests()[-1]
    assert [m["content"] for m in last["messages"][1:]] == ["what did I say?"]


async def test_forget_leaves_a_chat_whose_name_extends_this_ones(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    # "work:notes" is a chat of its own in the console, not a thread of "work".
    await chat(core, "keep this", name="work:notes")
    out = await chat(core, "forget this", "/forget", name="work")
    assert "Done. I deleted everything stored about this chat (2 messages" in out
    await chat(core, "what did I say?", name="work:notes")
    last = fake_openai.chat_requests()[-1]
    assert [m["content"] for m in last["messages"][1:]][:1] == ["keep this"]


def saved(out: str) -> list[Path]:
    return [Path(x.removeprefix("Image saved to ")) for x in out.splitlines() if "saved" in x]


async def test_forget_deletes_the_images_this_chat_saved(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    images = Path(core.settings.image_dir)
    (kept,) = saved(await chat(core, "/image a cat", name="other"))
    out = await chat(core, "/image a dog", "/image a fox", "/forget")
    assert len(saved(out)) == 2
    # Only the other chat's picture is left.
    assert [p for p in images.rglob("*") if p.is_file()] == [kept]
    assert kept.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("forgotten", "others"),
    [("a", ["a-", "a--b", "A"]), ("my chat", ["my_chat", "my-chat"]), ("..", [".", "x"])],
)
async def test_forget_leaves_the_images_of_chats_with_similar_names(
    core: Core, fake_openai: FakeOpenAI, forgotten: str, others: list[str]
) -> None:
    images = Path(core.settings.image_dir)
    kept = [path for name in others for path in saved(await chat(core, "/image x", name=name))]
    mine = saved(await chat(core, "/image y", name=forgotten))
    assert len(kept) == len(others) and len(mine) == 1
    assert all(p.resolve().is_relative_to(images.resolve()) for p in kept + mine)
    out = await chat(core, "/forget", name=forgotten)
    assert out.startswith("Done. I deleted everything stored about this chat")
    assert not mine[0].exists()
    assert all(p.is_file() for p in kept)


# -- the relaybot command ------------------------------------------------------------------------
run = run_relaybot


def test_relaybot_usage_prints_a_table_and_json(endpoint: FakeOpenAI, tmp_path: Path) -> None:
    env = {
        "OPENAI_API_KEY": "sk-test-key",
        "OPENAI_BASE_URL": endpoint.base_url,
        "RELAYBOT_PRICES": PRICES,
        "USER": "ada",
    }
    assert (
        run(["console", "--chat", "work"], tmp_path, "hello\nhow are you\n", **env).returncode == 0
    )
    assert (
        run(["console", "--chat", "home"], tmp_path, "hi\n", **{**env, "USER": "bob"}).returncode
        == 0
    )

    table = run(["usage"], tmp_path, **env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "user",
        "today",
        "this",
        "month",
        "all",
        "time",
        "requests",
        "tokens",
        "in",
        "tokens",
        "out",
    ]
    ada = next(x for x in lines if x.startswith("console:ada"))
    assert ada.split()[4] == "2"  # requests
    assert any(x.startswith("console:work") for x in lines)
    assert any(x.startswith("TOTAL") for x in lines)

    as_json = run(["usage", "--json"], tmp_path, **env)
    report = json.loads(as_json.stdout)
    users = {u["user"]: u for u in report["users"]}
    assert set(users) == {"console:ada", "console:bob"}
    assert users["console:ada"]["all_time"]["requests"] == 2
    total = report["total"]["all_time"]["cost_usd"]
    assert total == pytest.approx(sum(u["all_time"]["cost_usd"] for u in users.values()))
    assert total > 0 and report["currency"] == "USD"


def test_relaybot_export_writes_valid_jsonl(endpoint: FakeOpenAI, tmp_path: Path) -> None:
    env = {"OPENAI_API_KEY": "sk-test-key", "OPENAI_BASE_URL": endpoint.base_url}
    run(["console", "--chat", "work"], tmp_path, "/system Be a pirate.\nhello\nbye\n", **env)
    run(["console", "--chat", "home"], tmp_path, "hi\n", **env)

    result = run(["export", "--format", "openai-jsonl", "--chat", "console:work"], tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert json.loads(line) == {
        "messages": [
            {"role": "system", "content": "Be a pirate."},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "echo: hello"},
            {"role": "user", "content": "bye"},
            {"role": "assistant", "content": "echo: bye"},
        ]
    }
    assert "exported 1 conversation" in result.stderr

    out = tmp_path / "all.jsonl"
    every = run(["export", "--since", "1d", "-o", str(out)], tmp_path)
    assert every.returncode == 0, every.stderr
    assert every.stdout == ""
    for text in out.read_text().splitlines():
        messages = json.loads(text)["messages"]
        assert messages[0]["role"] == "system" and messages[-1]["role"] == "assistant"
    assert len(out.read_text().splitlines()) == 2

    bad = run(["export", "--since", "last tuesday"], tmp_path)
    assert bad.returncode == 2 and "--since" in bad.stderr and "Traceback" not in bad.stderr


def test_usage_on_an_empty_database_is_one_clear_line(tmp_path: Path) -> None:
    result = run(["usage"], tmp_path)
    assert result.returncode == 2
    assert "relaybot db upgrade" in result.stderr
    assert "Traceback" not in result.stderr


async def test_audio_files_without_a_duration_are_billed_as_the_endpoint_reports(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    # A file given by path has no duration (nor have Slack uploads): before, it cost nothing.
    prices = {
        "gpt-4o-mini": {"input": 0, "output": 0},
        "gpt-4o-mini-transcribe": {"audio_input": 4000, "input": 0, "output": 0},
        "whisper-1": {"audio_minute": 6.0},
    }
    fake_openai.audio_seconds = 7.5  # 75 audio tokens for gpt-4o-mini-transcribe
    priced = settings.model_copy(update={"prices": json.dumps(prices)})
    voice = FIXTURES / "voice-note.ogg"
    async with open_core(priced) as core:
        out = await chat(core, f"/voice {voice}", f"/translate {voice}", "/usage")
    # 75 audio tokens at $4,000 per 1M = $0.30; whisper bills whole seconds: 8 s at $6/min.
    assert "  today            $1.10  (3 requests)" in out.splitlines(), out


async def test_a_global_budget_with_a_subject_is_refused_not_confirmed(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    # The bot's budget has no subject: one given never matched, so "$0" was confirmed and
    # nothing was limited.
    out = await chat(core, "/budget global everyone day 0", "hello", "/budget")
    assert out.splitlines() == [
        "! The bot's budget takes no name: /budget global day|month AMOUNT|off|default "
        "(one person's or one chat's: /budget user ID ..., /budget chat ID ...)",
        "echo: hello",
        "No budget limits apply to you.",
    ]
    out = await chat(core, "/budget global day 0", "hello")
    assert out.splitlines() == [
        "The daily budget of the bot is now $0 (no access).",
        "! The bot has no budget to answer right now. Its admins have been told.",
    ]
    assert len(fake_openai.chat_requests()) == 1


async def test_a_chat_budget_set_by_name_applies_to_that_console_chat(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    # Set from another chat, without the platform: it means this platform's chat "work".
    out = await chat(core, "/budget chat work day 0", name="admin")
    assert out.strip() == "The daily budget of chat console:work is now $0 (no access)."
    refused = await chat(core, "hello", "/budget", name="work")
    assert refused.splitlines() == [
        "! This chat has no budget for the bot. Ask one of its admins.",
        "This chat's daily budget: $0 (no access)",
    ]
    # The full key and `here` name the same chat.
    assert "console:work is back" in await chat(core, "/budget chat console:work day default")
    assert (await chat(core, "hello", name="work")).strip() == "echo: hello"
    here = await chat(core, "/budget chat here month 0", "hello", name="work")
    assert here.splitlines() == [
        "The monthly budget of chat console:work is now $0 (no access).",
        "! This chat has no budget for the bot. Ask one of its admins.",
    ]
    assert len(fake_openai.chat_requests()) == 1


async def test_budget_usage_in_help_and_errors_names_the_forms(core: Core) -> None:
    out = await chat(core, "/help", "/budget user nobody weekly 5")
    assert "/budget - your budgets and what is left (admins: /budget user|chat|global ...)" in out
    assert out.splitlines()[-1] == (
        "! Usage: /budget user PLATFORM:ID | chat PLATFORM:CHAT | chat here | global, then "
        "day or month, then AMOUNT, off or default (AMOUNT in dollars; 0 = no access, off = "
        "no limit; an ID without PLATFORM: is one of this platform)"
    )
