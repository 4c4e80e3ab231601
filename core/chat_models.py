"""Which of an endpoint's models can hold a conversation.

`/v1/models` lists every model a key may use, with nothing to tell a chat model from a
transcription, speech, image, embedding or moderation model. Picked for a chat, one of those
makes every later message fail (OpenAI answers 404 "This is not a chat model"). The families
below are the ones OpenAI serves and local servers (Ollama, vLLM) copy; any other name is
taken for a chat model, since a compatible endpoint may serve anything.
"""

from __future__ import annotations

import re

# A family name, as a whole part of the model's name ("gpt-4o-mini-tts", "nomic-embed-text").
_FAMILIES = {
    "whisper": "audio",
    "tts": "audio",
    "transcribe": "audio",
    "realtime": "audio",
    "dall-e": "images",
    "gpt-image": "images",
    "chatgpt-image": "images",
    "sora": "video",
    "embed": "embeddings",
    "embedding": "embeddings",
    "moderation": "moderation",
    "davinci": "text completion",
    "babbage": "text completion",
    "computer-use": "computer use",
}
_NOT_CHAT = re.compile(
    r"(?:^|[-_/:.])(" + "|".join(map(re.escape, _FAMILIES)) + r")(?=$|[-_/:.\d])",
    re.IGNORECASE,
)


def not_chat_purpose(model: str) -> str | None:
    """What `model` is for when it is not a chat model ("audio", "images", ...), else None."""
    found = _NOT_CHAT.search(model)
    return _FAMILIES[found.group(1).lower()] if found else None


def chat_models(models: list[str]) -> list[str]:
    """The chat models among an endpoint's `models`, in their order."""
    return [m for m in models if not_chat_purpose(m) is None]
