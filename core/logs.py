"""Logging: JSON lines for machines, a readable line for people, secrets redacted from both."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from core.config import Settings

REDACTED = "[REDACTED]"

# Shapes of credentials that may reach a log line even when they are not configured here
# (a key pasted into a URL, a token in an upstream error body).
SECRET_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-]{8,}"),  # OpenAI keys: sk-..., sk-proj-...
    re.compile(r"(?<![A-Za-z0-9])xox[abeoprs]-[A-Za-z0-9\-]+"),  # Slack bot / user tokens
    re.compile(r"(?<![A-Za-z0-9])xapp-[A-Za-z0-9\-]+"),  # Slack app-level tokens
    re.compile(r"(?i)(?<=bearer )[A-Za-z0-9._~+/=\-]+"),  # Authorization: Bearer ...
    # Telegram bot tokens, also inside Bot API URLs (".../bot<token>/getMe").
    re.compile(r"(?<![0-9])\d{5,16}:[A-Za-z0-9_\-]{35}(?![A-Za-z0-9_\-])"),
)

# What a database error says of the row it was about: PostgreSQL's DETAIL ("Failing row
# contains (..., the message text, ...)", "Key (...)=(...) already exists") and the values
# SQLAlchemy shows with a failed statement (engines are made with hide_parameters; these
# catch what does not go through one). The error's type, message and SQLSTATE stay.
ROW_DUMPS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\[parameters: .*"), f"[parameters: {REDACTED}]"),
    (re.compile(r"(?<![A-Za-z])DETAIL:(?!  \[REDACTED\]).*"), f"DETAIL:  {REDACTED}"),
)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
# Shorter values are too likely to match ordinary text to be worth redacting.
_MIN_SECRET_LENGTH = 6


class RedactingFilter(logging.Filter):
    """Replaces configured secrets and secret-shaped strings in a record, in place."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        super().__init__()
        self._secrets = sorted(
            {s for s in secrets if s and len(s) >= _MIN_SECRET_LENGTH}, key=len, reverse=True
        )

    def redact(self, text: str, details: Iterable[tuple[str, str]] = ()) -> str:
        """`text` without any secret, nor the rows database errors dump (`details`: each
        error's DETAIL text, with what replaces it)."""
        # An error's own DETAIL first, whole: it may run over several lines (a message's).
        for detail, replacement in details:
            text = text.replace(f"DETAIL:  {detail}", f"DETAIL:  {replacement}")
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        for pattern in SECRET_PATTERNS:
            text = pattern.sub(REDACTED, text)
        for pattern, replacement in ROW_DUMPS:
            text = pattern.sub(replacement, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        details = _error_details(record)
        message = record.getMessage()
        clean = self.redact(message, details)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text, details)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, self.redact(value, details))
        return True


def _error_details(record: logging.LogRecord) -> list[tuple[str, str]]:
    """The DETAIL of each database error a record carries (its exception, its chain, its
    arguments), with what replaces it in the log: the SQLSTATE, not the row."""
    found: list[BaseException] = []
    if record.exc_info and record.exc_info[1] is not None:
        found.append(record.exc_info[1])
    args = record.args if isinstance(record.args, tuple) else ()
    found.extend(arg for arg in args if isinstance(arg, BaseException))
    details: list[tuple[str, str]] = []
    seen: set[int] = set()
    while found:
        exc = found.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        detail = getattr(exc, "detail", None)
        if isinstance(detail, str) and detail:
            sqlstate = getattr(exc, "sqlstate", None)
            said = f"{REDACTED} (SQLSTATE {sqlstate})" if isinstance(sqlstate, str) else REDACTED
            details.append((detail, said))
        linked = (exc.__cause__, exc.__context__, getattr(exc, "orig", None))
        found.extend(e for e in linked if isinstance(e, BaseException))
    # Longest first: one detail may contain another.
    return sorted(details, key=lambda d: len(d[0]), reverse=True)


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller passed with `extra=`."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extras(record).items():
            entry.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str, ensure_ascii=False)


class HumanFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...` for a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = " ".join(f"{k}={v}" for k, v in extras(record).items())
        return f"{line} {fields}" if fields else line


def settings_secrets(settings: Settings) -> list[str]:
    """Every secret value in `settings`: keys, tokens, signing secrets, the database and
    proxy passwords."""
    from urllib.parse import unquote, urlsplit

    from pydantic import SecretStr
    from sqlalchemy.engine import make_url

    found = [
        value.get_secret_value()
        for value in (getattr(settings, name) for name in type(settings).model_fields)
        if isinstance(value, SecretStr)
    ]
    try:
        password = make_url(settings.database_url).password
    except Exception:  # an unparsable URL is reported elsewhere
        password = None
    if password:
        found.append(str(password))
    try:
        proxy_password = urlsplit(settings.http_proxy).password if settings.http_proxy else None
    except ValueError:  # refused by the settings; nothing to hide
        proxy_password = None
    if proxy_password:
        # As written in the URL (percent-encoded) and as sent.
        found.extend({proxy_password, unquote(proxy_password)})
    return found


# Their debug lines carry request and response bodies, headers or statement parameters
# (keys, message text, names): held at WARNING whatever the level.
NOISY_LOGGERS = (
    "httpx",
    "httpcore",
    "telegram.ext",
    "aiohttp.access",
    "hpack",
    "slack_sdk",
    "slack_bolt",
    "aiosqlite",
)
# Held at INFO: the Slack adapter's Bolt logger, which Bolt's Socket Mode client also logs
# through (at DEBUG, every event it receives, whole).
QUIET_LOGGERS = {"relaybot.slack.bolt": logging.INFO}


class HeldLoggers(logging.Filter):
    """Holds the loggers of NOISY_LOGGERS and QUIET_LOGGERS, and their children, at their
    floor on the handler itself. Bolt gives each of its components a logger of its own with
    the level of the logger the app was given (INFO), so their records did not stop at the
    level set on `slack_bolt`: `slack_bolt.RequestVerification` logged every request refused
    for its signature at INFO with the request's whole body (a message's words, who sent
    it). The Slack adapter says, without the body, that requests are refused."""

    def __init__(self, floors: dict[str, int]) -> None:
        super().__init__()
        # Longest name first: a child's own floor before its parent's.
        self._floors = sorted(floors.items(), key=lambda item: len(item[0]), reverse=True)

    def floor(self, name: str) -> int | None:
        """The floor of logger `name`, or None when it is not held."""
        for held, floor in self._floors:
            if name == held or name.startswith((f"{held}.", f"{held}:")):
                return floor
        return None

    def filter(self, record: logging.LogRecord) -> bool:
        floor = self.floor(record.name)
        return floor is None or record.levelno >= floor


def configure_logging(
    level: str,
    *,
    secrets: Iterable[str | None] = (),
    fmt: str = "auto",
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every log record to `stream` (stderr), redacted; JSON unless it is a terminal.

    `fmt` is "json", "text" or "auto". Replaces handlers configured earlier on the root
    logger, so calling it twice does not double the lines.
    """
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not _is_terminal(stream))
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if use_json else HumanFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Never below the level asked for (their own level would let more through).
    held = {name: logging.WARNING for name in NOISY_LOGGERS} | QUIET_LOGGERS
    floors = {name: max(floor, root.level) for name, floor in held.items()}
    for name, floor in floors.items():
        logging.getLogger(name).setLevel(floor)
    handler.addFilter(HeldLoggers(floors))  # for the loggers that set their own level
    handler.addFilter(RedactingFilter(secrets))
    return handler


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
