"""OPENAI_BASE_URL that is no endpoint's address, and `relaybot doctor` meeting the unexpected.

A gateway behind basic auth written as https://user:password@host/v1 made `relaybot doctor`
end in a traceback and `relaybot console` stop with the HTTP client's "Cannot combine
AUTHORIZATION header with ... credentials encoded in URL", naming no setting.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.testing.fake_openai import FakeOpenAI
from tests.processes import run_relaybot

PASSWORD = "s3cretPassw0rd"
QUERY_KEY = "qk-9f8e7d6c5b4a"
TELEGRAM_TOKEN = "424242424:AAF7cT2qLm9XvB4nR8sW1yZ6pJ3dK5hGfEo"


def env(tmp_path: Path, base_url: str, **more: str) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "sk-test-key",
        "OPENAI_BASE_URL": base_url,
        "RELAYBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'relaybot.db'}",
        **more,
    }


def one_line_refusal(tmp_path: Path, base_url: str) -> tuple[str, str]:
    """What `relaybot console` and `relaybot doctor` say of this OPENAI_BASE_URL."""
    console = run_relaybot(["console"], tmp_path, "hi\n", **env(tmp_path, base_url))
    assert console.returncode == 2, console.stderr
    assert console.stdout == ""
    assert console.stderr.count("\n") == 1, console.stderr
    doctor = run_relaybot(["doctor"], tmp_path, **env(tmp_path, base_url))
    assert doctor.returncode == 1
    assert "Traceback" not in doctor.stderr
    (line,) = [x for x in doctor.stdout.splitlines() if x.startswith("FAIL")]
    return console.stderr.strip(), line


def test_a_user_and_password_in_the_base_url_is_one_line_naming_it(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    url = endpoint.base_url.replace("http://", f"http://gateway:{PASSWORD}@")
    console, doctor = one_line_refusal(tmp_path, url)
    said = (
        "invalid configuration: OPENAI_BASE_URL: must not hold a user name or password "
        "(USER:PASSWORD@ before the host): relaybot signs in with OPENAI_API_KEY alone; "
        "remove them and put the key in OPENAI_API_KEY"
    )
    assert console == f"relaybot: {said}"
    assert doctor == f"FAIL  config: {said} -> fix the variable named above"
    assert not endpoint.requests


@pytest.mark.parametrize(
    "written",
    ["127.0.0.1:{port}/v1", "localhost:{port}/v1", "ws://127.0.0.1:{port}/v1", "http:///v1"],
)
def test_a_base_url_without_http_or_https_says_what_it_takes(
    endpoint: FakeOpenAI, tmp_path: Path, written: str
) -> None:
    url = written.format(port=endpoint.base_url.rsplit(":", 1)[1].split("/")[0])
    console, doctor = one_line_refusal(tmp_path, url)
    assert console.startswith("relaybot: invalid configuration: OPENAI_BASE_URL: must start ")
    assert console.endswith(
        "with http:// or https:// and a host, e.g. https://api.openai.com/v1 or "
        "http://localhost:11434/v1"
    )
    assert doctor.startswith("FAIL  config: invalid configuration: OPENAI_BASE_URL: must ")


def test_a_key_in_the_base_urls_query_string_is_refused_and_never_shown(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    # Every request would have gone to .../v1?api-key=KEY/chat/completions: the key is the
    # query's value, not OPENAI_API_KEY; it is not printed.
    console, doctor = one_line_refusal(tmp_path, f"{endpoint.base_url}?api-key={QUERY_KEY}")
    said = (
        "invalid configuration: OPENAI_BASE_URL: must not end in a query string or fragment "
        "(?... or #...): relaybot adds each request's path after it; a key goes in "
        "OPENAI_API_KEY"
    )
    assert console == f"relaybot: {said}"
    assert doctor.startswith(f"FAIL  config: {said}")
    assert QUERY_KEY not in console + doctor


def test_a_check_that_breaks_unexpectedly_is_a_fail_line_and_the_others_still_run(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    # A Bot API address the HTTP client cannot read (a host IDNA refuses; the settings take
    # it, as a URL): the Telegram check met an error it did not expect, and the whole report
    # ended in a traceback.
    settings = env(
        tmp_path,
        endpoint.base_url,
        TELEGRAM_BOT_TOKEN=TELEGRAM_TOKEN,
        TELEGRAM_API_BASE_URL="http://\u2488.com/bot",
        RELAYBOT_MODERATION="off",
    )
    assert run_relaybot(["db", "upgrade"], tmp_path, **settings).returncode == 0
    doctor = run_relaybot(["doctor"], tmp_path, **settings)
    assert "Traceback" not in doctor.stderr
    assert doctor.returncode == 1
    lines = doctor.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [
        "OK    config",
        "OK    database",
        "OK    model endpoint",
        "FAIL  telegram",
        "SKIP  slack",
        "OK    tokenizer",
    ]
    assert lines[3].startswith("FAIL  telegram: the check could not finish: InvalidURL: ")
    assert lines[3].endswith(" -> check TELEGRAM_API_BASE_URL and TELEGRAM_BOT_TOKEN")
    assert TELEGRAM_TOKEN not in doctor.stdout
    assert lines[-1] == "relaybot doctor: 1 to fix (4 OK, 1 SKIP)"


def test_a_proxy_the_http_client_cannot_use_is_a_fail_line_without_its_password(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    proxy = "ftp://proxyuser:Pr0xyPassw0rd@127.0.0.1:1"
    doctor = run_relaybot(
        ["doctor"], tmp_path, **env(tmp_path, endpoint.base_url, RELAYBOT_HTTP_PROXY=proxy)
    )
    assert "Traceback" not in doctor.stderr
    assert doctor.returncode == 1
    # Refused with the settings, in words of its own (the client's words quoted the URL).
    assert doctor.stdout.splitlines() == [
        "FAIL  config: invalid configuration: RELAYBOT_HTTP_PROXY: must start with http://, "
        "https:// or socks5:// and name the proxy's host, e.g. http://proxy.example:3128 or "
        "http://USER:PASSWORD@proxy.example:3128 -> fix the variable named above",
        "relaybot doctor: 1 to fix (0 OK)",
    ]
    assert "proxyuser" not in doctor.stdout and "Pr0xyPassw0rd" not in doctor.stdout
