"""Settings that take one of a few words take it in any case, as RELAYBOT_LOG_LEVEL does:
`RELAYBOT_MODERATION=Both` and `RELAYBOT_LOG_FORMAT=JSON` were refused at start."""

from __future__ import annotations

import json
from pathlib import Path

from core.testing.fake_openai import FakeOpenAI
from tests.processes import endpoint_env, run_relaybot


def test_choices_written_in_capitals_are_taken_as_meant(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    env = {
        **endpoint_env(endpoint),
        "RELAYBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'relaybot.db'}",
        "RELAYBOT_MODERATION": "Both",
        "RELAYBOT_LOG_FORMAT": " JSON ",
        "RELAYBOT_LOG_LEVEL": "info",
    }
    result = run_relaybot(["console"], tmp_path, "hello there\n", **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "echo: hello there\n"
    # JSON logs: every line of the log is one JSON object.
    lines = result.stderr.splitlines()
    assert lines, "no log lines at INFO"
    assert all(isinstance(json.loads(line), dict) for line in lines), result.stderr[-2000:]
    # Both sides moderated.
    moderated = [str(call.json) for call in endpoint.calls("/moderations")]
    assert any("'hello there'" in text for text in moderated), moderated
    assert any("'echo: hello there'" in text for text in moderated), moderated


def test_off_in_capitals_turns_moderation_off(endpoint: FakeOpenAI, tmp_path: Path) -> None:
    env = {
        **endpoint_env(endpoint),
        "RELAYBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'relaybot.db'}",
        "RELAYBOT_MODERATION": "OFF",
        "RELAYBOT_LOG_FORMAT": "Text",
    }
    result = run_relaybot(["console"], tmp_path, "hello there\n", **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "echo: hello there\n"
    assert endpoint.calls("/moderations") == []


def test_a_word_it_does_not_take_is_still_refused(tmp_path: Path) -> None:
    result = run_relaybot(["db", "current"], tmp_path, RELAYBOT_MODERATION="Sometimes")
    assert result.returncode == 2
    assert "RELAYBOT_MODERATION" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
