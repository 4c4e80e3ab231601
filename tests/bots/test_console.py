"""User stories of the console adapter, driven end to end against the fake OpenAI server."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from bots.console import run_console
from core.app import Core
from core.testing.fake_openai import FakeOpenAI
from tests.conftest import FIXTURES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class TerminalOut(io.StringIO):
    """A stdout that says it is a terminal and remembers each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def isatty(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.writes.append(s)
        return super().write(s)


async def chat(core: Core, *lines: str, name: str = "default") -> str:
    """Pipe `lines` into the console like `printf ... | relaybot console` and return stdout."""
    out = io.StringIO()
    await run_console(
        core, chat=name, stdin=io.StringIO("".join(f"{x}\n" for x in lines)), stdout=out
    )
    return out.getvalue()


def chat_bodies(fake: FakeOpenAI) -> list[dict]:
    return [r.json for r in fake.calls("/chat/completions")]


async def test_piped_lines_are_each_answered(core: Core, fake_openai: FakeOpenAI) -> None:
    out = await chat(core, "hi there", "how are you?")
    assert out.splitlines() == ["echo: hi there", "echo: how are you?"]
    second = chat_bodies(fake_openai)[1]
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user"]
    assert second["messages"][1]["content"] == "hi there"
    assert second["stream"] is True


async def test_reset_forgets_the_conversation(core: Core, fake_openai: FakeOpenAI) -> None:
    out = await chat(core, "remember 42", "/reset", "what did I say?")
    assert "History cleared" in out
    last = chat_bodies(fake_openai)[-1]
    assert [m["content"] for m in last["messages"][1:]] == ["what did I say?"]


async def test_system_prompt_is_per_chat(core: Core, fake_openai: FakeOpenAI) -> None:
    await chat(core, "/system You are a pirate.", "ahoy")
    await chat(core, "hello", name="other")
    pirate, other = chat_bodies(fake_openai)
    assert pirate["messages"][0] == {"role": "system", "content": "You are a pirate."}
    assert other["messages"][0]["content"] == core.settings.system_prompt
    out = await chat(core, "/system")
    assert "You are a pirate." in out


async def test_model_lists_and_picks(core: Core, fake_openai: FakeOpenAI) -> None:
    out = await chat(core, "/model")
    assert "gpt-4o" in out and f"* {core.settings.chat_model}" in out
    out = await chat(core, "/model gpt-4o", "hi", "/model no-such-model")
    assert "now uses gpt-4o" in out
    assert "no model named no-such-model" in out
    assert chat_bodies(fake_openai)[-1]["model"] == "gpt-4o"


async def test_image_is_written_to_a_file(core: Core, fake_openai: FakeOpenAI) -> None:
    out = await chat(core, "/image a red bicycle")
    line = next(x for x in out.splitlines() if x.startswith("Image saved to "))
    path = Path(line.removeprefix("Image saved to "))
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    body = fake_openai.calls("/images/generations")[0].json
    assert body["prompt"] == "a red bicycle"


async def test_voice_note_is_transcribed_and_answered(core: Core, fake_openai: FakeOpenAI) -> None:
    out = await chat(core, f"/voice {FIXTURES / 'voice-note.ogg'}")
    assert out.strip() == f"echo: {fake_openai.transcript}"
    upload = fake_openai.calls("/audio/transcriptions")[0].form["file"]
    assert upload["filename"].endswith(".ogg")
    assert upload["data"] == (FIXTURES / "voice-note.ogg").read_bytes()


async def test_translate_prints_english_text(core: Core, fake_openai: FakeOpenAI) -> None:
    fake_openai.translation = "Hello, what is the weather like in Lisbon?"
    out = await chat(core, f"/translate {FIXTURES / 'audio-clip.m4a'}")
    assert out.strip() == "Transcript: Hello, what is the weather like in Lisbon?"
    assert fake_openai.calls("/audio/translations")[0].form["file"]["filename"].endswith(".m4a")
    assert not fake_openai.calls("/chat/completions")


async def test_missing_audio_file_is_a_clear_error(core: Core, fake_openai: FakeOpenAI) -> None:
    out = await chat(core, "/voice /no/such/file.ogg", "/voice")
    assert out.splitlines() == [
        "! No such file: /no/such/file.ogg",
        "! Usage: /voice PATH_TO_AUDIO_FILE",
    ]


async def test_help_lists_commands(core: Core) -> None:
    out = await chat(core, "/help")
    for command in ("/reset", "/system", "/model", "/image", "/usage", "/forget"):
        assert f"\n{command} - " in out
    # In the console's own forms: files by path, no groups.
    assert "/edit - edit an image file: /edit PATH INSTRUCTION" in out
    assert "/voice - transcribe an audio file and answer it: /voice PATH" in out
    assert "/translate - translate an audio file to English text: /translate PATH" in out
    assert "reply to a photo" not in out and "/voicemode" not in out


async def test_chats_are_separate(core: Core, fake_openai: FakeOpenAI) -> None:
    await chat(core, "I am in chat A", name="a")
    await chat(core, "I am in chat B", name="b")
    await chat(core, "back in A", name="a")
    last = chat_bodies(fake_openai)[-1]
    contents = [m["content"] for m in last["messages"][1:]]
    assert contents == ["I am in chat A", "echo: I am in chat A", "back in A"]


async def test_flagged_input_is_refused_and_not_sent(core: Core, fake_openai: FakeOpenAI) -> None:
    out = await chat(core, "FLAGME please", "hello")
    first = out.splitlines()[0]
    assert first.startswith("! Sorry") and "violence" in first
    bodies = chat_bodies(fake_openai)
    assert len(bodies) == 1
    # The refused turn never reaches the model, not even as history.
    assert all("FLAGME" not in str(m["content"]) for m in bodies[0]["messages"])


async def test_flagged_output_is_withheld(core: Core, fake_openai: FakeOpenAI) -> None:
    fake_openai.queue_reply("here is FLAGME content")
    out = await chat(core, "tell me something", "and now?")
    assert "FLAGME" not in out
    assert "withheld" in out.splitlines()[0]
    last = chat_bodies(fake_openai)[-1]
    assert all("FLAGME" not in str(m["content"]) for m in last["messages"])


async def test_moderation_off_sends_nothing_to_moderation(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    from core.config import ModerationPolicy

    core.service.moderator.policy = ModerationPolicy.OFF
    out = await chat(core, "FLAGME is fine here")
    assert out.strip() == "echo: FLAGME is fine here"
    assert not fake_openai.calls("/moderations")


async def test_stream_is_printed_as_it_arrives_on_a_terminal(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    fake_openai.queue_reply("one two three four five six")
    out = TerminalOut()
    await run_console(core, stdin=io.StringIO("count\n"), stdout=out)
    assert "one two three four five six" in out.getvalue()
    answer_writes = [
        w for w in out.writes if w.strip() and w.strip() in "one two three four five six"
    ]
    assert len(answer_writes) > 1


async def test_quota_exhausted_is_explained(core: Core, fake_openai: FakeOpenAI) -> None:
    fake_openai.fail_next(
        429, code="insufficient_quota", message="You exceeded your quota", path="/chat/completions"
    )
    out = await chat(core, "hi")
    assert "quota is used up" in out
    assert len(fake_openai.calls("/chat/completions")) == 1


async def test_cut_stream_keeps_partial_answer_marked(core: Core, fake_openai: FakeOpenAI) -> None:
    fake_openai.queue_reply("a fairly long answer that will be cut in the middle")
    fake_openai.cut_stream_after = 2
    out = await chat(core, "talk")
    assert "[answer cut short]" in out
    assert "The answer was cut short" in out
    fake_openai.cut_stream_after = None
    await chat(core, "again")
    last = chat_bodies(fake_openai)[-1]["messages"]
    assert last[2]["role"] == "assistant" and last[2]["content"]


async def test_edit_refuses_a_file_that_is_not_an_image_and_edits_a_real_one(
    core: Core, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.png"  # named like a picture, holding text
    notes.write_text("shopping list: eggs, milk")
    out = await chat(core, f"/edit {notes} make it blue", f"/edit {FIXTURES / 'photo.jpg'} sepia")
    refusal, saved = out.splitlines()
    assert refusal == "! I can only edit PNG, JPEG or WebP images."
    assert saved.startswith("Image saved to ")
    (upload,) = fake_openai.calls("/images/edits")  # the text file never left the machine
    assert upload.form["image"]["content_type"] == "image/jpeg"


async def test_a_picture_the_image_service_refuses_is_explained(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    fake_openai.fail_next(
        400,
        message="Invalid image file or mode for image 1, please check your image file.",
        path="/images/edits",
    )
    out = await chat(core, f"/edit {FIXTURES / 'square.png'} add a hat")
    assert out.strip() == (
        "! The image service could not use that picture. "
        "Please send it again as a PNG or JPEG photo."
    )


async def test_an_answer_a_content_filter_stopped_says_so(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    fake_openai.finish_reason = "content_filter"  # as Azure OpenAI ends a filtered answer
    fake_openai.queue_reply("Here is how")
    fake_openai.queue_reply("")
    out = await chat(core, "how do I pick a lock?", "and a safe?")
    assert out.splitlines() == [
        "Here is how",
        "",
        "[stopped by the provider's content filter]",
        "! Sorry, I can't help with that.",
    ]


async def test_a_request_a_proxy_finds_too_large_is_trimmed_once_then_explained(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    # nginx in front of a model server: 413 for a body over its limit (1 MB by default).
    fake_openai.fail_next(413, message="Request Entity Too Large", path="/chat/completions")
    assert (await chat(core, "first question")).strip() == "echo: first question"
    assert len(fake_openai.chat_requests()) == 2  # asked again, with less history

    fake_openai.fail_next(
        413, message="Request Entity Too Large", times=2, path="/chat/completions"
    )
    out = await chat(core, "second question")
    # The second request still held the first exchange: the conversation, not the
    # message, is what no longer fits.
    assert out.strip() == (
        "! This conversation no longer fits the model, even with its older messages left "
        "out. Send /reset to start afresh."
    )
    assert len(fake_openai.chat_requests()) == 4

    fake_openai.fail_next(
        413, message="Request Entity Too Large", times=2, path="/chat/completions"
    )
    out = await chat(core, "/reset", "third question")
    assert out.splitlines()[-1] == (
        "! That message is too long for the model. Please send something shorter."
    )


async def test_a_chat_prompt_too_long_for_a_newly_picked_model_is_explained(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    fake_openai.models.append("gpt-3.5-turbo")  # a 16k window beside gpt-4o-mini's 128k
    long_prompt = "Answer as a patient teacher would, with examples. " * 2000  # ~20k tokens
    out = await chat(
        core,
        f"/system {long_prompt}",
        "hi",
        "/model gpt-3.5-turbo",
        "hi again",
        "/system default",
        "and now?",
    )
    assert out.splitlines() == [
        "System prompt updated for this chat.",
        "echo: hi",
        "This chat now uses gpt-3.5-turbo.",
        "! This chat's system prompt is too long for gpt-3.5-turbo. Set a shorter one with "
        "/system TEXT, or go back to the default with /system default.",
        "System prompt reset to the default.",
        "echo: and now?",
    ]


async def test_a_refusal_the_model_streams_is_shown_as_its_answer(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    # OpenAI streams a refusal in `delta.refusal`, with no content: shown as its JSON
    # answer's `message.refusal` is, not as "an empty answer".
    fake_openai.queue_refusal("I'm sorry, I can't help with that request.")
    out = await chat(core, "how do I pick a lock?", "and now?")
    assert out.splitlines() == ["I'm sorry, I can't help with that request.", "echo: and now?"]
    assert chat_bodies(fake_openai)[0]["stream"] is True
    # It stays in the history as the answer given.
    last = chat_bodies(fake_openai)[-1]["messages"]
    assert last[2] == {
        "role": "assistant",
        "content": "I'm sorry, I can't help with that request.",
    }


async def test_an_endpoint_that_starts_redirecting_tells_the_person_and_alerts_the_operator(
    core: Core, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake_openai.redirect_to = "https://llm.example.test/v1"  # a proxy now sends http -> https
    with caplog.at_level(logging.ERROR):
        out = await chat(core, "hi")
    assert out.splitlines() == [
        "! The bot is not configured correctly. The operator has been told."
    ]
    alerts = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(
        "operator action needed" in a
        and "redirects to https://llm.example.test/v1/" in a
        and "set OPENAI_BASE_URL to https://llm.example.test/v1" in a
        for a in alerts
    ), alerts
