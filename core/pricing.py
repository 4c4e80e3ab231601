"""What model calls cost: a shipped price table in USD, overridable with RELAYBOT_PRICES."""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core.errors import ConfigError

log = logging.getLogger("relaybot.pricing")

PER_MILLION = 1_000_000
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")
_FIELDS = {
    "input",
    "cached_input",
    "output",
    "audio_input",
    "audio_minute",
    "image",
    "image_input",
}


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Prices of one model: tokens per 1M (text in, cached, out, audio in, image in), audio
    per minute (whisper, or a transcription whose tokens the server did not report), images
    made by quality and size (a model priced per image made pays no output tokens)."""

    input: float = 0.0
    cached_input: float | None = None
    output: float = 0.0
    audio_minute: float = 0.0
    audio_input: float = 0.0
    # quality ("low", "medium", "high", "auto") -> size ("1024x1024") -> USD per image
    image: dict[str, dict[str, float]] = field(default_factory=dict)
    # Input images (an /edit's picture) per 1M tokens; 0: priced as text input.
    image_input: float = 0.0


Pair = tuple[float, float]
# The output tokens of one image GPT Image makes, by quality and size (OpenAI's table; "auto"
# is taken as medium): what an image costs a model priced by tokens.
_IMAGE_OUTPUT_TOKENS: dict[str, dict[str, int]] = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}


def image_output_tokens(size: str, quality: str = "auto") -> int:
    """The output tokens GPT Image spends on one picture of `size` at `quality` ("auto" is
    taken as medium; an unlisted size as the largest listed)."""
    sizes = _IMAGE_OUTPUT_TOKENS.get(quality, _IMAGE_OUTPUT_TOKENS["medium"])
    size = "1024x1024" if size == "auto" else size
    return sizes.get(size, max(sizes.values()))


def _image(low: Pair, medium: Pair, high: Pair) -> dict[str, dict[str, float]]:
    def sizes(square: float, portrait: float) -> dict[str, float]:
        return {"1024x1024": square, "1024x1536": portrait, "1536x1024": portrait}

    table = {"low": sizes(*low), "medium": sizes(*medium), "high": sizes(*high)}
    # "auto" lets the model choose; it is billed like medium in practice.
    table["auto"] = table["medium"]
    return table


# OpenAI list prices (standard tier, USD). Override or extend with RELAYBOT_PRICES.
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-4o-mini": ModelPrice(0.15, 0.075, 0.60),
    "gpt-4o": ModelPrice(2.50, 1.25, 10.00),
    "gpt-4.1": ModelPrice(2.00, 0.50, 8.00),
    "gpt-4.1-mini": ModelPrice(0.40, 0.10, 1.60),
    "gpt-4.1-nano": ModelPrice(0.10, 0.025, 0.40),
    "gpt-5": ModelPrice(1.25, 0.125, 10.00),
    "gpt-5.1": ModelPrice(1.25, 0.125, 10.00),
    "gpt-5-mini": ModelPrice(0.25, 0.025, 2.00),
    "gpt-5-nano": ModelPrice(0.05, 0.005, 0.40),
    "o3": ModelPrice(2.00, 0.50, 8.00),
    "o3-mini": ModelPrice(1.10, 0.55, 4.40),
    "o4-mini": ModelPrice(1.10, 0.275, 4.40),
    "gpt-4-turbo": ModelPrice(10.00, None, 30.00),
    "gpt-3.5-turbo": ModelPrice(0.50, None, 1.50),
    "whisper-1": ModelPrice(audio_minute=0.006),
    # Billed by tokens; the minute prices are OpenAI's estimates, used when no tokens came.
    "gpt-4o-transcribe": ModelPrice(2.50, None, 10.00, audio_minute=0.006, audio_input=6.00),
    "gpt-4o-mini-transcribe": ModelPrice(1.25, None, 5.00, audio_minute=0.003, audio_input=3.00),
    # GPT Image: the prompt's text and input images (an edit's picture) by tokens; what it
    # makes per image (its output tokens, at $40 and $8 per 1M, priced by quality and size).
    "gpt-image-1": ModelPrice(
        5.00,
        1.25,
        image_input=10.00,
        image=_image(low=(0.011, 0.016), medium=(0.042, 0.063), high=(0.167, 0.25)),
    ),
    "gpt-image-1-mini": ModelPrice(
        2.00,
        0.20,
        image_input=2.50,
        image=_image(low=(0.005, 0.006), medium=(0.011, 0.015), high=(0.036, 0.052)),
    ),
    "omni-moderation-latest": ModelPrice(),
    "text-moderation-latest": ModelPrice(),
}


def _number(model: str, name: str, value: Any) -> float:
    # JSON as Python reads it takes NaN, Infinity and 1e400 (infinite): a cost computed from
    # one is NaN (0 tokens x infinity), which the usage table refuses, failing every message.
    number = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer of 309 digits or more
            number = math.inf
    if not (math.isfinite(number) and number >= 0):
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:37]}..."
        raise ConfigError(
            f"RELAYBOT_PRICES: {model}.{name} must be a finite number >= 0, not {shown}"
        )
    return number


def _parse_model(model: str, raw: Any, base: ModelPrice | None) -> ModelPrice:
    if not isinstance(raw, dict):
        raise ConfigError(f"RELAYBOT_PRICES: the entry for {model!r} must be an object")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise ConfigError(
            f"RELAYBOT_PRICES: unknown field(s) {', '.join(sorted(unknown))} for {model!r} "
            f"(allowed: {', '.join(sorted(_FIELDS))})"
        )
    price = base or ModelPrice()
    changes: dict[str, Any] = {}
    for name in ("input", "output", "audio_minute", "audio_input", "image_input"):
        if name in raw:
            changes[name] = _number(model, name, raw[name])
    if "cached_input" in raw:
        value = raw["cached_input"]
        changes["cached_input"] = None if value is None else _number(model, "cached_input", value)
    if "image" in raw:
        images = raw["image"]
        if not isinstance(images, dict):
            raise ConfigError(f"RELAYBOT_PRICES: {model}.image must map quality to sizes")
        merged = {q: dict(s) for q, s in price.image.items()}
        for quality, sizes in images.items():
            if not isinstance(sizes, dict):
                raise ConfigError(
                    f"RELAYBOT_PRICES: {model}.image.{quality} must map sizes to prices"
                )
            merged.setdefault(str(quality), {}).update(
                {str(s): _number(model, f"image.{quality}.{s}", v) for s, v in sizes.items()}
            )
        changes["image"] = merged
    return replace(price, **changes)


def load_overrides(source: str | None) -> dict[str, Any]:
    """RELAYBOT_PRICES as a dict: inline JSON, or the path of a JSON file."""
    if not source or not source.strip():
        return {}
    text = source.strip()
    if not text.startswith("{"):
        path = Path(text).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"RELAYBOT_PRICES: cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"RELAYBOT_PRICES is not valid JSON: {exc.msg} (line {exc.lineno})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError("RELAYBOT_PRICES must be a JSON object of model name -> prices")
    return data


class PriceTable:
    """Prices per model; unknown models cost 0 and are reported once in the log."""

    def __init__(self, prices: dict[str, ModelPrice]) -> None:
        self.prices = prices
        self._warned: set[str] = set()

    @classmethod
    def from_config(cls, source: str | None) -> PriceTable:
        """The shipped table with RELAYBOT_PRICES merged over it (ConfigError when invalid)."""
        prices = dict(DEFAULT_PRICES)
        for model, raw in load_overrides(source).items():
            prices[str(model)] = _parse_model(str(model), raw, prices.get(str(model)))
        return cls(prices)

    def lookup(self, model: str) -> ModelPrice | None:
        """The price of `model`, trying dated snapshots ("gpt-4o-2024-08-06") and prefixes."""
        for name in (model, model.rsplit("/", 1)[-1]):
            if name in self.prices:
                return self.prices[name]
            base = _SNAPSHOT.sub("", name)
            if base in self.prices:
                return self.prices[base]
        return None

    def _price(self, model: str) -> ModelPrice | None:
        price = self.lookup(model)
        if price is None and model not in self._warned:
            self._warned.add(model)
            log.warning(
                "no price known for model %s: its usage is recorded at $0 "
                "(add it to RELAYBOT_PRICES)",
                model,
            )
        return price

    def tokens_cost(
        self, model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0
    ) -> float:
        """USD for a chat call; `prompt_tokens` includes the `cached_tokens`, as the API counts."""
        price = self._price(model)
        if price is None:
            return 0.0
        cached = min(max(cached_tokens, 0), max(prompt_tokens, 0))
        cached_rate = price.input if price.cached_input is None else price.cached_input
        total = (
            (prompt_tokens - cached) * price.input
            + cached * cached_rate
            + completion_tokens * price.output
        )
        return total / PER_MILLION

    def audio_cost(self, model: str, seconds: float) -> float:
        """USD for transcribing `seconds` of audio."""
        price = self._price(model)
        return 0.0 if price is None else max(seconds, 0.0) / 60 * price.audio_minute

    def image_cost(self, model: str, size: str, quality: str = "auto", count: int = 1) -> float:
        """USD for `count` images; an unlisted size is priced like the dearest one listed."""
        price = self._price(model)
        if price is None or not price.image or count <= 0:
            return 0.0
        sizes = price.image.get(quality) or price.image.get("auto") or price.image.get("medium")
        if not sizes:
            sizes = max(price.image.values(), key=lambda s: max(s.values(), default=0.0))
        size = "1024x1024" if size == "auto" else size
        each = sizes.get(size, max(sizes.values(), default=0.0))
        return each * count

    def image_estimate(self, model: str, size: str, quality: str = "auto") -> float:
        """USD one image made will cost at least: its per-image price where the model has
        one; else its output tokens (as GPT Image makes that size and quality) at the
        model's output price (a model the operator priced by tokens alone)."""
        per_image = self.image_cost(model, size, quality)
        if per_image:
            return per_image
        price = self._price(model)
        if price is None or not price.output:
            return 0.0
        return image_output_tokens(size, quality) * price.output / PER_MILLION

    def cost(
        self,
        model: str,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cached_tokens: int = 0,
        audio_tokens: int = 0,
        audio_seconds: float = 0.0,
        images: int = 0,
        image_size: str = "1024x1024",
        image_quality: str = "auto",
        image_tokens: int = 0,
    ) -> float:
        """USD for one recorded call, whatever it consumed. `audio_tokens` (part of
        `prompt_tokens`) are priced per audio token where the model has that price, and then
        its seconds are not priced again; else the seconds are. `image_tokens` (input
        images, part of `prompt_tokens`) are priced at the model's image input price, else
        as text. `images` made are priced per image where the model has such prices: their
        output tokens (`completion_tokens`) are not priced again."""
        total = 0.0
        audio_rate = 0.0
        price = self._price(model) if audio_tokens or image_tokens or images else None
        if audio_tokens:
            audio_rate = price.audio_input if price is not None else 0.0
            total += audio_tokens * audio_rate / PER_MILLION
        image_tokens = min(max(image_tokens, 0), max(prompt_tokens - audio_tokens, 0))
        if image_tokens and price is not None:
            total += image_tokens * (price.image_input or price.input) / PER_MILLION
        text_tokens = prompt_tokens - audio_tokens - image_tokens
        if images and price is not None and price.image:
            completion_tokens = 0  # the per-image price is the output's
        if text_tokens or completion_tokens:
            total += self.tokens_cost(model, text_tokens, completion_tokens, cached_tokens)
        if audio_seconds and not audio_rate:
            total += self.audio_cost(model, audio_seconds)
        if images:
            total += self.image_cost(model, image_size, image_quality, images)
        if not (prompt_tokens or completion_tokens or audio_seconds or images):
            self._price(model)
        return round(total, 10)


def money(amount: float) -> str:
    """Dollars for people: cents, or four decimals for amounts under a cent ("< $0.0001" for
    less: a few cheap requests are not free)."""
    if 0 < amount < 0.00005:
        return "< $0.0001"
    if amount != 0 and abs(amount) < 0.01:
        return f"${amount:.4f}"
    return f"${amount:,.2f}"
