"""Configuration from environment variables and a `.env` file."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SYSTEM_PROMPT = (
    "You are relaybot, a helpful assistant in a chat. Answer clearly and concisely. "
    "Never reveal API keys, tokens or other secrets."
)


class ModerationPolicy(StrEnum):
    """Which side of a conversation goes through the moderation endpoint."""

    OFF = "off"
    INPUT = "input"
    OUTPUT = "output"
    BOTH = "both"

    @property
    def checks_input(self) -> bool:
        """True when inbound text, transcripts and image prompts are moderated."""
        return self in (ModerationPolicy.INPUT, ModerationPolicy.BOTH)

    @property
    def checks_output(self) -> bool:
        """True when model output is moderated."""
        return self in (ModerationPolicy.OUTPUT, ModerationPolicy.BOTH)


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


class Settings(BaseSettings):
    """Every setting relaybot reads; see README and .env.example."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        # `RELAYBOT_CONTEXT_TOKENS=` in .env means "not set", not an invalid number.
        env_ignore_empty=True,
    )

    # Model endpoint
    openai_api_key: SecretStr | None = Field(None, validation_alias=_env("OPENAI_API_KEY"))
    openai_base_url: str = Field(
        "https://api.openai.com/v1", validation_alias=_env("OPENAI_BASE_URL")
    )
    request_timeout: float = Field(60.0, validation_alias=_env("RELAYBOT_REQUEST_TIMEOUT"))
    stream_idle_timeout: float = Field(60.0, validation_alias=_env("RELAYBOT_STREAM_IDLE_TIMEOUT"))
    max_connections: int = Field(100, validation_alias=_env("RELAYBOT_MAX_CONNECTIONS"))
    max_retries: int = Field(2, validation_alias=_env("RELAYBOT_MAX_RETRIES"))
    http_proxy: str | None = Field(None, validation_alias=_env("RELAYBOT_HTTP_PROXY"))

    # Storage
    database_url: str = Field(
        "sqlite+aiosqlite:///relaybot.db", validation_alias=_env("RELAYBOT_DATABASE_URL")
    )
    auto_migrate: bool = Field(True, validation_alias=_env("RELAYBOT_AUTO_MIGRATE"))

    # Models and prompts
    chat_model: str = Field("gpt-4o-mini", validation_alias=_env("RELAYBOT_CHAT_MODEL"))
    transcribe_model: str = Field(
        "gpt-4o-mini-transcribe", validation_alias=_env("RELAYBOT_TRANSCRIBE_MODEL")
    )
    translate_model: str = Field("whisper-1", validation_alias=_env("RELAYBOT_TRANSLATE_MODEL"))
    image_model: str = Field("gpt-image-1", validation_alias=_env("RELAYBOT_IMAGE_MODEL"))
    image_size: str = Field("1024x1024", validation_alias=_env("RELAYBOT_IMAGE_SIZE"))
    moderation_model: str = Field(
        "omni-moderation-latest", validation_alias=_env("RELAYBOT_MODERATION_MODEL")
    )
    system_prompt: str = Field(
        DEFAULT_SYSTEM_PROMPT, validation_alias=_env("RELAYBOT_SYSTEM_PROMPT")
    )
    context_tokens: Annotated[int, Field(gt=0)] | None = Field(
        None, validation_alias=_env("RELAYBOT_CONTEXT_TOKENS")
    )
    reply_tokens: Annotated[int, Field(gt=0)] = Field(
        1024, validation_alias=_env("RELAYBOT_REPLY_TOKENS")
    )
    moderation: ModerationPolicy = Field(
        ModerationPolicy.BOTH, validation_alias=_env("RELAYBOT_MODERATION")
    )
    vision_models: str = Field(
        "gpt-4o,gpt-4o-mini,gpt-4.1,gpt-4.1-mini,gpt-4.1-nano,gpt-5,gpt-5-mini,gpt-5-nano,o3,o4-mini",
        validation_alias=_env("RELAYBOT_VISION_MODELS"),
    )
    group_voice_transcript_only: bool = Field(
        False, validation_alias=_env("RELAYBOT_GROUP_VOICE_TRANSCRIPT_ONLY")
    )
    max_audio_bytes: int = Field(
        25 * 1024 * 1024, validation_alias=_env("RELAYBOT_MAX_AUDIO_BYTES")
    )
    max_input_chars: int = Field(100_000, validation_alias=_env("RELAYBOT_MAX_INPUT_CHARS"))
    image_dir: str = Field("relaybot-images", validation_alias=_env("RELAYBOT_IMAGE_DIR"))

    # Usage, budgets, access, rate limits, privacy (see core/policy.py)
    prices: str | None = Field(None, validation_alias=_env("RELAYBOT_PRICES"))
    image_quality: str = Field("auto", validation_alias=_env("RELAYBOT_IMAGE_QUALITY"))
    allowed_users: str = Field("", validation_alias=_env("RELAYBOT_ALLOWED_USERS"))
    allowed_chats: str = Field("", validation_alias=_env("RELAYBOT_ALLOWED_CHATS"))
    admins: str = Field("", validation_alias=_env("RELAYBOT_ADMINS"))
    budget_user_daily: Annotated[float, Field(ge=0)] | None = Field(
        None, validation_alias=_env("RELAYBOT_BUDGET_USER_DAILY")
    )
    budget_user_monthly: Annotated[float, Field(ge=0)] | None = Field(
        None, validation_alias=_env("RELAYBOT_BUDGET_USER_MONTHLY")
    )
    budget_chat_daily: Annotated[float, Field(ge=0)] | None = Field(
        None, validation_alias=_env("RELAYBOT_BUDGET_CHAT_DAILY")
    )
    budget_chat_monthly: Annotated[float, Field(ge=0)] | None = Field(
        None, validation_alias=_env("RELAYBOT_BUDGET_CHAT_MONTHLY")
    )
    budget_global_daily: Annotated[float, Field(ge=0)] | None = Field(
        None, validation_alias=_env("RELAYBOT_BUDGET_GLOBAL_DAILY")
    )
    budget_global_monthly: Annotated[float, Field(ge=0)] | None = Field(
        None, validation_alias=_env("RELAYBOT_BUDGET_GLOBAL_MONTHLY")
    )
    rate_limit_per_minute: Annotated[int, Field(ge=0)] = Field(
        0, validation_alias=_env("RELAYBOT_RATE_LIMIT_PER_MINUTE")
    )
    retention_days: Annotated[int, Field(gt=0)] | None = Field(
        None, validation_alias=_env("RELAYBOT_RETENTION_DAYS")
    )

    # Load: answers worked on at once (more wait their turn, stored), database connections
    max_in_flight: int = Field(256, gt=0, validation_alias=_env("RELAYBOT_MAX_IN_FLIGHT"))
    # Recent history of active chats kept in memory (exact: see core/history.py).
    history_cache_mb: float = Field(64.0, ge=0, validation_alias=_env("RELAYBOT_HISTORY_CACHE_MB"))
    db_pool_size: int = Field(10, gt=0, validation_alias=_env("RELAYBOT_DB_POOL_SIZE"))
    # Extra connections under load are opened and, once returned, closed again: under a
    # steady load that is a new PostgreSQL backend (a fork) every few messages, which tripled
    # PostgreSQL's CPU per message. By default a burst waits for one of the pool's instead.
    db_max_overflow: int = Field(0, ge=0, validation_alias=_env("RELAYBOT_DB_MAX_OVERFLOW"))

    # Durability and shutdown
    lease_seconds: float = Field(60.0, gt=0, validation_alias=_env("RELAYBOT_LEASE_SECONDS"))
    shutdown_grace: float = Field(25.0, ge=0, validation_alias=_env("RELAYBOT_SHUTDOWN_GRACE"))

    # App HTTP server (webhooks, health)
    http_host: str = Field("0.0.0.0", validation_alias=_env("RELAYBOT_HTTP_HOST"))
    http_port: int = Field(8080, validation_alias=_env("RELAYBOT_HTTP_PORT"))
    log_level: str = Field("INFO", validation_alias=_env("RELAYBOT_LOG_LEVEL"))
    # "json" (one object per line), "text", or "auto": JSON unless stderr is a terminal.
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", validation_alias=_env("RELAYBOT_LOG_FORMAT")
    )

    # Telegram
    telegram_bot_token: SecretStr | None = Field(None, validation_alias=_env("TELEGRAM_BOT_TOKEN"))
    telegram_api_base_url: str = Field(
        "https://api.telegram.org/bot", validation_alias=_env("TELEGRAM_API_BASE_URL")
    )
    telegram_file_base_url: str = Field(
        "https://api.telegram.org/file/bot", validation_alias=_env("TELEGRAM_FILE_BASE_URL")
    )
    telegram_webhook_url: str | None = Field(None, validation_alias=_env("TELEGRAM_WEBHOOK_URL"))
    telegram_webhook_secret: SecretStr | None = Field(
        None, validation_alias=_env("TELEGRAM_WEBHOOK_SECRET")
    )

    # Slack
    slack_bot_token: SecretStr | None = Field(None, validation_alias=_env("SLACK_BOT_TOKEN"))
    slack_signing_secret: SecretStr | None = Field(
        None, validation_alias=_env("SLACK_SIGNING_SECRET")
    )
    slack_app_token: SecretStr | None = Field(None, validation_alias=_env("SLACK_APP_TOKEN"))
    slack_api_url: str = Field("https://slack.com/api/", validation_alias=_env("SLACK_API_URL"))

    def vision_model_names(self) -> frozenset[str]:
        """Models that accept image input."""
        return frozenset(m.strip() for m in self.vision_models.split(",") if m.strip())
