"""Export: stored conversations as OpenAI chat fine-tuning JSON Lines, validated line by line."""

from __future__ import annotations

import io
import itertools
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update

from core.app import Core
from core.db.models import Message, utcnow
from core.export import build_example, export_openai_jsonl
from core.testing.fake_openai import FakeOpenAI
from core.testing.sink import RecordingSink
from core.types import ChatRef, IncomingMessage, Sender
from tests.processes import run_relaybot

_ids = itertools.count(1)


def message(text: str, chat: str = "c1", user: str = "u1", direct: bool = True) -> IncomingMessage:
    return IncomingMessage(
        chat=ChatRef("test", chat),
        sender=Sender(user, user.title()),
        event_key=f"export:{next(_ids)}",
        text=text,
        is_direct=direct,
    )


def validate(line: str) -> list[dict[str, Any]]:
    """The checks OpenAI's fine-tuning upload makes, as far as the format goes."""
    example = json.loads(line)
    assert set(example) == {"messages"}
    messages = example["messages"]
    assert isinstance(messages, list) and len(messages) >= 3
    assert messages[0]["role"] == "system"
    assert messages[-1]["role"] == "assistant"
    for m in messages:
        assert m["role"] in ("system", "user", "assistant")
        assert isinstance(m["content"], str) and m["content"]
        assert set(m) <= {"role", "content", "name"}
    assert any(m["role"] == "user" for m in messages)
    return messages


async def export(core: Core, **kw: Any) -> list[list[dict[str, Any]]]:
    out = io.StringIO()
    count = await export_openai_jsonl(
        core.engine, out, default_system_prompt=core.settings.system_prompt, **kw
    )
    lines = out.getvalue().splitlines()
    assert len(lines) == count
    return [validate(line) for line in lines]


async def test_export_writes_one_valid_example_per_chat(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    async def say(text: str, **kw: Any) -> None:
        await core.service.handle(message(text, **kw), RecordingSink())

    await say("/system You are a pirate.")
    await say("hello")
    await say("FLAGME refused prompt")  # moderated-out input
    fake_openai.queue_reply("FLAGME withheld answer")
    await say("say something bad")  # moderated-out output
    fake_openai.queue_reply("a long answer that is cut")
    fake_openai.cut_stream_after = 2
    await say("tell me a story")  # partial answer
    fake_openai.cut_stream_after = None
    await say("bye")
    await say("hi all", chat="group", user="ann", direct=False)
    await say("only a question", chat="unanswered")
    await core.store.append_messages(
        "test:unanswered",
        [{"role": "user", "content": "x", "token_count": 1, "encoding": "o200k_base"}],
    )
    await core.service.handle(message("/reset", chat="unanswered"), RecordingSink())

    examples = await export(core)
    assert len(examples) == 2
    pirate, group = examples  # in chat key order
    assert pirate == [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "echo: hello"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "echo: bye"},
    ]
    assert group[0] == {"role": "system", "content": core.settings.system_prompt}
    assert group[1] == {"role": "user", "content": "hi all", "name": "Ann"}
    dumped = json.dumps(examples)
    for gone in ("FLAGME", "say something bad", "tell me a story", "cut"):
        assert gone not in dumped


async def test_export_filters_by_chat_and_since(core: Core, fake_openai: FakeOpenAI) -> None:
    for chat in ("a", "b"):
        await core.service.handle(message(f"old in {chat}", chat=chat), RecordingSink())
    async with core.store._session() as session:
        await session.execute(update(Message).values(created_at=utcnow() - timedelta(days=10)))
        await session.commit()
    for chat in ("a", "b"):
        await core.service.handle(message(f"new in {chat}", chat=chat), RecordingSink())

    only_a = await export(core, chats=["test:a"])
    assert [m["content"] for m in only_a[0][1:]] == [
        "old in a",
        "echo: old in a",
        "new in a",
        "echo: new in a",
    ]
    recent = await export(core, since=utcnow() - timedelta(days=1))
    assert [[m["content"] for m in e[1:]] for e in recent] == [
        ["new in a", "echo: new in a"],
        ["new in b", "echo: new in b"],
    ]


async def test_relaybot_export_gives_a_topic_the_system_prompt_it_inherits(
    core: Core, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    def in_group(text: str, topic: str | None = None) -> IncomingMessage:
        return IncomingMessage(
            chat=ChatRef("telegram", "-100", topic),
            sender=Sender("u1", "Ann"),
            event_key=f"export:{next(_ids)}",
            text=text,
            is_direct=False,
        )

    await core.service.handle(in_group("/system You are a pirate."), RecordingSink())
    await core.service.handle(in_group("hello in the topic", topic="7"), RecordingSink())
    sent = fake_openai.chat_requests()[-1]["messages"][0]
    assert sent == {"role": "system", "content": "You are a pirate."}  # what the model got

    result = run_relaybot(
        ["export", "--chat", "telegram:-100:7"],
        tmp_path,
        RELAYBOT_DATABASE_URL=core.settings.database_url,
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert validate(line) == [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "hello in the topic", "name": "Ann"},
        {"role": "assistant", "content": "echo: hello in the topic"},
    ]


def test_a_withheld_answer_takes_its_prompts_with_it() -> None:
    rows = [
        ("user", "q1", None, "ok"),
        ("assistant", "a1", None, "ok"),
        ("user", "q2", "Bob", "ok"),
        ("user", "q3", "Ann", "ok"),
        ("assistant", "bad", None, "withheld"),
        ("user", "q4", None, "withheld"),
        ("user", "q5", None, "ok"),
        ("assistant", "a5", None, "ok"),
        ("user", "trailing", None, "ok"),
    ]
    example = build_example("sys", rows)
    assert example is not None
    assert [m["content"] for m in example["messages"]] == ["sys", "q1", "a1", "q5", "a5"]
    assert build_example("sys", [("user", "q", None, "ok")]) is None


def test_a_chat_keys_parent_is_the_one_its_chat_ref_names() -> None:
    for ref in (
        ChatRef("telegram", "-100123", "7"),
        ChatRef("telegram", "-100123"),
        ChatRef("slack", "C789", "1700000000.000100"),
        ChatRef("slack", "T0TEAM:C789", "1700000000.000100"),  # as the Slack adapter names it
        ChatRef("slack", "T0TEAM:D42"),
        ChatRef("slack", "D42"),
        ChatRef("console", "default"),
    ):
        assert ChatRef.parent_of(ref.key) == ref.parent_key
    assert ChatRef.parent_of("console:notes:work") is None  # a console chat named "notes:work"


async def test_a_slack_threads_example_takes_its_channels_system_prompt(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    # As the Slack adapter names them: the channel TEAM:CHANNEL, a thread under it by ts.
    channel = ChatRef("slack", "T0TEAM:C0GENERAL")
    thread = ChatRef("slack", "T0TEAM:C0GENERAL", "1700000000.000100")

    async def say(text: str, chat: ChatRef) -> None:
        msg = IncomingMessage(
            chat=chat, sender=Sender("U0ADA", "ada"), event_key=f"export:{next(_ids)}", text=text
        )
        await core.service.handle(msg, RecordingSink())

    await say("/system You answer in haiku.", channel)
    await say("what is a lease?", thread)

    (example,) = await export(core)
    assert example[0] == {"role": "system", "content": "You answer in haiku."}
