"""The `relaybot` command: run the bot, chat in the console, manage the database."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from core.app import Core, open_core
from core.config import Settings
from core.db import migrate
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
from core.privacy import maintenance_loop, run_maintenance

OFFICIAL_API = "api.openai.com"


class StartupError(Exception):
    """A problem the operator must fix; printed as one line, without a traceback."""


def load_settings() -> Settings:
    """Settings from the environment and .env, or a one-line StartupError."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise StartupError(f"invalid configuration: {problems}") from None


def check_model_settings(settings: Settings) -> None:
    """Refuse to start without a key where the endpoint needs one."""
    if settings.openai_api_key is None and OFFICIAL_API in settings.openai_base_url:
        raise StartupError(
            "OPENAI_API_KEY is not set. Put it in the environment or in a .env file "
            "(or set OPENAI_BASE_URL to an OpenAI-compatible server that needs no key)."
        )


async def probe_endpoint(core: Core) -> None:
    """List models once so a wrong URL or key is reported at start, not on the first message;
    with moderation on, moderate once too (a server without it would fail every message)."""
    url = core.settings.openai_base_url
    unlisted: RelaybotError | None = None
    models: list[str] = []
    try:
        models = await core.client.list_models()
    except AuthFailed:
        raise StartupError(
            f"the model endpoint {url} rejected OPENAI_API_KEY; check the key."
        ) from None
    except UpstreamDown:
        raise StartupError(
            f"cannot reach the model endpoint at {url}; check OPENAI_BASE_URL and the network."
        ) from None
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
    url = core.settings.openai_base_url
    try:  # one free request; a passing failure is the first message's to meet
        await core.service.moderator.probe()
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


async def cmd_console(settings: Settings, args: argparse.Namespace) -> None:
    """Chat in the terminal."""
    from bots.console import run_console

    check_model_settings(settings)
    async with open_core(settings, migrate_db=not args.no_migrate) as core:
        await probe_endpoint(core)
        await run_maintenance(core.engine, settings)
        await run_console(core, chat=args.chat, user=os.environ.get("USER", "you") or "you")


async def cmd_run(settings: Settings, args: argparse.Namespace) -> None:
    """Run every configured platform; the console when none is."""
    if settings.telegram_bot_token is None and settings.slack_bot_token is None:
        await cmd_console(settings, args)
        return
    from bots.runner import run_platforms

    check_model_settings(settings)
    async with open_core(settings, migrate_db=not args.no_migrate) as core:
        await probe_endpoint(core)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # Retention and counter clean-up: now, then hourly, beside the platforms.
        maintenance = asyncio.create_task(maintenance_loop(core.engine, settings, stop))
        try:
            await run_platforms(core, stop)
        finally:
            stop.set()
            await maintenance


async def cmd_db(settings: Settings, args: argparse.Namespace) -> None:
    """Database maintenance."""
    engine = create_engine(settings.database_url)
    try:
        if args.action == "upgrade":
            await migrate.upgrade(engine, args.revision or "head")
            print(f"database at {await migrate.current_revision(engine)}")
        elif args.action == "downgrade":
            await migrate.downgrade(engine, args.revision or "-1")
            print(f"database at {await migrate.current_revision(engine)}")
        elif args.action == "current":
            print(await migrate.current_revision(engine) or "empty (never migrated)")
        elif args.action == "check":
            await migrate.check(engine)
            print("models and migrations agree")
    finally:
        await engine.dispose()


def parse_since(text: str) -> datetime:
    """--since: an ISO date or date-time (UTC unless it says otherwise), or "7d" for days ago."""
    value = text.strip()
    if value[:-1].isdigit() and value.endswith("d"):
        return datetime.now(UTC) - timedelta(days=int(value[:-1]))
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise StartupError(
            f"--since {text!r}: use a date like 2026-11-01, a date-time, or 7d"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def _migrated_engine(settings: Settings) -> AsyncEngine:
    engine = create_engine(settings.database_url)
    if await migrate.current_revision(engine) is None:
        await engine.dispose()
        raise StartupError("the database has no relaybot tables yet; run `relaybot db upgrade`")
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
        out = (
            await asyncio.to_thread(open, args.output, "w", encoding="utf-8")
            if to_file
            else sys.stdout
        )
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
    parser.add_argument(
        "--no-migrate", action="store_true", help="do not apply migrations on start"
    )
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the configured platforms (console when none)")
    run.add_argument("--chat", default="default", help="console conversation to continue")
    console = sub.add_parser("console", help="chat in the terminal")
    console.add_argument("--chat", default="default", help="which stored conversation to use")
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `relaybot` console script."""
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    if not hasattr(args, "chat"):
        args.chat = "default"
    if command == "doctor":
        from bots.doctor import run as run_doctor

        return run_doctor(load_settings, sys.stdout)
    try:
        settings = load_settings()
        explicit_level = "RELAYBOT_LOG_LEVEL" in os.environ
        quiet = command in ("console", "db", "usage", "export") or (
            command == "run" and not (settings.telegram_bot_token or settings.slack_bot_token)
        )
        setup_logging(settings.log_level if explicit_level or not quiet else "WARNING", settings)
        asyncio.run(COMMANDS[command](settings, args))
    except StartupError as exc:
        print(f"relaybot: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"relaybot: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"relaybot: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        # Database URLs and drivers fail in many ways; one line says which.
        print(f"relaybot: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
