"""Text that is not valid Unicode, met through the console: every line is still answered.

Seen before: `printf 'hello\\n\\xff\\xfe\\nbye\\n' | relaybot console` exited 1 with a
UnicodeEncodeError (Python's stdin turns bytes that are not UTF-8 into lone surrogates,
which the event's storing could not encode) and "bye" was never answered; on PostgreSQL
the driver raised DataError. A platform's JSON can carry a lone "\\ud83d" the same way.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from sqlalchemy import select

from core.app import Core
from core.db.models import Message
from core.testing.fake_openai import FakeOpenAI
from tests.bots.test_console import chat
from tests.processes import RELAYBOT, clean_env, endpoint_env


def user_turns(request: dict) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "user"]


async def test_bytes_that_are_not_utf8_do_not_end_the_piped_console(
    endpoint: FakeOpenAI, tmp_path: Path, database_url: str
) -> None:
    env = clean_env(
        **endpoint_env(endpoint),
        RELAYBOT_DATABASE_URL=database_url,
        LC_ALL="C.UTF-8",
        PYTHONIOENCODING="",
    )
    result = await asyncio.to_thread(
        subprocess.run,
        [RELAYBOT, "console"],
        input=b"hello\n\xff\xfe bad bytes\nbye\n",
        capture_output=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )

    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr
    assert "UnicodeEncodeError" not in stderr
    assert result.stdout.decode().splitlines() == [
        "echo: hello",
        "echo: \ufffd\ufffd bad bytes",
        "echo: bye",
    ]
    assert user_turns(endpoint.chat_requests()[-1]) == ["hello", "\ufffd\ufffd bad bytes", "bye"]


async def test_a_lone_surrogate_is_stored_and_sent_as_a_replacement_character(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    # A lone half of an emoji, an emoji split in two halves, and a line after them.
    out = await chat(core, "half \ud83d here", "whole \ud83d\ude00 here", "bye")

    assert out.splitlines() == [
        "echo: half \ufffd here",
        "echo: whole \U0001f600 here",
        "echo: bye",
    ]
    assert user_turns(fake_openai.chat_requests()[-1]) == [
        "half \ufffd here",
        "whole \U0001f600 here",
        "bye",
    ]
    async with core.engine.connect() as conn:
        stored = (
            await conn.execute(
                select(Message.content).where(Message.role == "user").order_by(Message.id)
            )
        ).scalars()
        assert list(stored) == ["half \ufffd here", "whole \U0001f600 here", "bye"]
