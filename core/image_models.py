"""The sizes and qualities OpenAI's GPT Image models take, to catch a wrong setting early.

A GPT Image model refuses a size or quality it does not make (no 512x512, no "hd": those
were DALL-E's, retired in May 2026), and every `/image` then fails. Other names (a local
server's model) are not checked: such a server may take anything.
"""

from __future__ import annotations

from core.config import Settings

GPT_IMAGE_SIZES = ("1024x1024", "1024x1536", "1536x1024", "auto")
GPT_IMAGE_QUALITIES = ("low", "medium", "high", "auto")
GPT_IMAGE_FAMILIES = ("gpt-image", "chatgpt-image")  # gpt-image-1, gpt-image-1-mini, -1.5, ...


def is_gpt_image(model: str) -> bool:
    """Whether `model` is one of OpenAI's GPT Image models ("openai/..." behind a router)."""
    return model.lower().rsplit("/", 1)[-1].startswith(GPT_IMAGE_FAMILIES)


def image_settings_problem(settings: Settings) -> str | None:
    """Why RELAYBOT_IMAGE_SIZE or RELAYBOT_IMAGE_QUALITY cannot work with the image model."""
    model, size, quality = settings.image_model, settings.image_size, settings.image_quality
    if not is_gpt_image(model):
        return None
    if size not in GPT_IMAGE_SIZES:
        return (
            f"RELAYBOT_IMAGE_SIZE={size} is not a size {model} makes: "
            f"one of {', '.join(GPT_IMAGE_SIZES)}"
        )
    if quality not in GPT_IMAGE_QUALITIES:
        return (
            f"RELAYBOT_IMAGE_QUALITY={quality} is not a quality {model} takes: "
            f"one of {', '.join(GPT_IMAGE_QUALITIES)}"
        )
    return None
