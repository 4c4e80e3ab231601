"""The sizes and qualities OpenAI's image models take, to catch a wrong setting before use.

An image model refuses a size or quality it does not make (gpt-image-1 makes no 512x512,
DALL-E 3 no "low"), and every `/image` then fails. The families below are OpenAI's; any
other name (a local server's model) is not checked, since such a server may take anything.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ImageOptions:
    family: str
    sizes: tuple[str, ...]
    qualities: tuple[str, ...]


# "auto" quality is taken by every model (the API's default); a size of "auto" only by GPT
# Image. Names are matched by prefix: gpt-image-1, gpt-image-1-mini, gpt-image-1.5, ...
_FAMILIES = (
    ImageOptions(
        "gpt-image",
        ("1024x1024", "1024x1536", "1536x1024", "auto"),
        ("low", "medium", "high", "auto"),
    ),
    ImageOptions("dall-e-3", ("1024x1024", "1792x1024", "1024x1792"), ("standard", "hd", "auto")),
    ImageOptions("dall-e-2", ("256x256", "512x512", "1024x1024"), ("standard", "auto")),
)


def image_options(model: str) -> ImageOptions | None:
    """What `model` takes, when it is one of OpenAI's image models, else None."""
    name = model.lower().rsplit("/", 1)[-1]  # "openai/gpt-image-1" behind a router
    return next((f for f in _FAMILIES if name.startswith(f.family)), None)


def image_settings_problem(model: str, size: str, quality: str) -> str | None:
    """Why RELAYBOT_IMAGE_SIZE or RELAYBOT_IMAGE_QUALITY cannot work with `model`, or None."""
    options = image_options(model)
    if options is None:
        return None
    if size not in options.sizes:
        return (
            f"RELAYBOT_IMAGE_SIZE={size} is not a size {model} makes: "
            f"one of {', '.join(options.sizes)}"
        )
    if quality not in options.qualities:
        return (
            f"RELAYBOT_IMAGE_QUALITY={quality} is not a quality {model} takes: "
            f"one of {', '.join(options.qualities)}"
        )
    return None
