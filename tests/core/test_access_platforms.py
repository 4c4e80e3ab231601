"""An allow-list or admin entry for a platform relaybot does not run on is refused when the
settings are read. `RELAYBOT_ALLOWED_USERS=tg:999` (or `telegarm:999`) was taken as a list for
a platform nobody talks on: Telegram stayed open to everyone, and doctor found nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.access import Access
from core.config import Settings
from core.errors import ConfigError
from core.testing.fake_openai import FakeOpenAI
from core.types import PLATFORMS, ChatRef, IncomingMessage, Sender
from tests.processes import endpoint_env, run_relaybot

LISTS = ("RELAYBOT_ALLOWED_USERS", "RELAYBOT_ALLOWED_CHATS", "RELAYBOT_ADMINS")
STRANGER = IncomingMessage(chat=ChatRef("telegram", "555"), sender=Sender("555"), event_key="k")


@pytest.mark.parametrize("setting", LISTS)
@pytest.mark.parametrize("entry", ["tg:999", "telegarm:999", "discord:999"])
def test_an_entry_for_an_unknown_platform_is_refused_naming_it(setting: str, entry: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Access(Settings(_env_file=None, **{setting: f"telegram:1, {entry}"}), PLATFORMS)  # type: ignore[arg-type]
    said = str(refused.value)
    assert said == (
        f"{setting}: {entry!r} names a platform relaybot does not run on; the platforms are "
        "console, slack and telegram"
    )


@pytest.mark.parametrize("entry", ["telegram:999", "Telegram:999", "TELEGRAM:999"])
def test_the_known_platforms_are_taken_in_any_case_and_keep_strangers_out(entry: str) -> None:
    access = Access(Settings(_env_file=None, RELAYBOT_ALLOWED_USERS=entry), PLATFORMS)  # type: ignore[call-arg]
    assert not access.allows(STRANGER)
    assert access.allows(
        IncomingMessage(chat=ChatRef("telegram", "1"), sender=Sender("999"), event_key="k")
    )


def test_a_mistyped_platform_stops_the_start_in_one_line(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    result = run_relaybot(
        ["console"], tmp_path, "hello\n", **endpoint_env(endpoint), RELAYBOT_ALLOWED_USERS="tg:999"
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "relaybot: invalid configuration: RELAYBOT_ALLOWED_USERS: 'tg:999' names a platform "
        "relaybot does not run on; the platforms are console, slack and telegram"
    ]
    assert endpoint.chat_requests() == []


def test_doctor_fails_on_a_mistyped_admin_platform(tmp_path: Path) -> None:
    result = run_relaybot(["doctor"], tmp_path, RELAYBOT_ADMINS="telegram:1,telegarm:2")
    assert result.returncode == 1
    config = [line for line in result.stdout.splitlines() if line.startswith("FAIL  config")]
    assert config and "RELAYBOT_ADMINS: 'telegarm:2' names a platform" in config[0], result.stdout
