"""`relaybot doctor`: check every dependency once and say what to fix."""

from __future__ import annotations

import asyncio
import enum
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url

from core.chat_models import chat_models, not_chat_purpose
from core.config import Settings, sqlite_file
from core.errors import (
    AuthFailed,
    ConfigError,
    EndpointMissing,
    ModelUnavailable,
    RelaybotError,
    UpstreamDown,
)
from core.feature_models import missing_feature_models
from core.image_models import image_settings_problem
from core.logs import RedactingFilter, settings_secrets

if TYPE_CHECKING:
    from core.openai_client import OpenAIClient

OFFICIAL_API = "api.openai.com"
PLATFORM_TIMEOUT = 10.0
TOKENIZER_TIMEOUT = 30.0


class Status(enum.Enum):
    """How a check went; only FAIL makes the exit code non-zero."""

    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass(frozen=True, slots=True)
class Result:
    """One line of the report: what was checked, what was found, what to do."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        """`STATUS name: detail -> fix`."""
        fix = f" -> {self.fix}" if self.fix else ""
        return f"{self.status.value:<4}  {self.name}: {self.detail}{fix}"


def ok(name: str, detail: str) -> Result:
    """A passed check."""
    return Result(name, Status.OK, detail)


def fail(name: str, detail: str, fix: str) -> Result:
    """A failed check and how to fix it."""
    return Result(name, Status.FAIL, detail, fix)


# -- configuration -----------------------------------------------------------------------
def check_config(settings: Settings) -> list[Result]:
    """Settings that parse but cannot work together."""
    results: list[Result] = []
    if settings.openai_api_key is None and OFFICIAL_API in settings.openai_base_url:
        results.append(
            fail(
                "config",
                "OPENAI_API_KEY is not set and OPENAI_BASE_URL is the OpenAI API",
                "set OPENAI_API_KEY (environment or .env), or point OPENAI_BASE_URL at a "
                "server that needs no key",
            )
        )
    webhook_secret: Result | None = None
    if settings.telegram_webhook_url and settings.telegram_webhook_secret is None:
        # Not a failure: the adapter's default keeps forged updates out, on every replica.
        webhook_secret = ok(
            "webhook secret",
            "TELEGRAM_WEBHOOK_SECRET is not set: the webhook's secret is derived from "
            "TELEGRAM_BOT_TOKEN, the same on every replica with this token (set "
            "TELEGRAM_WEBHOOK_SECRET to choose one of your own)",
        )
    if (
        settings.slack_bot_token is not None
        and settings.slack_app_token is None
        and settings.slack_signing_secret is None
    ):
        results.append(
            fail(
                "config",
                "SLACK_BOT_TOKEN is set but neither SLACK_SIGNING_SECRET (HTTP events) nor "
                "SLACK_APP_TOKEN (Socket Mode)",
                "copy the Signing Secret from the Slack app's Basic Information page, or "
                "an xapp- token for Socket Mode",
            )
        )
    platforms = [
        name
        for name, token in (
            ("telegram", settings.telegram_bot_token),
            ("slack", settings.slack_bot_token),
        )
        if token is not None
    ]
    if not results:
        where = ", ".join(platforms) if platforms else "console only (no platform token set)"
        results.append(
            ok("config", f"model {settings.chat_model} at {settings.openai_base_url}; {where}")
        )
    if webhook_secret is not None:
        results.append(webhook_secret)
    return results


# -- database ----------------------------------------------------------------------------
async def check_database(settings: Settings) -> Result:
    """The database answers and its migrations are at the code's head."""
    from core.db import migrate
    from core.db.store import create_engine

    name = "database"
    try:
        url = make_url(settings.database_url)
    except Exception as exc:
        return fail(name, f"RELAYBOT_DATABASE_URL cannot be parsed ({exc})", _DB_URL_FIX)
    shown = url.render_as_string(hide_password=True)
    path = sqlite_file(settings.database_url)
    if path is not None and not await asyncio.to_thread(path.exists):
        # Connecting would create an empty file: report instead of changing anything.
        return fail(
            name,
            f"{shown}: the file {path} does not exist",
            "run `relaybot db upgrade` (or start relaybot once with "
            "RELAYBOT_AUTO_MIGRATE=true) in the right working directory",
        )
    try:
        engine = create_engine(settings.database_url)
    except Exception as exc:
        return fail(name, f"{shown}: {type(exc).__name__}: {exc}", _DB_URL_FIX)
    try:
        try:
            async with asyncio.timeout(PLATFORM_TIMEOUT):
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
                current = await migrate.current_revision(engine)
        except Exception as exc:
            detail = str(exc).splitlines()[0] if str(exc) else ""
            return fail(
                name,
                f"{shown} is unreachable: {type(exc).__name__}: {detail}"[:300],
                "check RELAYBOT_DATABASE_URL, that the server runs and accepts this user",
            )
        head = migrate.head_revision()
        if current is None:
            return fail(
                name,
                f"{shown} answers but was never migrated (code expects {head})",
                "run `relaybot db upgrade`",
            )
        if current != head and not migrate.is_known(current):
            return fail(
                name,
                f"{shown} is at migration {current}, code expects {head}: a newer relaybot "
                "migrated it (this version serves on it, but only until it is replaced)",
                "run the relaybot version that made this migration",
            )
        if current != head:
            return fail(
                name,
                f"{shown} is at migration {current}, code expects {head}",
                "run `relaybot db upgrade` (with the newest code) before starting",
            )
        return ok(name, f"{shown} reachable, migrations at head ({head})")
    finally:
        await engine.dispose()


_DB_URL_FIX = (
    "set RELAYBOT_DATABASE_URL to sqlite+aiosqlite:///PATH or "
    "postgresql+asyncpg://USER:PASSWORD@HOST/DB"
)


# -- model endpoint ----------------------------------------------------------------------
async def check_model_endpoint(settings: Settings, http: httpx.AsyncClient) -> list[Result]:
    """The endpoint lists its models with our key; the configured chat model is among them."""
    from core.openai_client import EndpointRedirects, ModelsUnreadable, OpenAIClient

    name = "model endpoint"
    url = settings.openai_base_url
    api_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    client = OpenAIClient(
        http,
        base_url=url,
        api_key=api_key,
        max_retries=0,
        stream_idle_timeout=settings.stream_idle_timeout,
        first_token_timeout=settings.first_token_timeout,
    )
    try:
        models = await client.list_models()
    except EndpointRedirects as exc:
        # Every request would meet it: each message would tell the person the bot is broken.
        return [fail(name, f"{url} redirects to {exc.location} (HTTP 3xx)", exc.fix)]
    except AuthFailed:
        return [
            fail(
                name,
                f"{url} rejected OPENAI_API_KEY (401/403)",
                "check the key (a revoked or mistyped key, or one for another provider)",
            )
        ]
    except UpstreamDown as exc:
        if isinstance(exc, ModelsUnreadable):  # it answered: warned of as an unlisted /models
            return await _unlisted_models(settings, client, exc)
        return [
            fail(
                name,
                f"cannot reach {url} ({exc})"[:300],
                "check OPENAI_BASE_URL (it usually ends in /v1), DNS, proxy "
                "(RELAYBOT_HTTP_PROXY) and firewall",
            )
        ]
    except RelaybotError as exc:
        # A bare 404 where <url>/v1 lists the models: every request would meet that 404.
        fixed = await client.v1_base_url() if isinstance(exc, EndpointMissing) else None
        if fixed is not None:
            return [
                fail(
                    name,
                    f"{url} has no /models (HTTP 404) but {fixed} lists the models: "
                    "OPENAI_BASE_URL lacks its /v1",
                    f"set OPENAI_BASE_URL={fixed}",
                )
            ]
        return await _unlisted_models(settings, client, exc)
    results = [ok(name, f"{url} lists {len(models)} models")]
    moderation = await _check_moderation(settings, client)
    if moderation is not None:
        results.append(moderation)
    purpose = not_chat_purpose(settings.chat_model)
    if purpose is not None:
        shown = ", ".join(chat_models(sorted(models))[:8]) or "a chat model"
        results.append(
            fail(
                "chat model",
                f"{settings.chat_model} is not a chat model (it is for {purpose})",
                f"set RELAYBOT_CHAT_MODEL to one of: {shown}",
            )
        )
    elif models and settings.chat_model not in models:
        shown = ", ".join(sorted(models)[:8]) + (", ..." if len(models) > 8 else "")
        results.append(
            Result(
                "chat model",
                Status.WARN,
                f"{settings.chat_model} is not among the endpoint's models",
                f"set RELAYBOT_CHAT_MODEL to one of: {shown}",
            )
        )
    results.extend(
        Result(m.check, Status.WARN, m.problem(), m.fix())
        for m in missing_feature_models(settings, models)
    )
    return results


async def _unlisted_models(
    settings: Settings, client: OpenAIClient, exc: RelaybotError
) -> list[Result]:
    """The endpoint answers but does not list its models: a warning, and moderation checked
    as the start does (moderation on needs /moderations, listed models or not)."""
    unlisted = Result(
        "model endpoint",
        Status.WARN,
        f"{settings.openai_base_url} answers but cannot list models ({type(exc).__name__})",
        "fine for servers without /models; otherwise check OPENAI_BASE_URL",
    )
    moderation = await _check_moderation(settings, client)
    return [unlisted] if moderation is None else [unlisted, moderation]


async def _check_moderation(settings: Settings, client: OpenAIClient) -> Result | None:
    """With moderation on, the endpoint moderates (Ollama and others have no /moderations:
    every message would fail). One free request; None when it works or is off."""
    from core.moderation import Moderator
    from core.openai_client import EndpointRedirects

    try:
        await Moderator(client, settings.moderation_model, settings.moderation).probe()
    except EndpointRedirects as exc:
        return fail("moderation", f"/moderations redirects to {exc.location}", exc.fix)
    except (EndpointMissing, ModelUnavailable) as exc:
        return fail(
            "moderation",
            f"RELAYBOT_MODERATION={settings.moderation.value} but the endpoint cannot "
            f"moderate with {settings.moderation_model} ({type(exc).__name__})",
            "set RELAYBOT_MODERATION=off for a server without moderation, or "
            "RELAYBOT_MODERATION_MODEL to a moderation model it serves",
        )
    except RelaybotError as exc:
        return Result(
            "moderation",
            Status.WARN,
            f"a test moderation failed ({type(exc).__name__}); messages may fail while it does",
            "check the endpoint, or set RELAYBOT_MODERATION=off",
        )
    return None


# -- platforms ---------------------------------------------------------------------------
async def check_telegram(settings: Settings, http: httpx.AsyncClient) -> Result:
    """getMe with the bot token."""
    name = "telegram"
    if settings.telegram_bot_token is None:
        return Result(name, Status.SKIP, "TELEGRAM_BOT_TOKEN not set")
    token = settings.telegram_bot_token.get_secret_value()
    try:
        response = await http.get(
            f"{settings.telegram_api_base_url}{token}/getMe", timeout=PLATFORM_TIMEOUT
        )
        payload = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        return fail(
            name,
            f"cannot reach the Bot API at {settings.telegram_api_base_url} ({type(exc).__name__})",
            "check TELEGRAM_API_BASE_URL, DNS, proxy and firewall",
        )
    if response.status_code == 401 or payload.get("error_code") == 401:
        return fail(
            name,
            "the Bot API rejected TELEGRAM_BOT_TOKEN (401 Unauthorized)",
            "copy the token from @BotFather again (/mybots -> API Token); it looks like "
            "123456789:AA...",
        )
    if not payload.get("ok"):
        return fail(
            name,
            f"getMe failed: {payload.get('description', response.status_code)}",
            "check TELEGRAM_BOT_TOKEN and TELEGRAM_API_BASE_URL",
        )
    bot = payload.get("result", {})
    mode = "webhook" if settings.telegram_webhook_url else "long polling"
    detail = f"bot @{bot.get('username', '?')} (id {bot.get('id', '?')}), {mode}"
    if bot.get("can_read_all_group_messages"):
        return ok(name, detail)
    detail += "; privacy mode on: groups send it only commands, mentions and replies"
    if settings.group_voice_transcript_only:
        return Result(
            name,
            Status.WARN,
            detail,
            "RELAYBOT_GROUP_VOICE_TRANSCRIPT_ONLY needs every voice note of a group: in "
            "@BotFather, /setprivacy, then Disable",
        )
    return ok(name, detail)


async def _slack_call(
    http: httpx.AsyncClient, base: str, method: str, token: str
) -> tuple[httpx.Response, dict[str, object]]:
    """POST a Slack Web API method with `token`: the response and its JSON object (httpx's
    errors, and ValueError for a body that is no JSON, pass to the caller)."""
    response = await http.post(
        f"{base}{method}", headers={"Authorization": f"Bearer {token}"}, timeout=PLATFORM_TIMEOUT
    )
    payload = response.json()
    return response, payload if isinstance(payload, dict) else {}


async def check_slack(settings: Settings, http: httpx.AsyncClient) -> Result:
    """auth.test with the bot token; in Socket Mode apps.connections.open with the app token."""
    name = "slack"
    if settings.slack_bot_token is None:
        return Result(name, Status.SKIP, "SLACK_BOT_TOKEN not set")
    base = settings.slack_api_url.rstrip("/") + "/"
    try:
        response, payload = await _slack_call(
            http, base, "auth.test", settings.slack_bot_token.get_secret_value()
        )
    except (httpx.HTTPError, ValueError) as exc:
        return fail(
            name,
            f"cannot reach the Slack API at {base} ({type(exc).__name__})",
            "check SLACK_API_URL, DNS, proxy and firewall",
        )
    if not payload.get("ok"):
        error = payload.get("error", f"HTTP {response.status_code}")
        fix = "check SLACK_BOT_TOKEN"
        if error in ("invalid_auth", "not_authed", "token_revoked", "account_inactive"):
            fix = (
                "copy the Bot User OAuth Token (xoxb-...) from the app's OAuth & Permissions "
                "page; reinstall the app if it was revoked"
            )
        return fail(name, f"auth.test failed: {error}", fix)
    mode = "Socket Mode" if settings.slack_app_token else "HTTP events at /slack/events"
    detail = f"bot {payload.get('user', '?')} in team {payload.get('team', '?')}, {mode}"
    if settings.slack_app_token is None:
        return ok(name, detail)
    # Socket Mode: the app token's own call, as `relaybot run` makes it before connecting (a
    # token Slack refuses stops the start there, in the same words).
    from bots.slack.adapter import APP_TOKEN_FIX, APP_TOKEN_REJECTED

    try:
        response, opened = await _slack_call(
            http, base, "apps.connections.open", settings.slack_app_token.get_secret_value()
        )
    except (httpx.HTTPError, ValueError) as exc:
        return Result(
            name,
            Status.WARN,
            f"{detail}; SLACK_APP_TOKEN not checked: apps.connections.open failed "
            f"({type(exc).__name__})",
            "run the doctor again",
        )
    if opened.get("ok"):
        return ok(name, detail)
    error = opened.get("error", f"HTTP {response.status_code}")
    if error in APP_TOKEN_REJECTED:
        return fail(
            name,
            f"Slack rejected SLACK_APP_TOKEN (apps.connections.open: {error})",
            APP_TOKEN_FIX,
        )
    return Result(
        name,
        Status.WARN,
        f"{detail}; SLACK_APP_TOKEN not checked: apps.connections.open failed: {error}",
        "run the doctor again",
    )


# -- tokenizer ---------------------------------------------------------------------------
def _load_encoding(name: str) -> None:
    import tiktoken

    tiktoken.get_encoding(name)


async def check_tokenizer(settings: Settings) -> Result:
    """tiktoken can load the encodings the chat model needs."""
    import tiktoken

    name = "tokenizer"
    try:
        model_encoding = tiktoken.encoding_name_for_model(settings.chat_model)
    except KeyError:
        model_encoding = "o200k_base"
    encodings = sorted({"o200k_base", model_encoding})
    cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    where = f"TIKTOKEN_CACHE_DIR={cache}" if cache else "tiktoken's default cache"
    for encoding in encodings:
        try:
            async with asyncio.timeout(TOKENIZER_TIMEOUT):
                await asyncio.to_thread(_load_encoding, encoding)
        except Exception as exc:
            return Result(
                name,
                Status.FAIL,
                f"cannot load {encoding} from {where} ({type(exc).__name__}); token counts "
                "would be estimated and less history would fit",
                "copy the tiktoken BPE files into a directory and set TIKTOKEN_CACHE_DIR to "
                "it (or allow the download once)",
            )
    return ok(name, f"{', '.join(encodings)} loaded from {where}")


def check_system_prompt(settings: Settings) -> Result | None:
    """The configured system prompt leaves the chat model room for a conversation."""
    from core.tokens import context_window, counter_for
    from core.trimming import history_budget

    tokens = counter_for(settings.chat_model).count(settings.system_prompt)
    if history_budget(settings, settings.chat_model, tokens) > 0:
        return None
    window = context_window(settings.chat_model, settings.context_tokens)
    return fail(
        "system prompt",
        f"RELAYBOT_SYSTEM_PROMPT is about {tokens:,} tokens: with RELAYBOT_REPLY_TOKENS="
        f"{settings.reply_tokens} nothing of {settings.chat_model}'s {window:,} is left for "
        "the conversation",
        "shorten RELAYBOT_SYSTEM_PROMPT or lower RELAYBOT_REPLY_TOKENS (or set "
        "RELAYBOT_CONTEXT_TOKENS to the model's real window)",
    )


def check_image_settings(settings: Settings) -> Result | None:
    """RELAYBOT_IMAGE_SIZE and _QUALITY are ones the image model takes (else every /image
    and /edit fails)."""
    problem = image_settings_problem(settings)
    if problem is None:
        return None
    return fail("images", problem, "change it, or RELAYBOT_IMAGE_MODEL to a model that takes it")


def check_prices(settings: Settings) -> Result | None:
    """RELAYBOT_PRICES parses (inline JSON or a file of it): else nothing starts."""
    from core.pricing import PriceTable

    if not settings.prices:
        return None
    try:
        PriceTable.from_config(settings.prices)
    except ConfigError as exc:
        return fail(
            "prices",
            str(exc),
            "fix RELAYBOT_PRICES: a JSON object of model -> prices, inline or a file's path "
            "(README, Usage), or unset it for the shipped OpenAI prices",
        )
    return None


def check_image_dir(settings: Settings) -> Result | None:
    """Where the console saves pictures can be written (checked when `relaybot run` is the
    console: no platform token). Nothing is created."""
    from bots.console import IMAGE_DIR_FIX, image_dir_problem

    if settings.telegram_bot_token is not None or settings.slack_bot_token is not None:
        return None
    problem = image_dir_problem(Path(settings.image_dir), create=False)
    if problem is None:
        return None
    return fail(
        "image folder",
        f"RELAYBOT_IMAGE_DIR={settings.image_dir}: {problem}; the console could not save "
        "/image and /edit pictures",
        IMAGE_DIR_FIX,
    )


# -- the report --------------------------------------------------------------------------
Found = Result | list[Result] | None
_USERINFO = re.compile(r"(?<=//)[^/@\s]+@")


def broken(name: str, exc: Exception, fix: str) -> Result:
    """A check that could not finish: a FAIL line naming what it met, not a traceback (its
    text without a URL's user and password; `report` redacts the configured secrets)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    detail = _USERINFO.sub("***@", f"the check could not finish: {type(exc).__name__}: {text}")
    return fail(name, detail[:300], fix)


async def _run(name: str, reads: str, check: Callable[[], Awaitable[Found]]) -> list[Result]:
    """One check's lines; an exception it did not expect is its FAIL line, which points at
    the settings it `reads`."""
    try:
        found = await check()
    except Exception as exc:
        return [broken(name, exc, f"check {reads}")]
    if found is None:
        return []
    return [found] if isinstance(found, Result) else found


async def _through(
    proxy: str | None,
    check: Callable[[Settings, httpx.AsyncClient], Awaitable[Result]],
    settings: Settings,
) -> Result:
    """`check` with a client of its own that goes through `proxy`, or directly over
    aiohttp's pool (as python-telegram-bot's requests do: see TelegramAdapter.setup)."""
    from core.openai_client import pooled_transport, tls_context

    transport = (
        httpx.AsyncHTTPTransport(proxy=proxy, verify=tls_context())
        if proxy
        else pooled_transport(1)
    )
    async with httpx.AsyncClient(transport=transport) as http:
        return await check(settings, http)


async def run_checks(settings: Settings) -> list[Result]:
    """Every check, in the order a person would fix them."""
    from slack_sdk.proxy_env_variable_loader import load_http_proxy_from_env

    from core.openai_client import build_http_client

    def blocking(check: Callable[[Settings], Found]) -> Callable[[], Awaitable[Found]]:
        return lambda: asyncio.to_thread(check, settings)

    results = await _run("config", "the settings", blocking(check_config))
    results += await _run("prices", "RELAYBOT_PRICES", blocking(check_prices))
    results += await _run(
        "images", "RELAYBOT_IMAGE_SIZE and RELAYBOT_IMAGE_QUALITY", blocking(check_image_settings)
    )
    results += await _run("image folder", "RELAYBOT_IMAGE_DIR", blocking(check_image_dir))
    results += await _run("database", "RELAYBOT_DATABASE_URL", lambda: check_database(settings))
    try:
        http = build_http_client(settings)
    except Exception as exc:  # RELAYBOT_HTTP_PROXY, which httpx reads only here
        results.append(
            broken(
                "http client", exc, "check RELAYBOT_HTTP_PROXY: http://HOST:PORT or https://..."
            )
        )
        results.append(Result("model endpoint", Status.SKIP, "not checked without an HTTP client"))
    else:
        try:
            results += await _run(
                "model endpoint",
                "OPENAI_BASE_URL and OPENAI_API_KEY",
                lambda: check_model_endpoint(settings, http),
            )
        finally:
            await http.aclose()
    # The platforms as their adapters reach them: not through RELAYBOT_HTTP_PROXY (the
    # model's alone). python-telegram-bot's requests take no proxy; slack_sdk, the Slack
    # adapter's client, takes one from HTTPS_PROXY or HTTP_PROXY in the environment.
    results += await _run(
        "telegram",
        "TELEGRAM_API_BASE_URL and TELEGRAM_BOT_TOKEN",
        lambda: _through(None, check_telegram, settings),
    )
    results += await _run(
        "slack",
        "SLACK_API_URL and SLACK_BOT_TOKEN",
        lambda: _through(load_http_proxy_from_env(), check_slack, settings),
    )
    results += await _run("tokenizer", "TIKTOKEN_CACHE_DIR", lambda: check_tokenizer(settings))
    results += await _run(
        "system prompt",
        "RELAYBOT_SYSTEM_PROMPT and RELAYBOT_REPLY_TOKENS",
        blocking(check_system_prompt),
    )
    return results


def report(results: list[Result], settings: Settings | None, out: TextIO) -> int:
    """Print one line per check, secrets redacted; 0 when nothing failed, else 1."""
    scrub = RedactingFilter(settings_secrets(settings) if settings else ())
    for result in results:
        print(scrub.redact(result.line()), file=out)
    counts = {status: sum(1 for r in results if r.status is status) for status in Status}
    summary = [f"{counts[Status.OK]} OK"]
    summary += [f"{counts[s]} {s.value}" for s in (Status.WARN, Status.SKIP) if counts[s]]
    failed = counts[Status.FAIL]
    verdict = f"{failed} to fix" if failed else "nothing to fix"
    print(f"relaybot doctor: {verdict} ({', '.join(summary)})", file=out)
    return 1 if failed else 0


def run(settings_factory: Callable[[], Settings], out: TextIO) -> int:
    """Load settings (a failure is the first FAIL), run the checks, print the report."""
    try:
        settings = settings_factory()
    except Exception as exc:
        return report([fail("config", str(exc), "fix the variable named above")], None, out)
    return report(asyncio.run(run_checks(settings)), settings, out)
