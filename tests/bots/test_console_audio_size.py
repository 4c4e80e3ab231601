"""An audio file near OpenAI's 25 MB limit, sent with the console's /voice.

OpenAI's audio endpoints refuse a request body over 26,214,400 bytes with a 413 ("Maximum
content size limit (26214400) exceeded (N bytes read)", type server_error): the limit counts
the whole multipart body, the form's fields and framing with the file. A file at the
default RELAYBOT_MAX_AUDIO_BYTES still fits; a larger one the operator let through is
explained as the transcription service's limit, not as a message too long for the model.
"""

from __future__ import annotations

from pathlib import Path

from core.app import Core, open_core
from core.config import Settings
from core.testing.fake_openai import MAX_AUDIO_REQUEST_BYTES, FakeOpenAI
from tests.bots.test_console import chat

MiB = 1024 * 1024


def ogg_file(path: Path, size: int) -> Path:
    """An audio file of exactly `size` bytes (an Ogg page's signature, then silence)."""
    path.write_bytes(b"OggS" + b"\x00" * (size - 4))
    return path


async def test_a_file_at_the_default_limit_fits_the_request_openai_takes(
    core: Core, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    limit = Settings.model_fields["max_audio_bytes"].default
    assert core.settings.max_audio_bytes == limit
    voice = ogg_file(tmp_path / "long talk.ogg", limit)

    out = await chat(core, f"/voice {voice}")

    assert out.strip() == f"echo: {fake_openai.transcript}"
    (sent,) = fake_openai.calls("/audio/transcriptions")
    assert len(sent.form["file"]["data"]) == limit
    assert len(sent.body) <= MAX_AUDIO_REQUEST_BYTES  # the file and its form, as OpenAI counts


async def test_a_file_the_transcription_service_finds_too_large_is_explained_once(
    settings: Settings, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    # The operator raised RELAYBOT_MAX_AUDIO_BYTES past what OpenAI takes.
    raised = settings.model_copy(update={"max_audio_bytes": 30 * MiB})
    voice = ogg_file(tmp_path / "lecture.ogg", 25 * MiB)

    async with open_core(raised) as core:
        out = await chat(core, f"/voice {voice}", "and now a question")

    assert out.splitlines() == [
        "! That audio file is too large for the transcription service (its limit is 25 MB). "
        "Please send a shorter or more compressed recording.",
        "echo: and now a question",
    ]
    assert len(fake_openai.calls("/audio/transcriptions")) == 1  # refused, not retried
    # Nothing of the file reached the chat model (nor the history it is sent).
    (asked,) = fake_openai.chat_requests()
    assert [m["content"] for m in asked["messages"][1:]] == ["and now a question"]


async def test_a_file_over_the_default_limit_is_refused_naming_the_limit(
    core: Core, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    voice = ogg_file(tmp_path / "lecture.ogg", 25 * MiB)

    out = await chat(core, f"/voice {voice}")

    assert out.strip() == "! That audio file is too large to transcribe (the limit is 24.9 MB)."
    assert fake_openai.calls("/audio/transcriptions") == []
