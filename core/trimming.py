"""How much chat history fits a model's context window next to the system prompt."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from core.config import Settings
from core.errors import ContextTooLong
from core.tokens import (
    PER_MESSAGE_TOKENS,
    PRIMING_TOKENS,
    ROLE_TOKENS,
    context_window,
    max_input_tokens,
)


@dataclass(frozen=True, slots=True)
class Budget:
    """The token budget of one request; `system_tokens` are the system prompt's content tokens."""

    window: int
    reply_tokens: int
    system_tokens: int
    # The most input the API takes, where it takes less than the window less the reply
    # (`core.tokens.max_input_tokens`).
    max_input: int | None = None

    @property
    def history_tokens(self) -> int:
        """Tokens left for history messages (their costs include per-message overhead)."""
        system_cost = self.system_tokens + PER_MESSAGE_TOKENS + ROLE_TOKENS
        room = self.window - self.reply_tokens
        if self.max_input is not None:
            room = min(room, self.max_input)
        return room - system_cost - PRIMING_TOKENS


def history_budget(settings: Settings, model: str, system_tokens: int) -> int:
    """Tokens of `model`'s window (or RELAYBOT_CONTEXT_TOKENS) left for history beside a
    system prompt of `system_tokens` and the reply's reserve, within the model's input
    limit."""
    return Budget(
        window=context_window(model, settings.context_tokens),
        reply_tokens=settings.reply_tokens,
        system_tokens=system_tokens,
        max_input=max_input_tokens(model),
    ).history_tokens


def fit_newest(costs_newest_first: Iterable[int], budget: int) -> int:
    """How many of the newest messages fit `budget`, stopping at the first that does not.

    The newest message is always required: if it alone exceeds the budget, ContextTooLong
    tells the person their message is too long. If the budget is not positive (the system
    prompt and reply reserve already fill the window), ContextTooLong says the system prompt
    is too long. Costs are pulled lazily and never more than one past the last kept message,
    so a store can feed rows page by page. An empty history gives 0.
    """
    if budget <= 0:
        raise ContextTooLong(
            f"system prompt and reply reserve leave {budget} tokens for history",
            user_message=(
                "The bot's system prompt is too long for the model's context window. "
                "The operator has been told."
            ),
        )
    used = 0
    kept = 0
    for cost in costs_newest_first:
        if cost < 0:
            raise ValueError(f"message cost must not be negative, got {cost}")
        if used + cost > budget:
            if kept == 0:
                over = cost - budget
                raise ContextTooLong(
                    f"newest message costs {cost} tokens, history budget is {budget}",
                    user_message=(
                        "That message is too long for the model (about "
                        f"{over} tokens over the limit). Please send something shorter."
                    ),
                )
            break
        used += cost
        kept += 1
    return kept
