"""`relaybot usage` shows money as the chat's `/usage` does: one rule for both ("< $0.0001"
for a cost too small to show in four decimals: a few cheap requests are not free)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from core.testing.fake_openai import FakeOpenAI
from tests.processes import endpoint_env, run_relaybot


def today_in_chat(out: str) -> str:
    """The amount the console's `/usage` shows for today ("  today   < $0.0001  (1 request)")."""
    line = next(x for x in out.splitlines() if x.startswith("  today"))
    return line.removeprefix("  today").split("  (")[0].strip()


@pytest.mark.parametrize(
    ("price", "shown"),
    [(0.01, "< $0.0001"), (1000, "$0.02")],  # 22 tokens in, 2 out, at $ per 1M tokens
    ids=["under-a-hundredth-of-a-cent", "cents"],
)
def test_relaybot_usage_shows_money_as_the_chat_does(
    endpoint: FakeOpenAI, tmp_path: Path, price: float, shown: str
) -> None:
    prices = json.dumps({"gpt-4o-mini": {"input": price, "output": price}})
    env = {**endpoint_env(endpoint), "RELAYBOT_PRICES": prices, "USER": "ada"}
    chat = run_relaybot(["console"], tmp_path, "hello\n/usage\n", **env)
    assert chat.returncode == 0, chat.stderr
    assert today_in_chat(chat.stdout) == shown, chat.stdout

    table = run_relaybot(["usage"], tmp_path, **env)
    assert table.returncode == 0, table.stderr
    rows = [x for x in table.stdout.splitlines() if x.startswith(("console:", "TOTAL"))]
    assert [x.split()[0] for x in rows] == ["console:ada", "console:default", "TOTAL"], rows
    for row in rows:
        # today, this month and all time, each as the chat shows it.
        assert re.split(r"\s{2,}", row)[1:4] == [shown] * 3, table.stdout
