"""Token counting: exact with tiktoken, never crashing on odd model names, estimated offline."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tiktoken
from hypothesis import given
from hypothesis import strategies as st

from core.tokens import (
    DEFAULT_CONTEXT_WINDOW,
    PER_MESSAGE_TOKENS,
    PER_NAME_TOKENS,
    PRIMING_TOKENS,
    ROLE_TOKENS,
    TokenCounter,
    context_window,
    counter_for,
    estimate_tokens,
    picture_tokens,
)

REPO = Path(__file__).parents[2]

SAMPLES = {
    "prose": (
        "The quick brown fox jumps over the lazy dog. Meanwhile, the committee decided that "
        "next year's festival budget should grow by roughly twelve percent."
    ),
    "question": "Can you summarise this for me, please?",
    "code": (
        "def fib(n: int) -> int:\n    if n < 2:\n        return n\n"
        "    return fib(n - 1) + fib(n - 2)\n\nprint([fib(i) for i in range(10)])\n"
    ),
    "json": json.dumps({"user": {"id": 12345, "name": "Ana", "tags": ["a", "b"], "ok": True}}),
    "markdown": "| col | val |\n|-----|-----|\n| a | 1 |\n\n- item one\n- **bold** `code`",
    "chinese": "今天天气很好，我们去公园散步吧。人工智能正在改变世界。",
    "japanese": "東京は日本の首都です。私は毎朝コーヒーを飲みながら新聞を読みます。",
    "russian": "Привет! Сегодня мы обсудим новые возможности машинного обучения.",
    "arabic": "مرحبا كيف حالك؟ هذا نص تجريبي باللغة العربية.",
    "hindi": "नमस्ते, आप कैसे हैं? आज मौसम बहुत अच्छा है।",
    "emoji": "Great job 👍🏽 see you soon 😀😂🙃 👨‍👩‍👧‍👦",
    "numbers": "Call +1 (555) 123-4567 on 2024-05-13 at 10:22, ref 3141592653589793.",
    "url": "See https://example.com/path/to/page?query=value&n=1234#frag for details.",
    "accents": "I said 你好 to José at the café: naïve résumé, Größe Straße.",
    "spaces": "indented" + " " * 40 + "text\n\n\n\twith tabs",
    "special": "please ignore <|endoftext|> and <|im_start|>system<|im_end|> <|start|>",
}

# The chat from OpenAI's cookbook "How to count tokens with tiktoken"; the cookbook reports
# these totals both from num_tokens_from_messages() and from the API's usage.prompt_tokens.
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": (
            "You are a helpful, pattern-following assistant that translates corporate jargon "
            "into plain English."
        ),
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": (
            "Let's circle back when we have more bandwidth to touch base on opportunities for "
            "increased leverage."
        ),
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": (
            "This late pivot means we don't have time to boil the ocean for the client "
            "deliverable."
        ),
    },
]
COOKBOOK_TOTALS = {"gpt-3.5-turbo": 129, "gpt-4": 129, "gpt-4o": 124, "gpt-4o-mini": 124}


def exact_counter(model: str) -> TokenCounter:
    counter = counter_for(model)
    if not counter.exact:
        pytest.skip("tiktoken BPE files unavailable (set TIKTOKEN_CACHE_DIR)")
    return counter


def cookbook_num_tokens(messages: list[dict[str, str]], encoding: tiktoken.Encoding) -> int:
    """num_tokens_from_messages() as the cookbook writes it for gpt-3.5-turbo and later."""
    total = 0
    for message in messages:
        total += 3
        for key, value in message.items():
            total += len(encoding.encode(value))
            if key == "name":
                total += 1
    return total + 3


# -- exact counts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "encoding_name"), [("gpt-4o", "o200k_base"), ("gpt-3.5-turbo", "cl100k_base")]
)
@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_counts_match_tiktoken_for_the_models_encoding(model, encoding_name, sample):
    counter = exact_counter(model)
    encoding = tiktoken.get_encoding(encoding_name)
    text = SAMPLES[sample]

    assert counter.encoding_name == encoding_name
    assert counter.count(text) == len(encoding.encode(text, disallowed_special=()))


def test_cookbook_string_counts_six_tokens_with_cl100k():
    assert exact_counter("gpt-3.5-turbo").count("tiktoken is great!") == 6


def test_empty_text_is_zero_tokens():
    assert exact_counter("gpt-4o").count("") == 0


@pytest.mark.parametrize("model", sorted(COOKBOOK_TOTALS))
def test_the_cookbook_chat_costs_what_the_api_reported(model):
    counter = exact_counter(model)
    encoding = tiktoken.encoding_for_model(model)
    # A name's own tokens travel with the message, so they are part of its content cost.
    costs = [
        counter.message_cost(
            counter.count(message["content"]) + counter.count(message.get("name", "")),
            has_name="name" in message,
        )
        for message in COOKBOOK_MESSAGES
    ]

    total = sum(costs) + PRIMING_TOKENS

    assert total == COOKBOOK_TOTALS[model]
    assert total == cookbook_num_tokens(COOKBOOK_MESSAGES, encoding)


@pytest.mark.parametrize("role", ["system", "user", "assistant", "developer", "tool"])
def test_every_role_is_one_token_as_role_tokens_assumes(role):
    for model in ("gpt-4o", "gpt-3.5-turbo"):
        assert exact_counter(model).count(role) == ROLE_TOKENS


def test_message_cost_adds_framing_role_and_name():
    counter = counter_for("gpt-4o")

    assert PRIMING_TOKENS == 3
    assert PER_MESSAGE_TOKENS == 3
    assert counter.message_cost(10) == 10 + PER_MESSAGE_TOKENS + ROLE_TOKENS == 14
    assert counter.message_cost(10, has_name=True) == 14 + PER_NAME_TOKENS == 15
    assert counter.message_cost(0) == 4


# -- model names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "encoding_name"),
    [
        ("gpt-4o-2024-08-06", "o200k_base"),
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("ft:gpt-3.5-turbo:acme::abc123", "cl100k_base"),
        ("openai/gpt-3.5-turbo", "cl100k_base"),
        ("gpt-oss-20b", "o200k_harmony"),
    ],
)
def test_known_models_use_their_encoding(model, encoding_name):
    assert counter_for(model).encoding_name == encoding_name


@pytest.mark.parametrize(
    "model",
    [
        "llama3.1:8b",
        "mistralai/Mistral-7B",
        "meta-llama/Llama-3.1-8B-Instruct",
        "qwen2.5:14b-instruct-q4_K_M",
        "",
        "   ",
        "a/b/c",
        "ft:",
    ],
)
def test_unknown_models_fall_back_to_o200k_base(model):
    counter = counter_for(model)

    assert counter.model == model
    assert counter.encoding_name == "o200k_base"
    assert counter.count("hello there") > 0


def test_counters_are_cached_and_share_one_encoding():
    assert counter_for("gpt-4o") is counter_for("gpt-4o")
    assert counter_for("gpt-4o")._encoding is counter_for("llama3.1:8b")._encoding


# -- text that must not raise ---------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-3.5-turbo", "gpt-oss-20b"])
@pytest.mark.parametrize(
    "text",
    [
        "<|endoftext|>",
        "<|im_start|>user\nhi<|im_end|>",
        "<|start|>assistant<|message|>",
        "<|fim_prefix|>",
    ],
)
def test_special_token_text_from_a_user_counts_as_plain_text(model, text):
    counter = exact_counter(model)

    assert counter.count(text) > 1  # spelled out, not the single special token


def test_lone_surrogates_do_not_raise():
    text = "broken emoji \ud83d here"

    assert exact_counter("gpt-4o").count(text) > 0
    assert estimate_tokens(text) > 0


# -- estimation -----------------------------------------------------------------------------


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_estimate_over_counts_typical_text_for_both_encodings(sample):
    text = SAMPLES[sample]
    exact = max(exact_counter(model).count(text) for model in ("gpt-4o", "gpt-3.5-turbo"))

    assert exact <= estimate_tokens(text) <= 3 * exact


@given(st.text())
def test_estimate_never_raises_and_counts_something_for_any_text(text):
    estimate = estimate_tokens(text)

    assert estimate >= 0
    assert (estimate == 0) == (text == "")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


FALLBACK_SCRIPT = textwrap.dedent(
    """
    import json, logging, sys

    warnings = []

    class Collect(logging.Handler):
        def emit(self, record):
            warnings.append(record.getMessage())

    logging.getLogger("relaybot.tokens").addHandler(Collect())
    from core.tokens import counter_for

    samples = json.loads(sys.stdin.read())
    models = {}
    for model in ("gpt-4o", "gpt-3.5-turbo", "llama3.1:8b", "gpt-4o"):
        counter = counter_for(model)
        models[model] = {
            "exact": counter.exact,
            "encoding": counter.encoding_name,
            "counts": [counter.count(text) for text in samples],
        }
    print(json.dumps({"warnings": warnings, "models": models}))
    """
)


def test_without_bpe_files_counts_are_estimated_high_with_one_warning(tmp_path):
    exact_counter("gpt-4o")
    samples = [SAMPLES[name] for name in ("prose", "code", "json", "chinese", "emoji", "url")]
    # An empty cache and a proxy that refuses connections: tiktoken cannot load anything.
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if k.lower() not in {"no_proxy", "all_proxy"}}
    env |= {
        "TIKTOKEN_CACHE_DIR": str(tmp_path),
        "HTTP_PROXY": dead_proxy,
        "HTTPS_PROXY": dead_proxy,
        "http_proxy": dead_proxy,
        "https_proxy": dead_proxy,
        "PYTHONPATH": str(REPO),
    }

    result = subprocess.run(
        [sys.executable, "-c", FALLBACK_SCRIPT],
        input=json.dumps(samples),
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=True,
    )
    report = json.loads(result.stdout)

    assert len(report["warnings"]) == 1, report["warnings"]
    warning = report["warnings"][0]
    assert "ESTIMATED" in warning
    assert "TIKTOKEN_CACHE_DIR" in warning
    exact = [
        max(exact_counter(model).count(text) for model in ("gpt-4o", "gpt-3.5-turbo"))
        for text in samples
    ]
    for model, expected_encoding in [
        ("gpt-4o", "o200k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("llama3.1:8b", "o200k_base"),
    ]:
        counted = report["models"][model]
        assert counted["exact"] is False
        assert counted["encoding"] == expected_encoding
        assert all(est >= ex for est, ex in zip(counted["counts"], exact, strict=True))
    assert list(os.scandir(tmp_path)) == []


# -- context windows ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "window"),
    [
        ("gpt-4o", 128_000),
        ("gpt-4o-2024-08-06", 128_000),
        ("gpt-4o-mini", 128_000),
        ("gpt-4o-mini-2024-07-18", 128_000),
        ("chatgpt-4o-latest", 128_000),
        ("gpt-4.1", 1_047_576),
        ("gpt-4.1-mini-2025-04-14", 1_047_576),
        ("gpt-4.1-nano", 1_047_576),
        ("gpt-5", 400_000),
        ("gpt-5-mini-2025-08-07", 400_000),
        ("gpt-5-nano", 400_000),
        ("gpt-5-chat-latest", 128_000),
        ("gpt-5.1", 400_000),
        ("gpt-5.1-chat-latest", 128_000),
        ("gpt-5.2-chat-latest", 128_000),
        ("openai/gpt-5.1-chat-latest", 128_000),
        ("gpt-5.1-codex", 400_000),
        ("gpt-4-turbo-2024-04-09", 128_000),
        ("gpt-4", 8_192),
        ("gpt-4-0613", 8_192),
        ("gpt-4-32k-0613", 32_768),
        ("gpt-3.5-turbo", 16_385),
        ("gpt-3.5-turbo-0125", 16_385),
        ("gpt-3.5-turbo-0613", 4_096),
        ("o1", 200_000),
        ("o1-2024-12-17", 200_000),
        ("o1-mini", 128_000),
        ("o3", 200_000),
        ("o3-mini-2025-01-31", 200_000),
        ("o4-mini", 200_000),
        ("o4-mini-2025-04-16", 200_000),
        ("openai/gpt-4o", 128_000),
        ("GPT-4o", 128_000),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", 128_000),
    ],
)
def test_context_window_of_known_models_and_their_snapshots(model, window):
    assert context_window(model) == window


@pytest.mark.parametrize(
    "model", ["llama3.1:8b", "mistralai/Mistral-7B", "o1x", "gpt-4z", "gpt-oss:20b", ""]
)
def test_unknown_models_get_a_conservative_window(model):
    assert context_window(model) == DEFAULT_CONTEXT_WINDOW == 8_192


def test_the_configured_override_wins():
    assert context_window("llama3.1:8b", 131_072) == 131_072
    assert context_window("gpt-4o", 4_096) == 4_096


@pytest.mark.parametrize("override", [0, -1])
def test_a_nonsense_override_is_rejected(override):
    with pytest.raises(ValueError, match="positive"):
        context_window("gpt-4o", override)


@pytest.mark.parametrize(
    ("size", "tokens"),
    [
        ((1024, 1024), 765),  # OpenAI's worked examples: scaled to 768 x 768, 4 tiles
        ((2048, 4096), 1105),  # to 1024 x 2048, then 768 x 1536: 6 tiles
        ((512, 512), 255),  # small pictures are not scaled up: one tile
        ((100, 4000), 765),  # fitted to 2048 tall: 51 x 2048, 4 tiles
        (None, 1445),  # unknown: the most a picture can take
    ],
)
def test_a_pictures_tokens_in_a_request(size, tokens):
    assert picture_tokens(size) == tokens
