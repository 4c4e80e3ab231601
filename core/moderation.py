"""Moderation of what goes in and what comes out, per the configured policy."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from core.config import ModerationPolicy
from core.errors import BadInput, ContentRefused
from core.openai_client import OpenAIClient

log = logging.getLogger("relaybot.moderation")

WITHHELD_NOTICE = "This answer was withheld because it was flagged by moderation."
# An answer whose output check could not run (moderation down) is withheld too: fail closed.
UNCHECKED_NOTICE = (
    "This answer was withheld because moderation could not check it. Please try again later."
)


def describe(categories: tuple[str, ...]) -> str:
    """Human words for moderation categories ("harassment/threatening" -> "harassment")."""
    words: list[str] = []
    for category in categories:
        word = category.split("/")[0].replace("-", " ").replace("_", " ")
        if word not in words:
            words.append(word)
    return ", ".join(words) or "unsafe content"


class Moderator:
    """Calls the moderation endpoint when the policy asks for it."""

    def __init__(self, client: OpenAIClient, model: str, policy: ModerationPolicy) -> None:
        self._client = client
        self._model = model
        self.policy = policy
        self._told_pictures = False  # the operator heard that pictures cannot be moderated

    async def flagged(self, texts: list[str]) -> tuple[str, ...]:
        """Categories flagged across `texts` (empty when all are fine)."""
        texts = [t for t in texts if t.strip()]
        if not texts:
            return ()
        results = await self._client.moderate(model=self._model, inputs=texts)
        categories: list[str] = []
        for result in results:
            if result.flagged:
                categories.extend(c for c in result.categories if c not in categories)
                if not result.categories:
                    categories.append("unsafe content")
        return tuple(categories)

    @property
    def takes_pictures(self) -> bool:
        """Whether the moderation model classifies pictures too (OpenAI's omni-moderation
        models; the text-moderation ones and other servers' refuse image inputs)."""
        return self._model.lower().startswith("omni-moderation")

    async def check_input(self, *texts: str, pictures: Sequence[dict[str, Any]] = ()) -> None:
        """Raise ContentRefused naming the categories when input is flagged.

        `pictures`: image_url parts (data URLs) going to a model with the texts; each is
        classified on its own, beside the texts, where the moderation model takes pictures.
        """
        if not self.policy.checks_input:
            return
        checks = [self.flagged(list(texts))]
        if self.takes_pictures:
            checks.extend(self._picture_flagged(part) for part in pictures)
        categories: list[str] = []
        for found in await asyncio.gather(*checks):
            categories.extend(c for c in found if c not in categories)
        if categories:
            raise ContentRefused(
                f"input flagged: {tuple(categories)}",
                user_message=(
                    "Sorry, I can't help with that: your message was flagged by moderation "
                    f"({describe(tuple(categories))}) and was not sent to the model."
                ),
            )

    async def _picture_flagged(self, part: dict[str, Any]) -> tuple[str, ...]:
        try:
            result = await self._client.moderate_parts(model=self._model, parts=[part])
        except BadInput as refused:
            # The endpoint refuses image inputs (a server or proxy that takes text only,
            # under an omni-moderation name): the picture goes unchecked, as before pictures
            # were moderated, rather than every photo being refused as the person's fault.
            # The operator is told once.
            level = logging.INFO if self._told_pictures else logging.ERROR
            self._told_pictures = True
            log.log(
                level,
                "operator action needed: the moderation endpoint refused a picture (%s): "
                "pictures are not moderated; RELAYBOT_MODERATION_MODEL=%s must read "
                "images (OpenAI's omni-moderation-latest does)",
                str(refused)[:300],
                self._model,
            )
            return ()
        if not result.flagged:
            return ()
        return result.categories or ("unsafe content",)

    async def output_flagged(self, text: str) -> tuple[str, ...]:
        """Categories flagged in model output, or () when allowed or not checked."""
        if not self.policy.checks_output:
            return ()
        return await self.flagged([text])

    async def probe(self) -> bool:
        """Moderate one word when the policy moderates anything; False when it does not.

        For the start and `relaybot doctor`: a server without moderation (Ollama's) raises
        EndpointMissing here instead of failing every message later.
        """
        if not (self.policy.checks_input or self.policy.checks_output):
            return False
        await self._client.moderate(model=self._model, inputs=["relaybot"])
        return True
