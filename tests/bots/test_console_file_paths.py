"""Files whose paths have spaces in them, given to /voice, /translate and /edit.

Seen before: `/voice '/path/my voice.ogg'` and `/voice /path/my\\ voice.ogg` said "No such
file" (the quotes and the backslash were taken as part of the name), /edit could not be
given such a file at all, and a missing /edit file was answered with its usage line.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from core.app import Core
from core.testing.fake_openai import FakeOpenAI
from tests.bots.test_console import chat
from tests.conftest import FIXTURES


def voice_file(tmp_path: Path) -> Path:
    path = tmp_path / "my voice note.ogg"
    shutil.copy(FIXTURES / "voice-note.ogg", path)
    return path


async def test_a_voice_note_path_with_spaces_may_be_quoted_or_escaped(
    core: Core, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    path = voice_file(tmp_path)
    escaped = str(path).replace(" ", "\\ ")

    out = await chat(core, f"/voice '{path}'", f'/voice "{path}"', f"/voice {escaped}")

    assert out.splitlines() == [f"echo: {fake_openai.transcript}"] * 3
    uploads = [c.form["file"]["filename"] for c in fake_openai.calls("/audio/transcriptions")]
    assert uploads == ["my voice note.ogg"] * 3


async def test_a_voice_note_path_with_spaces_typed_as_it_is_still_works(
    core: Core, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    path = voice_file(tmp_path)

    out = await chat(core, f"/voice {path}", f"/translate {path}")

    assert out.splitlines() == [
        f"echo: {fake_openai.transcript}",
        f"Transcript: {fake_openai.translation}",
    ]


async def test_a_quoted_missing_file_is_named_without_its_quotes(
    core: Core, tmp_path: Path
) -> None:
    missing = tmp_path / "not here.ogg"
    escaped = str(missing).replace(" ", "\\ ")

    out = await chat(core, f"/voice '{missing}'", f"/translate {escaped}")

    assert out.splitlines() == [f"! No such file: {missing}"] * 2


async def test_edit_takes_a_quoted_picture_path_and_the_instruction_after_it(
    core: Core, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    picture = tmp_path / "holiday photo.png"
    shutil.copy(FIXTURES / "square.png", picture)

    out = await chat(core, f"/edit '{picture}' add a hat, it's cold")

    assert "Image saved to " in out, out
    (upload,) = fake_openai.calls("/images/edits")
    assert upload.form["prompt"] == "add a hat, it's cold"
    assert upload.form["image"]["filename"] == "holiday photo.png"


async def test_edit_of_a_missing_file_says_no_such_file(
    core: Core, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    missing = tmp_path / "no photo.png"

    out = await chat(core, f'/edit "{missing}" add a hat', "/edit")

    assert out.splitlines() == [
        f"! No such file: {missing}",
        "! Usage: /edit PATH_TO_IMAGE INSTRUCTION",
    ]
    assert not fake_openai.calls("/images/edits")
