"""The `relaybot` command: run the bot, chat in the console, manage the database."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from pydantic import ValidationError

from core.app import Core, open_core
from core.config import Settings
from core.db import migrate
from core.db.store import create_engine
from core.errors import AuthFailed, ConfigError, RelaybotError, UpstreamDown

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
    """List models once so a wrong URL or key is reported at start, not on the first message."""
    url = core.settings.openai_base_url
    try:
        await core.client.list_models()
    except AuthFailed:
        raise StartupError(
            f"the model endpoint {url} rejected OPENAI_API_KEY; check the key."
        ) from None
    except UpstreamDown:
        raise StartupError(
            f"cannot reach the model endpoint at {url}; check OPENAI_BASE_URL and the network."
        ) from None
    except RelaybotError:
        # Some compatible servers have no /models; chatting may still work.
        logging.getLogger("relaybot").warning("the endpoint at %s cannot list models", url)


def setup_logging(level: str) -> None:
    """Log to stderr."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore", "telegram.ext", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


async def cmd_console(settings: Settings, args: argparse.Namespace) -> None:
    """Chat in the terminal."""
    from bots.console import run_console

    check_model_settings(settings)
    async with open_core(settings, migrate_db=not args.no_migrate) as core:
        await probe_endpoint(core)
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
        await run_platforms(core, stop)


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
    return parser


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, None]]] = {
    "run": cmd_run,
    "console": cmd_console,
    "db": cmd_db,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `relaybot` console script."""
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    if not hasattr(args, "chat"):
        args.chat = "default"
    try:
        settings = load_settings()
        explicit_level = "RELAYBOT_LOG_LEVEL" in os.environ
        quiet = command in ("console", "db") or (
            command == "run" and not (settings.telegram_bot_token or settings.slack_bot_token)
        )
        setup_logging(settings.log_level if explicit_level or not quiet else "WARNING")
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
