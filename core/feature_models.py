"""Whether the endpoint serves the models configured for voice notes, /translate and images.

An endpoint lists the models a key may use. One that lists no transcription model (Ollama)
fails every voice note; a retired image model is gone from the list. Said at start and by
`relaybot doctor`, with the listed models that could serve instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.config import Settings
from core.image_models import GPT_IMAGE_FAMILIES


@dataclass(frozen=True, slots=True)
class MissingModel:
    """A configured model the endpoint does not list."""

    check: str  # "transcription model", ...
    setting: str  # "RELAYBOT_TRANSCRIBE_MODEL"
    model: str
    feature: str  # what will fail: "voice notes"
    instead: tuple[str, ...]  # listed models that could serve

    def problem(self) -> str:
        return (
            f"{self.setting}={self.model} is not among the endpoint's models: "
            f"{self.feature} will fail"
        )

    def fix(self) -> str:
        if self.instead:
            return f"set {self.setting} to one of: {', '.join(self.instead[:8])}"
        return f"the endpoint lists no model for {self.feature}: it will not work there"


# Per setting: its check's name, what it serves, and words in the names of models that can
# serve it (only whisper translates; tts models are audio too but cannot transcribe).
_FEATURES = (
    ("transcription model", "RELAYBOT_TRANSCRIBE_MODEL", "voice notes", ("whisper", "transcribe")),
    ("translation model", "RELAYBOT_TRANSLATE_MODEL", "/translate", ("whisper",)),
    ("image model", "RELAYBOT_IMAGE_MODEL", "/image and /edit", GPT_IMAGE_FAMILIES),
)


def missing_feature_models(settings: Settings, models: list[str]) -> list[MissingModel]:
    """The configured transcription, translation and image models `models` lacks (none
    when the endpoint listed nothing: then it cannot tell)."""
    if not models:
        return []
    configured = {
        "RELAYBOT_TRANSCRIBE_MODEL": settings.transcribe_model,
        "RELAYBOT_TRANSLATE_MODEL": settings.translate_model,
        "RELAYBOT_IMAGE_MODEL": settings.image_model,
    }
    missing = []
    for check, setting, feature, words in _FEATURES:
        model = configured[setting]
        if model in models:
            continue
        instead = tuple(m for m in sorted(models) if any(w in m.lower() for w in words))
        missing.append(MissingModel(check, setting, model, feature, instead))
    return missing
