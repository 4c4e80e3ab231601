"""Configuration from environment variables and a `.env` file."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode, urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from sqlalchemy.engine import make_url

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


DATABASE_URL_FORMS = "sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER:PASSWORD@HOST/DB"
# The schemes people and hosting platforms write (Heroku, Render, Fly.io and Neon hand out
# postgres:// or postgresql:// URLs), as the async drivers relaybot runs on.
_DATABASE_SCHEMES = {
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}


# What a PostgreSQL URL's query may hold. asyncpg.connect() keywords that take text, and
# SQLAlchemy's statement cache size, go to the driver as they are (SQLAlchemy passes the
# query as keywords); libpq's settings that hosted URLs carry are given to asyncpg in its own
# terms (`asyncpg_connect_args`). Anything else would stop every connection with a TypeError.
_ASYNCPG_TEXT_ARGS = frozenset(
    {
        "ssl",
        "host",
        "user",
        "password",
        "database",
        "passfile",
        "service",
        "servicefile",
        "target_session_attrs",
        "krbsrvname",
        "gsslib",
        "command_timeout",
        "prepared_statement_cache_size",
    }
)
# libpq's settings asyncpg reads only from a connection URI (by libpq's rules, PGSSL*
# variables too; one it does not know is a server setting, as application_name and options).
_LIBPQ_DSN_SETTINGS = ("sslrootcert", "sslcert", "sslkey", "sslcrl", "application_name", "options")
_LIBPQ_SETTINGS = frozenset({*_LIBPQ_DSN_SETTINGS, "connect_timeout", "channel_binding"})
_VERIFYING_SSL_MODES = ("verify-ca", "verify-full")


def _last(value: str | tuple[str, ...]) -> str:
    """A query value; the last one of a setting given twice (as libpq and asyncpg take it)."""
    return value if isinstance(value, str) else value[-1]


def normalize_database_url(url: str) -> str:
    """`url` as relaybot's engine takes it: postgres:// and postgresql:// as
    postgresql+asyncpg://, sqlite:// as sqlite+aiosqlite://, libpq's `sslmode` as asyncpg's
    `ssl`, libpq's other settings checked (`asyncpg_connect_args` translates them). Raises
    ValueError saying what to set (never showing the password or a setting's value)
    otherwise."""
    scheme, sep, rest = url.strip().partition("://")
    driver = _DATABASE_SCHEMES.get(scheme.lower()) if sep else None
    if driver is None:
        named = sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme)
        what = f"{scheme}:// URLs" if named else "this value (not a database URL)"
        raise ValueError(
            f"relaybot cannot use {what}; set it to {DATABASE_URL_FORMS} "
            "(postgres://, postgresql:// and sqlite:// URLs are taken too)"
        )
    # USER:PASSWORD@HOST: a second @ is one in the password (or user name) not encoded, and
    # the URL would be read as another host (`p@ss@db` as the host `ss@db`).
    if re.split(r"[/?#]", rest, maxsplit=1)[0].count("@") > 1:
        raise ValueError(
            "the user name or password holds an @ that is not percent-encoded; write each @ "
            "in them as %40 (e.g. postgresql://USER:p%40ss@HOST/DB)"
        )
    normalized = f"{driver}://{rest}"
    try:
        parsed = make_url(normalized)
    except Exception:
        raise ValueError(
            f"this {scheme}:// URL cannot be read; set it to {DATABASE_URL_FORMS}"
        ) from None
    if driver == "postgresql+asyncpg" and parsed.query:
        query = dict(parsed.query)
        if "sslmode" in query:
            # asyncpg takes libpq's sslmode values (disable ... verify-full) as `ssl`.
            query.setdefault("ssl", query.pop("sslmode"))
            normalized = parsed.set(query=query).render_as_string(hide_password=False)
        _check_postgres_query(query)
    return normalized


def _check_postgres_query(query: dict[str, str | tuple[str, ...]]) -> None:
    """Raise ValueError for a setting in a PostgreSQL URL's query that cannot work, naming
    the setting and never its value (sslkey's path, say, is nobody else's business)."""
    for key in query:
        if key not in _ASYNCPG_TEXT_ARGS and key not in _LIBPQ_SETTINGS:
            raise ValueError(
                f"the URL's ?{key}= is a setting relaybot's PostgreSQL driver (asyncpg) does "
                "not take; remove it from the URL (of libpq's it takes sslmode, sslrootcert, "
                "sslcert, sslkey, sslcrl, connect_timeout, application_name, options and "
                "channel_binding)"
            )
    timeout = query.get("connect_timeout")
    if timeout is not None and not re.fullmatch(r"-?\d+", _last(timeout).strip()):
        raise ValueError("the URL's connect_timeout must be a whole number of seconds, e.g. 10")
    binding, ssl = (_last(query.get(key, "")) for key in ("channel_binding", "ssl"))
    if binding == "require" and ssl == "disable":
        raise ValueError(
            "the URL's channel_binding=require needs TLS, which its sslmode=disable turns off; "
            "remove one of them"
        )


def asyncpg_connect_args(url: str) -> tuple[str, dict[str, Any]]:
    """A database URL as `normalize_database_url` made it, split into the URL SQLAlchemy's
    asyncpg dialect takes and the asyncpg.connect() arguments libpq's settings in it stand
    for (values that are not text: SQLAlchemy passes the query's as text). Other URLs come
    back as they are, with no arguments."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return url, {}
    query = dict(parsed.query)
    args: dict[str, Any] = {}
    if "connect_timeout" in query:
        # libpq: zero or less waits for ever.
        seconds = int(_last(query.pop("connect_timeout")))
        args["timeout"] = float(seconds) if seconds > 0 else None
    dsn = {key: _last(query.pop(key)) for key in _LIBPQ_DSN_SETTINGS if key in query}
    binding = _last(query.pop("channel_binding", ""))
    if binding == "require" and _last(query.get("ssl", "")) not in _VERIFYING_SSL_MODES:
        # asyncpg signs in with SCRAM-SHA-256 but has no channel binding (-PLUS), so it
        # cannot refuse a server in the middle that relays the sign-in, which is what
        # channel_binding=require is for (Neon's URLs ask for it). Checking the server's
        # certificate and name (libpq's sslmode=verify-full) refuses that server as well:
        # against the URL's sslrootcert, else the system's CAs (asyncpg's ssl=True), which
        # sign hosted databases' certificates.
        if "sslrootcert" in dsn:
            query["ssl"] = "verify-full"
        else:
            query.pop("ssl", None)
            args["ssl"] = True
    if dsn:
        # asyncpg reads these from a connection URI only; the keywords beside it (host,
        # user, ...) take precedence over the URI's, which names no server.
        args["dsn"] = "postgresql://?" + urlencode(dsn, quote_via=quote)
    return parsed.set(query=query).render_as_string(hide_password=False), args


BASE_URL_FORMS = "e.g. https://api.openai.com/v1 or http://localhost:11434/v1"


def base_url_problem(url: str) -> str | None:
    """What keeps `url` from being an OpenAI base URL, or None; never quoting any of it
    (it may hold a password or a key).

    relaybot adds each request's path to it and sends OPENAI_API_KEY as a bearer token: a
    user and password in it (`https://user:pw@host/v1`) would be a second Authorization
    header, which the HTTP client refuses on every request; a query string would come
    before the path (`/v1?key=.../chat/completions`); any other scheme is not HTTP.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return f"cannot be read as a URL; set it to the endpoint's address, {BASE_URL_FORMS}"
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return f"must start with http:// or https:// and a host, {BASE_URL_FORMS}"
    if parts.username is not None or parts.password is not None:
        return (
            "must not hold a user name or password (USER:PASSWORD@ before the host): "
            "relaybot signs in with OPENAI_API_KEY alone; remove them and put the key in "
            "OPENAI_API_KEY"
        )
    if not parts.hostname:
        return f"names no host, {BASE_URL_FORMS}"
    if parts.query or parts.fragment:
        return (
            "must not end in a query string or fragment (?... or #...): relaybot adds each "
            "request's path after it; a key goes in OPENAI_API_KEY"
        )
    return None


# OpenAI's audio endpoints refuse a request body over 25 MiB (HTTP 413): the file and the
# multipart form around it. The default file limit leaves room for the form's fields and
# framing (a few hundred bytes, more with a long file name).
OPENAI_AUDIO_BODY_LIMIT = 25 * 1024 * 1024
DEFAULT_MAX_AUDIO_BYTES = OPENAI_AUDIO_BODY_LIMIT - 64 * 1024

# RELAYBOT_FIRST_TOKEN_TIMEOUT's default: how long a streamed answer may go without its first
# words (a reasoning model thinks in silence), and so how long platforms show the bot at work.
FIRST_TOKEN_TIMEOUT = 300.0

LogLevel = Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"]
_WEBHOOK_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")
MAX_RETENTION_DAYS = 36_500
MAX_LEASE_SECONDS = 86_400.0
# A budget in dollars: 0 is "no access", unset is "no limit" (never inf or nan).
Dollars = Annotated[float, Field(ge=0, allow_inf_nan=False)]
# What operators also write for WARNING and CRITICAL (Python's logging takes them too).
_LEVEL_NAMES = {"WARN": "WARNING", "FATAL": "CRITICAL"}


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite database URL names (relative to the working directory, as SQLite
    takes it); None for other databases and in-memory ones."""
    try:
        parsed = make_url(url)
    except Exception:
        return None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or database in (None, "", ":memory:"):
        return None
    if database.startswith("file:") or "mode=memory" in str(parsed.query):
        return None  # a URI filename: SQLite's to read
    return Path(database)


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


# Settings holding a secret: stripped of the whitespace and quotes around them (below).
SECRET_SETTINGS = (
    "openai_api_key",
    "telegram_bot_token",
    "telegram_webhook_secret",
    "slack_bot_token",
    "slack_signing_secret",
    "slack_app_token",
)
_QUOTES = ("'", '"')


def unwrapped(value: str) -> str:
    """`value` without the whitespace around it and one matching pair of quotes around that:
    a trailing newline (`echo KEY > file`) or `KEY="..."` in docker's --env-file (which keeps
    the quotes) is never part of a key or token."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in _QUOTES:
        value = value[1:-1].strip()
    return value


TELEGRAM_BASE_URL_FORMS = (
    "e.g. https://api.telegram.org/bot, or http://HOST:8081/bot for a self-hosted Bot API server"
)
_OFFICIAL_BOT_API = "api.telegram.org"
# What the app's HTTP server answers itself (bots/http_server.py), and Slack's events: the
# Telegram webhook cannot be served there.
_NOT_WEBHOOK_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/slack/events"})
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# Proxy schemes httpx takes; socks5 needs the socksio package (httpx[socks]).
_PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")
PROXY_FORMS = "e.g. http://proxy.example:3128 or http://USER:PASSWORD@proxy.example:3128"


def _url_parts(url: str) -> tuple[str, str, str] | None:
    """(scheme in lowercase, host, path) of an absolute URL, or None when it is not one (no
    scheme, no host, a port that is not a number)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return None
    if not parts.scheme or not parts.netloc or not parts.hostname:
        return None
    return parts.scheme.lower(), parts.hostname, parts.path


def proxy_problem(url: str) -> str | None:
    """What keeps `url` from being RELAYBOT_HTTP_PROXY, or None; never quoting any of it (it
    may hold the proxy's password)."""
    parts = _url_parts(url)
    if parts is None or parts[0] not in _PROXY_SCHEMES:
        return (
            "must start with http://, https:// or socks5:// and name the proxy's host, "
            f"{PROXY_FORMS}"
        )
    if parts[0].startswith("socks"):
        try:
            import socksio  # noqa: F401
        except ImportError:
            return "a socks5 proxy needs the socksio package: pip install 'httpx[socks]'"
    return None


class _DocumentedNamesOnly(PydanticBaseSettingsSource):
    """An environment or .env source without the values it finds under a field's own name:
    RELAYBOT_DATABASE_URL is the setting, DATABASE_URL (or LOG_LEVEL, HTTP_PROXY, ADMINS, ...)
    is somebody else's. pydantic-settings reads those too when fields may be given by name
    (`populate_by_name`, which `Settings(database_url=...)` in code needs)."""

    def __init__(self, source: PydanticBaseSettingsSource) -> None:
        super().__init__(source.settings_cls)
        self._source = source
        self.__name__ = type(source).__name__  # the source's name in pydantic-settings' debug log

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._source.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        return {
            key: value
            for key, value in self._source().items()
            if key not in fields or key in _aliases(fields[key].validation_alias)
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._source!r})"


def _aliases(alias: object) -> tuple[str, ...]:
    if isinstance(alias, AliasChoices):
        return tuple(choice for choice in alias.choices if isinstance(choice, str))
    return (alias,) if isinstance(alias, str) else ()


class Settings(BaseSettings):
    """Every setting relaybot reads; see README and .env.example."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        # `RELAYBOT_CONTEXT_TOKENS=` in .env means "not set", not an invalid number.
        env_ignore_empty=True,
        # A refused value may be a secret (a token, a database URL's password): errors name
        # the variable and say what it takes, never what it was.
        hide_input_in_errors=True,
    )

    # Model endpoint
    openai_api_key: SecretStr | None = Field(None, validation_alias=_env("OPENAI_API_KEY"))
    openai_base_url: str = Field(
        "https://api.openai.com/v1", validation_alias=_env("OPENAI_BASE_URL")
    )
    # Numbers are bounded so a value that cannot work (a pool of -1 connections hangs, a
    # timeout of 0 fails every request as "cannot reach") stops the start, naming it.
    # Floats never take nan or inf: neither is a time or an amount of money.
    request_timeout: float = Field(
        60.0, gt=0, allow_inf_nan=False, validation_alias=_env("RELAYBOT_REQUEST_TIMEOUT")
    )
    stream_idle_timeout: float = Field(
        60.0, gt=0, allow_inf_nan=False, validation_alias=_env("RELAYBOT_STREAM_IDLE_TIMEOUT")
    )
    # The wait for a streamed answer's first words (its head and framing do not count): a
    # reasoning model sends nothing while it thinks (OpenAI's o-series and gpt-5: 60-300 s).
    # Later waits between chunks are stream_idle_timeout's.
    first_token_timeout: float = Field(
        FIRST_TOKEN_TIMEOUT,
        gt=0,
        allow_inf_nan=False,
        validation_alias=_env("RELAYBOT_FIRST_TOKEN_TIMEOUT"),
    )
    max_connections: int = Field(100, gt=0, validation_alias=_env("RELAYBOT_MAX_CONNECTIONS"))
    max_retries: int = Field(2, ge=0, validation_alias=_env("RELAYBOT_MAX_RETRIES"))
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
    # Each name covers its snapshots and variants ("gpt-4o" covers "gpt-4o-2024-08-06" and
    # "gpt-4o-mini"), under any provider prefix ("openai/gpt-4o"); OpenAI's variants that
    # take no pictures (o3-mini, o1-mini, ...) are known to the service (_NO_PICTURES).
    vision_models: str = Field(
        "gpt-4o,gpt-4o-mini,chatgpt-4o-latest,gpt-4-turbo,gpt-4.1,gpt-4.1-mini,gpt-4.1-nano,"
        "gpt-5,gpt-5-mini,gpt-5-nano,gpt-5.1,gpt-5.2,gpt-5.3,gpt-5.4,gpt-5.5,o1,o3,o4-mini",
        validation_alias=_env("RELAYBOT_VISION_MODELS"),
    )
    group_voice_transcript_only: bool = Field(
        False, validation_alias=_env("RELAYBOT_GROUP_VOICE_TRANSCRIPT_ONLY")
    )
    # A file at the default limit and the form around it fit OpenAI's limit (see above).
    max_audio_bytes: int = Field(
        DEFAULT_MAX_AUDIO_BYTES, gt=0, validation_alias=_env("RELAYBOT_MAX_AUDIO_BYTES")
    )
    max_input_chars: int = Field(100_000, gt=0, validation_alias=_env("RELAYBOT_MAX_INPUT_CHARS"))
    image_dir: str = Field("relaybot-images", validation_alias=_env("RELAYBOT_IMAGE_DIR"))

    # Usage, budgets, access, rate limits, privacy (see core/policy.py)
    prices: str | None = Field(None, validation_alias=_env("RELAYBOT_PRICES"))
    image_quality: str = Field("auto", validation_alias=_env("RELAYBOT_IMAGE_QUALITY"))
    allowed_users: str = Field("", validation_alias=_env("RELAYBOT_ALLOWED_USERS"))
    allowed_chats: str = Field("", validation_alias=_env("RELAYBOT_ALLOWED_CHATS"))
    admins: str = Field("", validation_alias=_env("RELAYBOT_ADMINS"))
    budget_user_daily: Dollars | None = Field(
        None, validation_alias=_env("RELAYBOT_BUDGET_USER_DAILY")
    )
    budget_user_monthly: Dollars | None = Field(
        None, validation_alias=_env("RELAYBOT_BUDGET_USER_MONTHLY")
    )
    budget_chat_daily: Dollars | None = Field(
        None, validation_alias=_env("RELAYBOT_BUDGET_CHAT_DAILY")
    )
    budget_chat_monthly: Dollars | None = Field(
        None, validation_alias=_env("RELAYBOT_BUDGET_CHAT_MONTHLY")
    )
    budget_global_daily: Dollars | None = Field(
        None, validation_alias=_env("RELAYBOT_BUDGET_GLOBAL_DAILY")
    )
    budget_global_monthly: Dollars | None = Field(
        None, validation_alias=_env("RELAYBOT_BUDGET_GLOBAL_MONTHLY")
    )
    rate_limit_per_minute: Annotated[int, Field(ge=0)] = Field(
        0, validation_alias=_env("RELAYBOT_RATE_LIMIT_PER_MINUTE")
    )
    # At most 100 years: a longer time reaches before year 1 and cannot be computed.
    retention_days: Annotated[int, Field(gt=0, le=MAX_RETENTION_DAYS)] | None = Field(
        None, validation_alias=_env("RELAYBOT_RETENTION_DAYS")
    )

    # Load: answers worked on at once (more wait their turn, stored), database connections
    max_in_flight: int = Field(256, gt=0, validation_alias=_env("RELAYBOT_MAX_IN_FLIGHT"))
    # Recent history of active chats kept in memory (exact: see core/history.py).
    history_cache_mb: float = Field(
        64.0, ge=0, allow_inf_nan=False, validation_alias=_env("RELAYBOT_HISTORY_CACHE_MB")
    )
    db_pool_size: int = Field(10, gt=0, validation_alias=_env("RELAYBOT_DB_POOL_SIZE"))
    # Extra connections under load are opened and, once returned, closed again: under a
    # steady load that is a new PostgreSQL backend (a fork) every few messages, which tripled
    # PostgreSQL's CPU per message. By default a burst waits for one of the pool's instead.
    db_max_overflow: int = Field(0, ge=0, validation_alias=_env("RELAYBOT_DB_MAX_OVERFLOW"))

    # Durability and shutdown
    # A lease is a time stored in the database: at most a day (it is renewed long before).
    lease_seconds: float = Field(
        60.0,
        gt=0,
        le=MAX_LEASE_SECONDS,
        allow_inf_nan=False,
        validation_alias=_env("RELAYBOT_LEASE_SECONDS"),
    )
    shutdown_grace: float = Field(
        25.0, ge=0, allow_inf_nan=False, validation_alias=_env("RELAYBOT_SHUTDOWN_GRACE")
    )

    # App HTTP server (webhooks, health)
    http_host: str = Field("0.0.0.0", validation_alias=_env("RELAYBOT_HTTP_HOST"))
    # 0 lets the system pick a free port.
    http_port: int = Field(8080, ge=0, le=65535, validation_alias=_env("RELAYBOT_HTTP_PORT"))
    log_level: LogLevel = Field("INFO", validation_alias=_env("RELAYBOT_LOG_LEVEL"))
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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # In code a field is given by its name (`Settings(database_url=...)`); from the
        # environment and .env only by the documented names (each field's validation_alias).
        return (
            init_settings,
            _DocumentedNamesOnly(env_settings),
            _DocumentedNamesOnly(dotenv_settings),
            file_secret_settings,
        )

    @field_validator(*SECRET_SETTINGS, mode="before")
    @classmethod
    def _secret(cls, value: object) -> object:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if not isinstance(value, str):
            return value
        secret = unwrapped(value)
        if not secret:
            raise PydanticCustomError(
                "blank_secret",
                "is blank (only spaces or quotes); set the value itself, or leave the variable "
                "out",
            )
        return secret

    @field_validator("http_proxy")
    @classmethod
    def _http_proxy(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = value.strip()
        problem = proxy_problem(url)
        if problem is not None:
            raise PydanticCustomError("proxy_url", problem)
        return url

    @field_validator("telegram_api_base_url", "telegram_file_base_url")
    @classmethod
    def _telegram_base_url(cls, value: str) -> str:
        # The bot token is appended to it (python-telegram-bot's base_url): `.../bot/` would
        # ask `.../bot/123:AA.../getMe` (a 404, blamed on the token), a URL without /bot
        # `host:8081123:AA...` (a port that is not a number).
        url = value.strip().rstrip("/")
        parts = _url_parts(url)
        if parts is None or parts[0] not in ("http", "https"):
            raise PydanticCustomError(
                "telegram_base_url",
                f"must start with http:// or https:// and a host, {TELEGRAM_BASE_URL_FORMS}",
            )
        if not parts[2].endswith("/bot"):
            raise PydanticCustomError(
                "telegram_base_url",
                f"must end in /bot (the bot token is appended to it), {TELEGRAM_BASE_URL_FORMS}",
            )
        return url

    @field_validator("telegram_webhook_url")
    @classmethod
    def _telegram_webhook_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        url = value.strip()
        parts = _url_parts(url)
        if parts is None or parts[0] not in ("http", "https"):
            raise PydanticCustomError(
                "webhook_url",
                "must be the public https:// URL Telegram posts updates to, e.g. "
                "https://bot.example.com/telegram/webhook",
            )
        # Telegram posts only to https://; a self-hosted Bot API server (--local) and a
        # server on this machine also to http://.
        api = _url_parts(str(info.data.get("telegram_api_base_url", "")))
        self_hosted = api is not None and api[1] != _OFFICIAL_BOT_API
        if parts[0] == "http" and parts[1] not in _LOOPBACK_HOSTS and not self_hosted:
            raise PydanticCustomError(
                "webhook_url",
                "must start with https:// (Telegram posts updates only to https URLs), e.g. "
                "https://bot.example.com/telegram/webhook",
            )
        path = parts[2] or "/"
        if path in _NOT_WEBHOOK_PATHS:
            raise PydanticCustomError(
                "webhook_url",
                f"its path {path} is one relaybot serves for something else; end the URL with "
                "/telegram/webhook, e.g. https://bot.example.com/telegram/webhook",
            )
        return url

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        level = value.strip().upper()
        return _LEVEL_NAMES.get(level, level)

    @field_validator("moderation", "log_format", mode="before")
    @classmethod
    def _choice(cls, value: object) -> object:
        # One of a few words: any case, as the log level (`RELAYBOT_MODERATION=Both`).
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("telegram_webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # Telegram refuses any other secret_token in setWebhook: the start would fail there.
        if value is not None and not _WEBHOOK_SECRET.fullmatch(value.get_secret_value()):
            raise PydanticCustomError(
                "webhook_secret",
                "Telegram takes 1-256 characters of A-Z a-z 0-9 _ - (no spaces), e.g. the "
                "output of `openssl rand -hex 32`",
            )
        return value

    @field_validator("openai_base_url")
    @classmethod
    def _openai_base_url(cls, value: str) -> str:
        url = value.strip()
        problem = base_url_problem(url)
        if problem is not None:
            raise PydanticCustomError("base_url", problem)
        return url

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        try:
            return normalize_database_url(value)
        except ValueError as exc:
            raise PydanticCustomError("database_url", str(exc)) from None

    def vision_model_names(self) -> frozenset[str]:
        """Models that accept image input."""
        return frozenset(m.strip() for m in self.vision_models.split(",") if m.strip())
