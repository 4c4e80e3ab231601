"""The `relaybot` command: run the bot, chat in the console, manage the database."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from core.access import Access
from core.config import Settings, sqlite_file
from core.db import migrate
from core.db.database import check_reachable
from core.db.store import create_engine
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
from core.pricing import PriceTable
from core.privacy import maintenance_loop, run_maintenance
from core.types import PLATFORMS

if TYPE_CHECKING:
    # The model client, the conversation service and the HTTP stack under them are
    # imported by the commands that run them: `relaybot db ...`, `usage` and `export` (a
    # migration job, a script) start ~0.2 s sooner without them.
    from core.app import Core

OFFICIAL_API = "api.openai.com"
TELEGRAM_TOKEN_REJECTED = "Telegram rejected TELEGRAM_BOT_TOKEN; check it with @BotFather"
EMPTY_DATABASE = "empty (no migrations)"
NO_PLATFORM = (
    "relaybot: no platform is configured (TELEGRAM_BOT_TOKEN and SLACK_BOT_TOKEN are not "
    "set): running the console, reading standard input until it ends"
)


class StartupError(Exception):
    """A problem the operator must fix; printed as one line, without a traceback."""


def load_settings() -> Settings:
    """Settings from the environment and .env, or a one-line StartupError."""
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise StartupError(f"invalid configuration: {problems}") from None
    try:
        # The allow-lists and admins: an entry for a platform relaybot does not run on (a
        # typo) would leave the platform it meant open to everyone.
        Access(settings, PLATFORMS)
    except ConfigError as exc:
        raise StartupError(f"invalid configuration: {exc}") from None
    return settings


def check_model_settings(settings: Settings) -> None:
    """Refuse to start without a key where the endpoint needs one, or with a price table
    that cannot be read (before the database is touched)."""
    if settings.openai_api_key is None and OFFICIAL_API in settings.openai_base_url:
        raise StartupError(
            "OPENAI_API_KEY is not set. Put it in the environment or in a .env file "
            "(or set OPENAI_BASE_URL to an OpenAI-compatible server that needs no key)."
        )
    PriceTable.from_config(settings.prices)  # a ConfigError naming RELAYBOT_PRICES


def missing_database_file(settings: Settings) -> Path | None:
    """The SQLite file RELAYBOT_DATABASE_URL names when it does not exist (connecting would
    create it, empty), else None."""
    path = sqlite_file(settings.database_url)
    return path if path is not None and not path.exists() else None


def require_database_file(settings: Settings) -> None:
    """For commands that only read: a SQLite file that is not there is a mistyped path or
    the wrong working directory, not a database to create."""
    path = missing_database_file(settings)
    if path is not None:
        raise StartupError(
            f"the database file {path.absolute()} does not exist; check RELAYBOT_DATABASE_URL "
            "and the working directory (`relaybot db upgrade` creates it)"
        )


async def require_schema(core: Core) -> None:
    """A start that does not migrate needs a migrated database: every query would fail on a
    missing table. At another revision it may still work (migrations add): a warning."""
    await migrate.require_migrated(core.engine)
    current, head = await migrate.current_revision(core.engine), migrate.head_revision()
    if current is not None and current != head and not migrate.is_known(current):
        logging.getLogger("relaybot").warning(
            "%s; serving on it", migrate.newer_than_code(current)
        )
    elif current != head:
        logging.getLogger("relaybot").warning(
            "the database is at migration %s, this code expects %s; run `relaybot db upgrade`",
            current,
            head,
        )


@asynccontextmanager
async def started_core(settings: Settings, args: argparse.Namespace) -> AsyncIterator[Core]:
    """The core for `run` and `console`: migrated as told, its schema checked when not."""
    # --no-migrate says no; without it RELAYBOT_AUTO_MIGRATE decides (open_core's None).
    from core.app import open_core

    migrate_db = False if args.no_migrate else None
    will_migrate = settings.auto_migrate if migrate_db is None else migrate_db
    if not will_migrate and missing_database_file(settings) is not None:
        raise StartupError(migrate.NOT_MIGRATED)  # and no empty file left behind
    async with open_core(settings, migrate_db=migrate_db) as core:
        if not will_migrate:
            await require_schema(core)
        yield core


async def probe_endpoint(core: Core) -> None:
    """List models once so a wrong URL or key is reported at start, not on the first message;
    with moderation on, moderate once too (a server without it would fail every message)."""
    from core.openai_client import EndpointRedirects, ModelsUnreadable

    url = core.settings.openai_base_url
    unlisted: RelaybotError | None = None
    models: list[str] = []
    try:
        models = await core.client.list_models()
    except EndpointRedirects as err:
        raise StartupError(f"the model endpoint at {url} {err.advice}") from None
    except AuthFailed:
        raise StartupError(
            f"the model endpoint {url} rejected OPENAI_API_KEY; check the key."
        ) from None
    except ModelsUnreadable as err:
        unlisted = err  # it answered (Together lists models its own way); chatting may work
    except UpstreamDown:
        raise StartupError(
            f"cannot reach the model endpoint at {url}; check OPENAI_BASE_URL and the network."
        ) from None
    except EndpointMissing as err:
        fixed = await core.client.v1_base_url()
        if fixed is not None:  # every request would meet the same 404
            raise StartupError(
                f"the model endpoint at {url} has no /models (HTTP 404) but {fixed} lists the "
                f"models: set OPENAI_BASE_URL={fixed}"
            ) from None
        unlisted = err  # some compatible servers have no /models; chatting may still work
    except RelaybotError as err:
        unlisted = err  # some compatible servers have no /models; chatting may still work
    await _probe_moderation(core, missing_models=isinstance(unlisted, EndpointMissing))
    settings = core.settings
    images = image_settings_problem(settings)
    log = logging.getLogger("relaybot")
    if images is not None:  # chatting works; every /image and /edit would fail
        log.warning("/image and /edit will fail: %s", images)
    for missing in missing_feature_models(settings, models):  # Ollama: no audio, no images
        log.warning("%s (%s)", missing.problem(), missing.fix())
    if unlisted is not None:
        log.warning("the endpoint at %s cannot list models: %s", url, unlisted)


async def _probe_moderation(core: Core, *, missing_models: bool) -> None:
    """Moderate once, when moderation is on: a server without it (Ollama's) would fail
    every message."""
    from core.openai_client import EndpointRedirects

    url = core.settings.openai_base_url
    try:  # one free request; a passing failure is the first message's to meet
        await core.service.moderator.probe()
    except EndpointRedirects as err:
        raise StartupError(f"the model endpoint at {url} {err.advice}") from None
    except (EndpointMissing, ModelUnavailable) as err:
        if missing_models and isinstance(err, EndpointMissing):  # nothing there answers
            raise StartupError(
                f"the model endpoint at {url} has neither /models nor /moderations; is "
                "OPENAI_BASE_URL right? It usually ends in /v1."
            ) from None
        raise StartupError(
            f"the model endpoint at {url} cannot moderate with "
            f"{core.settings.moderation_model}; set RELAYBOT_MODERATION=off for a server "
            "without moderation (or RELAYBOT_MODERATION_MODEL to one it serves)."
        ) from None
    except RelaybotError:
        pass


def setup_logging(level: str, settings: Settings | None = None) -> None:
    """Log to stderr: JSON lines unless it is a terminal, every configured secret redacted."""
    from core.logs import configure_logging, settings_secrets

    configure_logging(
        level,
        secrets=settings_secrets(settings) if settings else (),
        fmt=settings.log_format if settings else "auto",
    )


async def cmd_console(
    settings: Settings, args: argparse.Namespace, *, instead_of_platforms: bool = False
) -> None:
    """Chat in the terminal; `instead_of_platforms`: `run` with no platform configured."""
    from bots.console import run_console

    check_model_settings(settings)
    async with started_core(settings, args) as core:
        await probe_endpoint(core)
        await run_maintenance(core.engine, settings)
        if instead_of_platforms and not (sys.stdin and sys.stdin.isatty()):
            # A container or service without its token would read nothing and exit 0.
            print(NO_PLATFORM, file=sys.stderr, flush=True)
        await run_console(core, chat=args.chat, user=os.environ.get("USER", "you") or "you")


async def cmd_run(settings: Settings, args: argparse.Namespace) -> None:
    """Run every configured platform; the console when none is."""
    if settings.telegram_bot_token is None and settings.slack_bot_token is None:
        await cmd_console(settings, args, instead_of_platforms=True)
        return
    from bots.runner import run_platforms

    check_model_settings(settings)
    async with started_core(settings, args) as core:
        await probe_endpoint(core)
        stop = asyncio.Event()
        # A second SIGTERM or Ctrl-C: stop waiting for the answers in progress.
        hurry = asyncio.Event()

        def on_signal() -> None:
            if not stop.is_set():
                stop.set()
            elif not hurry.is_set():
                logging.getLogger("relaybot").warning(
                    "second signal: not waiting for the answers in progress; they are "
                    "released for another replica or the next start, and relaybot exits now"
                )
                hurry.set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        # Retention and counter clean-up: now, then hourly, beside the platforms.
        maintenance = asyncio.create_task(maintenance_loop(core.engine, settings, stop))
        try:
            await run_platforms(core, stop, hurry)
        finally:
            stop.set()
            # A maintenance run in progress is waited for, unless told to hurry.
            hurried = asyncio.create_task(hurry.wait())
            await asyncio.wait((maintenance, hurried), return_when=asyncio.FIRST_COMPLETED)
            hurried.cancel()
            maintenance.cancel()
            await asyncio.gather(maintenance, hurried, return_exceptions=True)


async def cmd_db(settings: Settings, args: argparse.Namespace) -> None:
    """Database maintenance."""
    if args.action == "current":
        missing = missing_database_file(settings)
        if missing is not None:  # a state to report, not a file to create
            print(f"empty (the database file {missing.absolute()} does not exist)")
            return
    if args.action != "upgrade":
        require_database_file(settings)
    engine = create_engine(settings.database_url)
    try:
        await check_reachable(engine)
        if args.action in ("upgrade", "downgrade"):
            if args.action == "upgrade":
                await migrate.upgrade(engine, args.revision or "head")
            else:
                await migrate.downgrade(engine, args.revision or "-1")
            revision = await migrate.current_revision(engine)
            print(f"database at {revision}" if revision else f"database {EMPTY_DATABASE}")
        elif args.action == "current":
            print(await migrate.current_revision(engine) or EMPTY_DATABASE)
        elif args.action == "check":
            await migrate.check(engine)
            print("models and migrations agree")
    finally:
        await engine.dispose()


def parse_since(text: str) -> datetime:
    """--since: an ISO date or date-time (UTC unless it says otherwise), or "7d" for days ago."""
    value = text.strip()
    try:
        if value[:-1].isdigit() and value.endswith("d"):
            return datetime.now(UTC) - timedelta(days=int(value[:-1]))
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise StartupError(
                f"--since {text!r}: use a date like 2026-11-01, a date-time, or 7d"
            ) from None
        # In UTC, as stored: SQLite compares the clock times, whatever zone they were given in.
        return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    except OverflowError:  # more days back than the calendar has (before the year 1)
        raise StartupError(
            f"--since {text!r}: that is before the year 1; use fewer days or a date"
        ) from None


async def _migrated_engine(settings: Settings) -> AsyncEngine:
    require_database_file(settings)
    engine = create_engine(settings.database_url)
    try:
        await check_reachable(engine)
        migrated = await migrate.current_revision(engine) is not None
    except BaseException:
        await engine.dispose()
        raise
    if not migrated:
        await engine.dispose()
        raise StartupError(migrate.NOT_MIGRATED)
    return engine


async def cmd_usage(settings: Settings, args: argparse.Namespace) -> None:
    """Print spend per user and chat, today, this month and all time."""
    from core.accounting import Accounting, render_table

    engine = await _migrated_engine(settings)
    try:
        report = await Accounting(engine).report()
    finally:
        await engine.dispose()
    print(json.dumps(report, indent=2) if args.json else render_table(report))


async def cmd_export(settings: Settings, args: argparse.Namespace) -> None:
    """Write conversations as fine-tuning JSON Lines."""
    from core.export import export_openai_jsonl

    since = parse_since(args.since) if args.since else None
    engine = await _migrated_engine(settings)
    to_file = bool(args.output) and args.output != "-"
    try:
        try:
            out = (
                await asyncio.to_thread(open, args.output, "w", encoding="utf-8")
                if to_file
                else sys.stdout
            )
        except OSError as exc:
            raise StartupError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        try:
            count = await export_openai_jsonl(
                engine,
                out,
                default_system_prompt=settings.system_prompt,
                chats=args.chats,
                since=since,
            )
        finally:
            if to_file:
                out.close()
    finally:
        await engine.dispose()
    print(f"exported {count} conversation(s)", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="relaybot", description=__doc__)
    no_migrate_help = "do not apply migrations on start (the database must be migrated)"
    parser.add_argument("--no-migrate", action="store_true", help=no_migrate_help)
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the configured platforms (console when none)")
    run.add_argument("--chat", default="default", help="console conversation to continue")
    console = sub.add_parser("console", help="chat in the terminal")
    console.add_argument("--chat", default="default", help="which stored conversation to use")
    for starting in (run, console):  # `relaybot run --no-migrate` as `relaybot --no-migrate run`
        starting.add_argument(
            "--no-migrate", action="store_true", default=argparse.SUPPRESS, help=no_migrate_help
        )
    db = sub.add_parser("db", help="database migrations")
    db.add_argument("action", choices=["upgrade", "downgrade", "current", "check"])
    db.add_argument("revision", nargs="?", help="target revision (default head / -1)")
    sub.add_parser(
        "doctor", help="check configuration, database, model endpoint, tokens, tokenizer"
    )
    usage = sub.add_parser("usage", help="spend per user and chat: today, this month, all time")
    usage.add_argument("--json", action="store_true", help="print JSON instead of a table")
    export = sub.add_parser("export", help="write conversations for fine-tuning")
    export.add_argument("--format", choices=["openai-jsonl"], default="openai-jsonl")
    export.add_argument(
        "--chat", dest="chats", action="append", help="only this chat key (repeatable)"
    )
    export.add_argument("--since", help="only turns since: 2026-11-01, an ISO date-time, or 7d")
    export.add_argument("--output", "-o", help="file to write (default: standard output)")
    return parser


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, None]]] = {
    "run": cmd_run,
    "console": cmd_console,
    "db": cmd_db,
    "usage": cmd_usage,
    "export": cmd_export,
}


def telegram_token_rejected(exc: BaseException) -> bool:
    """True when python-telegram-bot refused to start: the Bot API rejected the token."""
    try:
        from telegram.error import InvalidToken
    except ImportError:  # pragma: no cover - a dependency
        return False
    if isinstance(exc, BaseExceptionGroup):
        return any(telegram_token_rejected(e) for e in exc.exceptions)
    return isinstance(exc, InvalidToken)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `relaybot` console script."""
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    if not hasattr(args, "chat"):
        args.chat = "default"
    if command == "doctor":
        from bots.doctor import run as run_doctor

        return run_doctor(load_settings, sys.stdout)
    settings: Settings | None = None

    def say(problem: str) -> None:
        # The same redaction as the logs: an error's text may carry a key or a token
        # (python-telegram-bot's InvalidToken quotes the token it was given).
        scrub = RedactingFilter(settings_secrets(settings) if settings else ())
        print(scrub.redact(f"relaybot: {problem}"), file=sys.stderr)

    try:
        settings = load_settings()
        explicit_level = "log_level" in settings.model_fields_set  # environment or .env
        quiet = command in ("console", "db", "usage", "export") or (
            command == "run" and not (settings.telegram_bot_token or settings.slack_bot_token)
        )
        setup_logging(settings.log_level if explicit_level or not quiet else "WARNING", settings)
        asyncio.run(COMMANDS[command](settings, args))
    except (StartupError, ConfigError) as exc:
        say(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        say(f"{where}{exc.strerror or exc}")
        return 1
    except Exception as exc:
        if telegram_token_rejected(exc):
            say(TELEGRAM_TOKEN_REJECTED)
            return 2
        # Database URLs and drivers fail in many ways; one line says which.
        say(f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
