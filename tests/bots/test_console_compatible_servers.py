"""OpenAI-compatible servers that speak the API their own way, met through the console:
what the person reads, what is kept for the next turn, what the operator's log says."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from aiohttp import web

from bots.console import run_console
from core.app import Core, open_core
from core.config import Settings
from core.testing.fake_openai import FakeOpenAI
from tests.processes import endpoint_env, run_relaybot


async def chat(core: Core, *lines: str) -> str:
    """Pipe `lines` into the console like `printf ... | relaybot console` and return stdout."""
    out = io.StringIO()
    stdin = io.StringIO("".join(f"{x}\n" for x in lines))
    await run_console(core, chat="default", stdin=stdin, stdout=out)
    return out.getvalue()


def sent_history(fake: FakeOpenAI) -> list[str]:
    """The assistant turns the last chat request sent back to the model."""
    last = fake.calls("/chat/completions")[-1].json
    return [m["content"] for m in last["messages"] if m["role"] == "assistant"]


async def test_reasoning_written_into_the_answer_is_neither_shown_nor_sent_back(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    # Ollama / vLLM without a reasoning parser: "<think>...</think>" in `content`.
    fake_openai.think_tags = "block"
    out = await chat(core, "hello", "and again", "once more")
    assert out.splitlines() == ["echo: hello", "echo: and again", "echo: once more"]
    assert sent_history(fake_openai) == ["echo: hello", "echo: and again"]


async def test_reasoning_in_a_whole_json_answer_is_taken_out(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    fake_openai.think_tags = "block"
    fake_openai.stream_as_json = True  # a server that ignores `stream`
    out = await chat(core, "hello", "again")
    assert out.splitlines() == ["echo: hello", "echo: again"]
    assert sent_history(fake_openai) == ["echo: hello"]


@pytest.mark.parametrize("whole", [False, True], ids=["streamed", "json"])
async def test_an_answer_about_the_tags_is_shown_as_written(
    core: Core, fake_openai: FakeOpenAI, whole: bool
) -> None:
    fake_openai.stream_as_json = whole
    about = "R1 ends its reasoning with </think> and then answers."
    fake_openai.queue_reply(about)
    fake_openai.queue_reply("Step one is done. Then the closing tag </think> ends the block.")
    out = await chat(core, "how does R1 mark reasoning?", "and then?")
    assert out.splitlines() == [
        about,
        "Step one is done. Then the closing tag </think> ends the block.",
    ]


async def test_an_answer_that_is_only_reasoning_is_an_empty_answer(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    fake_openai.think_tags = "block"
    fake_openai.queue_reply("")
    out = await chat(core, "hello")
    assert fake_openai.thinking not in out and "think>" not in out
    assert "empty" in out.lower() or "nothing" in out.lower(), out


async def test_a_stream_ending_after_its_finish_reason_without_done_is_a_whole_answer(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    fake_openai.omit_done = True  # ik_llama.cpp, older TGI
    out = await chat(core, "hello there", "again")
    assert out.splitlines() == ["echo: hello there", "echo: again"]
    assert sent_history(fake_openai) == ["echo: hello there"]


async def test_chunks_carrying_a_null_error_are_answered(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    fake_openai.null_error = True  # Foundry Local
    assert (await chat(core, "hello")).splitlines() == ["echo: hello"]


@pytest.mark.parametrize("label", ["application/json", "text/plain; charset=utf-8"])
async def test_an_event_stream_under_another_label_is_read(
    core: Core, fake_openai: FakeOpenAI, label: str
) -> None:
    fake_openai.stream_content_type = label
    assert (await chat(core, "hello")).splitlines() == ["echo: hello"]


async def test_a_whole_json_answer_labelled_event_stream_is_read(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    fake_openai.stream_as_json = True
    fake_openai.stream_content_type = "text/event-stream"
    assert (await chat(core, "hello")).splitlines() == ["echo: hello"]


async def test_content_in_parts_shows_the_text_without_the_thinking(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    fake_openai.content_parts = True  # Mistral's magistral models
    out = await chat(core, "hello", "again")
    assert out.splitlines() == ["echo: hello", "echo: again"]
    assert sent_history(fake_openai) == ["echo: hello"]
    fake_openai.stream_as_json = True
    assert (await chat(core, "whole")).splitlines() == ["echo: whole"]


async def test_an_error_body_with_http_200_is_told_and_logged_not_retried(
    core: Core, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    # OpenRouter: HTTP 200, {"error": {"message": ..., "code": 404}}: no provider serves it.
    fake_openai.error_with_200 = {"message": "No endpoints found for foo/bar.", "code": 404}
    caplog.set_level(logging.INFO)
    out = await chat(core, "hello")
    assert "echo" not in out
    assert "not configured correctly" in out or "model" in out.lower(), out
    assert len(fake_openai.calls("/chat/completions")) == 1
    assert "No endpoints found for foo/bar." in caplog.text


async def test_the_operator_log_says_what_the_endpoint_said(
    core: Core, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake_openai.error_mid_stream = {
        "message": "Provider disconnected (key sk-live-abcdef123456)",
        "code": "server_error",
    }
    caplog.set_level(logging.INFO)
    out = await chat(core, "hello")
    assert "cut short" in out
    [line] = [r.getMessage() for r in caplog.records if "message failed" in r.getMessage()]
    assert "Provider disconnected" in line, line
    assert "sk-live-abcdef123456" not in caplog.text


def test_a_bare_list_of_models_starts_and_passes_doctor(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    endpoint.models_as_list = True  # Together AI
    env = endpoint_env(endpoint)
    started = run_relaybot(["console"], tmp_path, "hi\n", **env)
    assert started.returncode == 0, started.stderr
    assert started.stdout.splitlines() == ["echo: hi"]
    assert "cannot reach" not in started.stderr and "cannot list" not in started.stderr
    checked = run_relaybot(["doctor"], tmp_path, **env)
    [line] = [x for x in checked.stdout.splitlines() if "model endpoint" in x]
    assert line.startswith("OK") and f"lists {len(endpoint.models)} models" in line, line


class SplitTags(FakeOpenAI):
    """A server whose stream splits the think tags mid-tag, as tokenizers may."""

    pieces = ("\n", "<th", "ink", ">\nmy reason", "ing</th", "ink", ">", "\n\n", "Hel", "lo!")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self._recorded(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in [*self.pieces, None]:
            delta = {"content": piece} if piece is not None else {}
            choice = {"index": 0, "delta": delta, "finish_reason": None if piece else "stop"}
            data = {"id": "c", "object": "chat.completion.chunk", "choices": [choice]}
            await response.write(f"data: {json.dumps(data)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


async def test_think_tags_split_across_chunks_are_taken_out(settings: Settings) -> None:
    async with SplitTags() as server:
        odd = settings.model_copy(update={"openai_base_url": server.base_url})
        async with open_core(odd) as core:
            out = await chat(core, "hi", "again")
    assert out.splitlines() == ["Hello!", "Hello!"]
    assert sent_history(server) == ["Hello!"]


class UnreadableModels(FakeOpenAI):
    """/models answers JSON that holds no list of models."""

    async def _list_models(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"object": "list", "models": "see our website"})


def test_an_unreadable_models_list_is_a_warning_not_an_unreachable_endpoint(
    tmp_path: Path,
) -> None:
    with UnreadableModels() as server:
        env = {**endpoint_env(server), "RELAYBOT_MODERATION": "off"}
        started = run_relaybot(["console"], tmp_path, "hi\n", **env)
        checked = run_relaybot(["doctor"], tmp_path, **env)
    assert started.returncode == 0, started.stderr
    assert started.stdout.splitlines() == ["echo: hi"]
    assert "cannot reach" not in started.stderr
    assert "cannot list models" in started.stderr, started.stderr
    [line] = [x for x in checked.stdout.splitlines() if "model endpoint" in x]
    assert line.startswith("WARN") and "cannot list models" in line, line
