"""RELAYBOT_PRICES as an operator writes it: a price that is not a finite number >= 0 stops
the start with one line naming the field, instead of every message failing later."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.testing.fake_openai import FakeOpenAI
from tests.processes import endpoint_env, run_relaybot


@pytest.mark.parametrize(
    ("prices", "field"),
    [
        ('{"gpt-4o-mini": {"input": NaN, "output": 1}}', "gpt-4o-mini.input"),
        ('{"gpt-4o-mini": {"input": 1, "output": 1e400}}', "gpt-4o-mini.output"),
        ('{"gpt-4o-mini": {"cached_input": Infinity}}', "gpt-4o-mini.cached_input"),
        ('{"gpt-4o-mini": {"input": -0.5}}', "gpt-4o-mini.input"),
        ('{"gpt-image-1": {"image": {"high": {"1024x1024": -Infinity}}}}', "gpt-image-1.image"),
    ],
    ids=["NaN", "1e400", "Infinity", "negative", "-Infinity image"],
)
def test_a_price_that_is_no_finite_amount_is_one_line_naming_the_field(
    endpoint: FakeOpenAI, tmp_path: Path, prices: str, field: str
) -> None:
    env = {**endpoint_env(endpoint), "RELAYBOT_PRICES": prices}
    result = run_relaybot(["console"], tmp_path, "hi\n", **env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""  # nothing was answered ("Something went wrong")
    assert result.stderr.count("\n") == 1, result.stderr
    line = result.stderr.strip()
    assert line.startswith("relaybot: RELAYBOT_PRICES: "), line
    assert field in line and "must be a finite number >= 0" in line, line
    assert endpoint.chat_requests() == []


def test_a_price_file_with_nan_is_one_line_too(endpoint: FakeOpenAI, tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text('{"gpt-4o-mini": {"output": NaN}}')
    env = {**endpoint_env(endpoint), "RELAYBOT_PRICES": str(prices)}
    result = run_relaybot(["console"], tmp_path, "hi\n", **env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == (
        "relaybot: RELAYBOT_PRICES: gpt-4o-mini.output must be a finite number >= 0, not nan"
    )


def test_valid_prices_still_start_and_answer(endpoint: FakeOpenAI, tmp_path: Path) -> None:
    env = {**endpoint_env(endpoint), "RELAYBOT_PRICES": '{"gpt-4o-mini": {"input": 0}}'}
    result = run_relaybot(["console"], tmp_path, "hi\n", **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "echo: hi"
