"""Token counts and context windows for chat models (OpenAI's cookbook accounting)."""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
from dataclasses import dataclass, field

import tiktoken

log = logging.getLogger("relaybot.tokens")

PRIMING_TOKENS = 3  # every reply is primed with <|start|>assistant<|message|>
PER_MESSAGE_TOKENS = 3  # <|start|>, <|message|>, <|end|> around each message
ROLE_TOKENS = 1  # the role itself ("system", "user", "assistant" are one token each)
PER_NAME_TOKENS = 1  # a message with a `name` costs one more, plus the name's own tokens

FALLBACK_ENCODING = "o200k_base"
DEFAULT_CONTEXT_WINDOW = 8_192  # unknown models: small enough for most local servers


@dataclass(frozen=True, slots=True)
class TokenCounter:
    """Counts tokens of message text for one model; estimates when the BPE file is missing."""

    model: str
    encoding_name: str
    exact: bool
    _encoding: tiktoken.Encoding | None = field(default=None, repr=False, compare=False)

    def count(self, text: str) -> int:
        """Tokens in `text`; special-token text such as "<|endoftext|>" counts as plain text."""
        if self._encoding is None:
            return estimate_tokens(text)
        return len(self._encoding.encode_ordinary(text))

    def count_cached(self, text: str) -> int:
        """`count` for text that recurs with every message (a system prompt)."""
        return _count_cached(self, text)

    @property
    def stored_as(self) -> str:
        """The encoding recorded beside a stored count; estimates are recounted when exact."""
        return self.encoding_name if self.exact else "estimate"

    def message_cost(self, content_tokens: int, *, has_name: bool = False) -> int:
        """Tokens one chat message takes in a request: content plus framing (and name)."""
        cost = content_tokens + PER_MESSAGE_TOKENS + ROLE_TOKENS
        return cost + PER_NAME_TOKENS if has_name else cost


@functools.lru_cache(maxsize=256)
def _count_cached(counter: TokenCounter, text: str) -> int:
    return counter.count(text)


# Pieces roughly as the GPT tokenizers pre-split text: a word with its leading space,
# one punctuation mark with its leading space, up to three digits, or a run of whitespace.
_PIECE = re.compile(r" ?[^\W\d_]+| ?(?:[^\w\s]|_)|\d{1,3}|\s+")


def estimate_tokens(text: str) -> int:
    """A conservative token estimate used when no tokenizer is available.

    It over-counts prose, code, JSON and non-Latin scripts against both o200k_base and
    cl100k_base (about 1.3-2x), so a request trimmed with it still fits. Random strings
    such as hashes or base64 can come out a little under.
    """
    tokens = 0
    for match in _PIECE.finditer(text):
        piece = match.group()
        if piece.isspace():
            tokens += 1 + len(piece) // 16
            continue
        body = piece.lstrip(" ")
        if not body.isascii():
            # Non-Latin scripts and emoji cost about a token per two UTF-8 bytes or more.
            size = len(body.encode("utf-8", "surrogatepass"))
            astral = sum(1 for char in body if ord(char) > 0xFFFF)
            tokens += -(-size // 2) + astral
        elif not body[0].isalpha():
            tokens += 1
        elif len(body) > 1 and not body[1:].islower():
            tokens += -(-len(body) // 2)  # mixed case (identifiers, base64) splits finely
        else:
            tokens += -(-len(body) // 4)
    return tokens


_warned_lock = threading.Lock()
_warned = False


def _warn_estimating(encoding_name: str, error: Exception) -> None:
    global _warned
    with _warned_lock:
        if _warned:
            return
        _warned = True
    log.warning(
        "Could not load the tiktoken encoding %s (%s: %s); token counts are ESTIMATED "
        "(over-counted) and less history will fit. Put the tiktoken BPE files in a "
        "directory and set TIKTOKEN_CACHE_DIR to it.",
        encoding_name,
        type(error).__name__,
        error,
    )


@functools.cache
def _load_encoding(encoding_name: str) -> tiktoken.Encoding | None:
    try:
        return tiktoken.get_encoding(encoding_name)
    except Exception as error:  # offline without cache, hash mismatch, unreadable cache ...
        _warn_estimating(encoding_name, error)
        return None


def _normalise(model: str) -> str:
    # Routers and local servers prefix the vendor ("openai/gpt-4o", "meta-llama/Llama-3.1-8B").
    return model.strip().rsplit("/", 1)[-1].lower()


def _encoding_name(model: str) -> str:
    for name in (model, _normalise(model)):
        try:
            return tiktoken.encoding_name_for_model(name)
        except KeyError:
            continue
    return FALLBACK_ENCODING


@functools.lru_cache(maxsize=64)
def counter_for(model: str) -> TokenCounter:
    """The token counter for `model`; unknown names use o200k_base, never an error.

    The first call per encoding reads the BPE file (blocking, well under a second from the
    cache): call it once at start-up rather than in a hot path.
    """
    encoding_name = _encoding_name(model)
    encoding = _load_encoding(encoding_name)
    return TokenCounter(model, encoding_name, encoding is not None, encoding)


# Context windows in tokens, as the vendor documents them; looked up by the longest prefix
# that ends at a separator, so dated snapshots ("gpt-4o-2024-08-06") and variants
# ("gpt-4.1-mini") resolve. Self-hosted models are left out on purpose: their window is
# whatever the server was started with, so they take the conservative default or the
# configured override.
CONTEXT_WINDOWS: dict[str, int] = {
    "gpt-5": 400_000,
    "gpt-5-chat": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.5": 128_000,
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "chatgpt-4o": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4-1106": 128_000,
    "gpt-4-0125": 128_000,
    "gpt-4-vision": 128_000,
    "gpt-4-32k": 32_768,
    "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385,
    "gpt-3.5-turbo-0301": 4_096,
    "gpt-3.5-turbo-0613": 4_096,
    "gpt-3.5-turbo-instruct": 4_096,
    "gpt-35-turbo": 16_385,
    "o1": 200_000,
    "o1-mini": 128_000,
    "o1-preview": 128_000,
    "o3": 200_000,
    "o3-mini": 200_000,
    "o4-mini": 200_000,
}
# Where the API takes less input than the window less the reply, the most it takes (whatever
# RELAYBOT_CONTEXT_TOKENS says); looked up as CONTEXT_WINDOWS is. OpenAI's gpt-5 models keep
# 128,000 of their 400,000 tokens for the reply whatever a request asks for, and refuse more
# than 272,000 of input ("Input tokens exceed the configured limit of 272000 tokens", code
# context_length_exceeded). Later releases with a larger window (gpt-5.4) are held to it too:
# their own limits differ by variant, and none takes less.
MAX_INPUT_TOKENS: dict[str, int] = {"gpt-5": 272_000}


# What a picture costs in a request, as OpenAI counts it for GPT-4o and its like at high
# detail: scaled to fit 2048 x 2048, then its shorter side to 768; 170 tokens for each
# 512-pixel tile it covers, plus 85. A picture of unknown size is taken at the most such a
# picture can cost (768 x 2048: 8 tiles).
PICTURE_BASE_TOKENS = 85
PICTURE_TILE_TOKENS = 170
MAX_PICTURE_TOKENS = PICTURE_BASE_TOKENS + 8 * PICTURE_TILE_TOKENS


def picture_tokens(size: tuple[int, int] | None) -> int:
    """The tokens a picture of `size` (width, height) takes in a request, or the most one
    can take when its size is unknown."""
    if size is None or min(size) <= 0:
        return MAX_PICTURE_TOKENS
    width, height = float(size[0]), float(size[1])
    fit = min(1.0, 2048 / max(width, height))
    width, height = width * fit, height * fit
    short = min(1.0, 768 / min(width, height))
    width, height = width * short, height * short
    tiles = math.ceil(width / 512) * math.ceil(height / 512)
    return min(MAX_PICTURE_TOKENS, PICTURE_BASE_TOKENS + PICTURE_TILE_TOKENS * tiles)


_GPT5_CHAT = re.compile(r"^gpt-5\.\d+-chat(?![a-z0-9])")


def context_window(model: str, override: int | None = None) -> int:
    """The context window of `model` in tokens: `override` if given, else the table, else 8192."""
    if override is not None:
        if override <= 0:
            raise ValueError(f"context window override must be positive, got {override}")
        return override
    return _table_window(model)


@functools.lru_cache(maxsize=64)
def max_input_tokens(model: str) -> int | None:
    """The most input tokens the API takes for `model` when that is less than its window
    less the reply (MAX_INPUT_TOKENS), else None."""
    return _table_entry(MAX_INPUT_TOKENS, model)


@functools.lru_cache(maxsize=64)
def _table_window(model: str) -> int:
    """The table's window for `model` (looked up once per model: it is asked every message)."""
    window = _table_entry(CONTEXT_WINDOWS, model)
    return DEFAULT_CONTEXT_WINDOW if window is None else window


def _table_entry(table: dict[str, int], model: str) -> int | None:
    """`table`'s value for the longest of its names that `model` starts with."""
    name = _normalise(model)
    if name.startswith("ft:"):  # fine-tunes: "ft:gpt-4o-mini-2024-07-18:org::id"
        name = name[3:]
    # Each GPT-5 release's ChatGPT model ("gpt-5.1-chat-latest") has the chat window, not
    # the 400k of the release it is named after.
    name = _GPT5_CHAT.sub("gpt-5-chat", name)
    matches = [prefix for prefix in table if _has_prefix(name, prefix)]
    return table[max(matches, key=len)] if matches else None


def _has_prefix(name: str, prefix: str) -> bool:
    # A prefix must end at a separator: "o1" is not "o1x", "gpt-4" is not "gpt-4o".
    return name.startswith(prefix) and not name[len(prefix) : len(prefix) + 1].isalnum()
