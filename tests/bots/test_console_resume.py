"""The console after a crash: a message it resumes whose file is gone is explained.

Seen before: the restarted console answered "Something went wrong" and logged a traceback
(FileNotFoundError from reading the file the message named).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from bots.console import run_console, to_incoming
from core.app import open_core
from core.config import Settings
from core.testing.fake_openai import FakeOpenAI
from tests.conftest import FIXTURES


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite: a console alone on its database resumes whatever its chat left unanswered."""
    return f"sqlite+aiosqlite:///{tmp_path / 'relaybot.db'}"


@pytest.mark.parametrize("command", ["/voice", "/translate"])
async def test_a_resumed_message_whose_file_was_deleted_asks_for_it_again(
    settings: Settings,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    command: str,
) -> None:
    clip = tmp_path / "note.m4a"
    clip.write_bytes((FIXTURES / "audio-clip.m4a").read_bytes())
    msg = to_incoming(f"{command} {clip}", "default", "you")
    assert not isinstance(msg, str), msg
    # A console stored the message and was killed before answering it.
    async with open_core(settings) as dead:
        assert await dead.service.inbox.record(msg) is not None
    clip.unlink()  # the file is gone by the restart

    caplog.set_level(logging.INFO)
    out = io.StringIO()
    async with open_core(settings) as core:
        await run_console(core, stdin=io.StringIO("hello\n"), stdout=out)
    assert out.getvalue().splitlines() == [
        f"! I can no longer read {clip} (No such file or directory). Please send it again.",
        "echo: hello",
    ]
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert fake_openai.calls("/audio/transcriptions") == []
    assert fake_openai.calls("/audio/translations") == []
