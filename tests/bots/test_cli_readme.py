"""What README promises of a set-up mistake: a base URL without its /v1, `relaybot run` with
no platform and no terminal, a log level set in .env. Real processes, the fake endpoint."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from bots.doctor import Status, check_model_endpoint
from core.config import ModerationPolicy, Settings
from core.openai_client import OpenAIClient
from core.testing.fake_openai import FakeOpenAI
from tests.processes import endpoint_env, run_relaybot

run = run_relaybot


def doctor_lines(stdout: str) -> dict[str, str]:
    """{check name: its line} of `relaybot doctor`'s report."""
    lines: dict[str, str] = {}
    for line in stdout.splitlines():
        if line[:4].strip() in ("OK", "WARN", "FAIL", "SKIP"):
            lines.setdefault(line[6:].split(":", 1)[0], line)
    return lines


def test_a_base_url_without_v1_fails_doctor_and_stops_the_start_naming_the_url(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    # The README's Ollama recipe turns moderation off: nothing else would probe a path.
    env = {**endpoint_env(endpoint), "RELAYBOT_MODERATION": "off"}
    env["OPENAI_BASE_URL"] = endpoint.url  # the server's root: every path 404s
    fix = f"set OPENAI_BASE_URL={endpoint.base_url}"
    checked = run(["doctor"], tmp_path, **env)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    line = doctor_lines(checked.stdout)["model endpoint"]
    assert line.startswith("FAIL"), line
    assert line.endswith(f"-> {fix}"), line
    started = run(["console"], tmp_path, "hi\n", **env)
    assert started.returncode == 2, started.stdout + started.stderr
    assert started.stderr == (
        f"relaybot: the model endpoint at {endpoint.url} has no /models (HTTP 404) but "
        f"{endpoint.base_url} lists the models: {fix}\n"
    )
    assert started.stdout == ""
    assert endpoint.calls("/chat/completions") == []


@pytest.mark.parametrize(
    "moderation,expected",
    [
        (ModerationPolicy.OFF, [("model endpoint", Status.WARN)]),
        # As the start refuses it: nothing there moderates either.
        (ModerationPolicy.BOTH, [("model endpoint", Status.WARN), ("moderation", Status.FAIL)]),
    ],
)
def test_a_server_without_models_that_chats_is_still_only_a_warning(
    moderation: ModerationPolicy, expected: list[tuple[str, Status]]
) -> None:
    # Not under /v1 and no /models anywhere: nothing to suggest; chatting may work.
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/llm/chat/completions":
            return httpx.Response(200, json={"choices": []})
        return httpx.Response(404, text="404 page not found")

    async def check() -> tuple[str | None, list[tuple[str, Status]]]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
            client = OpenAIClient(http, base_url="http://llm.test/llm", api_key=None)
            settings = Settings(  # type: ignore[call-arg]
                _env_file=None, openai_base_url="http://llm.test/llm", moderation=moderation
            )
            results = await check_model_endpoint(settings, http)
            return await client.v1_base_url(), [(r.name, r.status) for r in results]

    suggested, results = asyncio.run(check())
    assert suggested is None
    assert results == expected


def test_run_without_a_platform_or_a_terminal_says_so_and_still_answers(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    # As README's `printf 'hi\n' | relaybot`; a container's stdin ends at once, the same way.
    result = run([], tmp_path, "hi\n", **endpoint_env(endpoint))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["echo: hi"]
    [line] = result.stderr.splitlines()  # one line, and the answer still on stdout
    assert line.startswith("relaybot: no platform is configured"), line
    assert "TELEGRAM_BOT_TOKEN" in line and "SLACK_BOT_TOKEN" in line
    assert "reading standard input" in line


def test_a_log_level_set_in_the_env_file_is_taken_by_the_console(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(
        f"OPENAI_API_KEY=sk-test-key\nOPENAI_BASE_URL={endpoint.base_url}\n"
        "RELAYBOT_LOG_LEVEL=INFO\nRELAYBOT_LOG_FORMAT=text\n"
    )
    result = run(["console"], tmp_path, "hi\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["echo: hi"]
    assert "handled message" in result.stderr  # INFO: without the setting only warnings
