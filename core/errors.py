"""The small set of errors the core speaks, each with a message fit for the person."""

from __future__ import annotations


class RelaybotError(Exception):
    """Base class: `user_message` is safe to show in a chat (never holds secrets)."""

    user_message = "Something went wrong. Please try again."

    def __init__(self, detail: str = "", *, user_message: str | None = None) -> None:
        super().__init__(detail or self.user_message)
        if user_message is not None:
            self.user_message = user_message


class ConfigError(RelaybotError):
    """The operator must change configuration; `str(err)` says what to set."""

    user_message = "The bot is not configured correctly. The operator has been told."


class ModelUnavailable(ConfigError):
    """The endpoint refused the model: it does not exist there, or cannot chat."""


class EndpointMissing(ConfigError):
    """The endpoint has no such path: a wrong base URL, or a server without that feature."""


class RateLimited(RelaybotError):
    """The model endpoint asked us to slow down."""

    user_message = "The model is busy right now. Please try again in a moment."

    def __init__(
        self,
        detail: str = "",
        *,
        retry_after: float | None = None,
        user_message: str | None = None,
    ) -> None:
        super().__init__(detail, user_message=user_message)
        self.retry_after = retry_after


class QuotaExhausted(RelaybotError):
    """The account behind the API key has no quota left; retrying will not help."""

    user_message = "The bot's model quota is used up. The operator has been told."


class ContextTooLong(RelaybotError):
    """The request does not fit the model's context window."""

    user_message = "That message is too long for the model. Please send something shorter."


class ContentRefused(RelaybotError):
    """Moderation or the provider refused the content."""

    user_message = "Sorry, I can't help with that."


class EmptyAnswer(RelaybotError):
    """The model's answer held no text at all."""

    user_message = "The model sent back an empty answer. Please try again, or put it another way."


class UpstreamDown(RelaybotError):
    """The model endpoint is unreachable, timed out or failed."""

    user_message = "The model service is not answering right now. Please try again later."


class AuthFailed(RelaybotError):
    """The endpoint rejected our API key."""

    user_message = "The bot cannot reach its model (bad credentials). The operator has been told."


class BadInput(RelaybotError):
    """The person sent something we cannot use (empty, unsupported, too large)."""

    user_message = "I can't use that input."


class ShuttingDown(RelaybotError):
    """This process no longer takes new work; the platform should deliver the event again."""

    user_message = "The bot is restarting. Please send your message again in a moment."


class NotDelivered(RelaybotError):
    """The chat platform did not take (all of) an answer: its API failed, or asked for a
    longer wait than an answer is held for. `shown_all`: the person saw the whole answer
    all the same (only closing its message failed)."""

    user_message = (
        "The chat service did not take the whole answer. Send /retry in a minute to get it again."
    )

    def __init__(
        self, detail: str = "", *, shown_all: bool = False, user_message: str | None = None
    ) -> None:
        super().__init__(detail, user_message=user_message)
        self.shown_all = shown_all
