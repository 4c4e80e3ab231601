"""Running the real `relaybot` command in tests: one helper for every subprocess story."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from core.testing.fake_openai import FakeOpenAI

RELAYBOT = str(Path(sys.executable).parent / "relaybot")
OWN_PREFIXES = ("RELAYBOT_", "OPENAI_", "TELEGRAM_", "SLACK_")


def clean_env(**env: str) -> dict[str, str]:
    """This process's environment without relaybot's own settings, plus `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
    base.update(env)
    return base


def run_relaybot(
    args: list[str], cwd: Path, stdin: str = "", timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run `relaybot ARGS` in `cwd` with a clean environment plus `env`; wait for it."""
    return subprocess.run(
        [RELAYBOT, *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_env(**env),
        timeout=timeout,
    )


def endpoint_env(fake: FakeOpenAI, key: str = "sk-test-key") -> dict[str, str]:
    """Settings pointing relaybot at a fake OpenAI server."""
    return {"OPENAI_API_KEY": key, "OPENAI_BASE_URL": fake.base_url}
