"""The Telegram adapter: python-telegram-bot in, the core's conversation service out."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import warnings
from collections.abc import Awaitable, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from telegram import (
    Bot,
    BotCommand,
    BotCommandScope,
    BotCommandScopeAllChatAdministrators,
    BotCommandScopeAllGroupChats,
    BotCommandScopeAllPrivateChats,
    BotCommandScopeDefault,
    Update,
)
from telegram.error import BadRequest, Forbidden, InvalidToken, RetryAfter, TelegramError
from telegram.ext import (
    Application,
    BaseRateLimiter,
    ContextTypes,
)
from telegram.request import HTTPXRequest
from telegram.warnings import PTBUserWarning

from bots.http_server import HttpServer
from bots.telegram.convert import (
    DOWNLOAD_LIMIT_BYTES,
    PLATFORM,
    BotIdentity,
    group_upgrade,
    to_incoming,
)
from bots.telegram.delivery import retry_seconds, with_retry
from bots.telegram.limits import FloodLimits
from bots.telegram.sink import Pacing, TelegramSink
from core.app import Core
from core.commands import command_menu
from core.errors import BadInput, ConfigError, ShuttingDown, UpstreamDown
from core.openai_client import pooled_transport
from core.ports import ReplySink
from core.types import ChatRef, Fetch, IncomingMessage

log = logging.getLogger("relaybot.telegram")

WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
_SECRET_LABEL = b"relaybot telegram webhook secret"
ALLOWED_UPDATES = ["message"]
# How long a Bot API call may take to answer (PTB's default is 5 s). A send that timed out
# may still have arrived and is not sent again (delivery.with_retry), so the wait is long:
# a slow Telegram (or a large upload) should be waited for, not guessed about.
SEND_TIMEOUT = 30.0
TOO_BIG = (
    "That file is larger than 20 MB, the most Telegram lets bots download, "
    "so I can't open it. Please send a shorter recording or a smaller file."
)
FILE_GONE = "Telegram no longer has that file, so I can't open it. Please send it again."
FILE_UNAVAILABLE = (
    "I couldn't download that file from Telegram just now. Please try again in a moment."
)


def default_webhook_secret(token: str) -> str:
    """The webhook's secret when TELEGRAM_WEBHOOK_SECRET is not set: an HMAC-SHA256 keyed by
    the bot token, in hex (64 of the A-Z a-z 0-9 _ - Telegram takes). Every replica with the
    token derives the same one; it tells nothing of the token, and only who has the token
    (who could as well move the webhook) can make it."""
    return hmac.new(token.encode(), _SECRET_LABEL, hashlib.sha256).hexdigest()


class _RedactToken(logging.Filter):
    """Masks the bot token in log lines (httpx logs every request URL, which holds it)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._token = token

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self._token in message:
            record.msg = message.replace(self._token, "<bot-token>")
            record.args = None
        return True


def _protect_logs(token: str) -> None:
    # Logger filters do not apply to child loggers, so attach to every known one.
    names = ["httpx", "httpcore", "telegram"] + [
        name
        for name in logging.root.manager.loggerDict
        if name.startswith(("telegram.", "httpx.", "httpcore."))
    ]
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactToken) for f in logger.filters):
            logger.addFilter(_RedactToken(token))


def _parsed(data: dict[str, Any], bot: Any) -> Update | None:
    """The update, or None when python-telegram-bot cannot read it (a field of an unexpected
    type): logged with its update_id and the error, never its content (it may hold a
    person's message)."""
    try:
        return Update.de_json(data, bot)
    except Exception as err:
        update_id = data.get("update_id")
        log.warning(
            "skipped Telegram update %s: it could not be parsed (%s)",
            update_id if type(update_id) is int else "without a readable update_id",
            type(err).__name__,
        )
        return None


def _pooled(connections: int) -> dict[str, Any]:
    """httpx client arguments for PTB's HTTPXRequest: aiohttp's pool, `connections` wide."""
    return {"transport": pooled_transport(connections)}


class TelegramAdapter:
    """Receives Telegram updates (long polling, or a webhook on the app's HTTP server)."""

    def __init__(
        self,
        core: Core,
        server: HttpServer,
        *,
        rate_limiter: BaseRateLimiter[Any] | None = None,
        pacing: Pacing | None = None,
        poll_timeout: float = 10.0,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        settings = core.settings
        if settings.telegram_bot_token is None:
            raise ConfigError("set TELEGRAM_BOT_TOKEN to run the Telegram adapter")
        self._core = core
        self._server = server
        self._token = settings.telegram_bot_token.get_secret_value()
        self._webhook_url = settings.telegram_webhook_url
        configured = settings.telegram_webhook_secret
        # Without a configured secret, one derived from the token keeps strangers off the
        # webhook and is the same on every replica (a random one per process: each replica's
        # setWebhook replaced the others', which then refused every update with 403).
        self._secret = (
            configured.get_secret_value() if configured else default_webhook_secret(self._token)
        )
        self._rate_limiter = rate_limiter
        pacing = pacing or Pacing()
        # "typing…" is kept up as long as the core waits for a model's first words (a
        # reasoning model thinks in silence for minutes: RELAYBOT_FIRST_TOKEN_TIMEOUT).
        typing_max = max(pacing.typing_max, settings.first_token_timeout)
        self._pacing = dataclasses.replace(pacing, typing_max=typing_max)
        self._poll_timeout = poll_timeout
        self._send_timeout = send_timeout
        self._app: Application[Any, Any, Any, Any, Any, Any] | None = None
        self._requests: tuple[HTTPXRequest, ...] = ()  # the Bot API pools (see setup)
        self._identity: BotIdentity | None = None
        self._accepting = False
        # Answers in progress; stop() waits for them before closing the bot.
        self._jobs: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None

    @property
    def webhook_mode(self) -> bool:
        """True when Telegram pushes updates to our HTTP server instead of being polled."""
        return bool(self._webhook_url)

    @property
    def application(self) -> Application[Any, Any, Any, Any, Any, Any]:
        """The python-telegram-bot application (after `setup`)."""
        if self._app is None:
            raise RuntimeError("TelegramAdapter.setup() was not called")
        return self._app

    # -- lifecycle -----------------------------------------------------------------------
    async def setup(self) -> None:
        """Build the application and, in webhook mode, add the webhook route."""
        settings = self._core.settings
        wait = self._send_timeout
        self._requests = (
            HTTPXRequest(
                connection_pool_size=256,
                read_timeout=wait,
                write_timeout=wait,
                media_write_timeout=max(wait, 20.0),
                httpx_kwargs=_pooled(256),
            ),
            # getUpdates: its read timeout is the margin added to the long poll's own wait
            # (see _poll), PTB's default.
            HTTPXRequest(connection_pool_size=1, httpx_kwargs=_pooled(1)),
        )
        builder = (
            Application.builder()
            .token(self._token)
            .base_url(settings.telegram_api_base_url)
            .base_file_url(settings.telegram_file_base_url)
            .rate_limiter(self._rate_limiter or FloodLimits())
            # Bot API calls over aiohttp's pool and parser, as the model client's: through
            # httpx's default transport each call polled every pooled connection first, and
            # an answer cost 2-3x the CPU of a Slack one (bench/README.md, scenario 5).
            .request(self._requests[0])
            .get_updates_request(self._requests[1])
            # Updates never go through PTB's queue: polling and webhook both hand them to
            # the core directly (see _poll and _webhook), which orders each chat itself.
            .updater(None)
        )
        self._app = builder.build()
        self._app.add_error_handler(self._on_error)
        _protect_logs(self._token)
        if self.webhook_mode:
            paths = self.webhook_paths()
            for path in paths:
                self._server.app.router.add_post(path, self._webhook)
            log.info("Telegram webhook served on %s", " and ".join(paths))

    def webhook_paths(self) -> list[str]:
        """The paths the webhook is served on: TELEGRAM_WEBHOOK_URL's own (where Telegram
        posts when nothing in between rewrites it) and the fixed /telegram/webhook (where
        an ingress that routes by another path may forward it). Settings refuse a path the
        HTTP server answers for something else."""
        assert self._webhook_url is not None
        path = urlsplit(self._webhook_url).path or "/"
        return [WEBHOOK_PATH] if path == WEBHOOK_PATH else [path, WEBHOOK_PATH]

    @staticmethod
    async def _register_commands(bot: Bot) -> None:
        """Each menu where it applies (Telegram picks the narrowest scope set): private
        chats without the group-only commands, group members without what only a group's
        admins may do, a group's admins everything of a group; the default scope (any chat
        no other list covers) gets the private one."""

        def listed(menu: dict[str, str]) -> list[BotCommand]:
            return [BotCommand(name, text[:256]) for name, text in menu.items()]

        private = [
            BotCommand("start", "start talking to the bot"),
            *listed(command_menu(group=False)),
        ]
        menus: list[tuple[list[BotCommand], BotCommandScope]] = [
            (private, BotCommandScopeDefault()),
            (private, BotCommandScopeAllPrivateChats()),
            (listed(command_menu(group=True)), BotCommandScopeAllGroupChats()),
            (listed(command_menu(group=True, admin=True)), BotCommandScopeAllChatAdministrators()),
        ]
        for commands, scope in menus:

            def register(
                commands: list[BotCommand] = commands, scope: BotCommandScope = scope
            ) -> Awaitable[bool]:
                return bot.set_my_commands(commands, scope=scope)

            await with_retry(register)

    async def start(self) -> None:
        """Learn who we are, register commands, then poll or register the webhook."""
        app = self.application
        try:
            await app.initialize()
        except BaseException:
            # A rejected token or an unreachable Bot API: the connection pools PTB opened
            # before it asked getMe are closed here (the application never started).
            await asyncio.gather(*(r.shutdown() for r in self._requests), return_exceptions=True)
            raise
        bot = app.bot
        self._identity = BotIdentity(
            id=bot.id,
            username=bot.username,
            reads_all_group_messages=bool(bot.can_read_all_group_messages),
        )
        await self._register_commands(bot)
        if self.webhook_mode:
            await app.start()
            self._accepting = True
            assert self._webhook_url is not None
            await with_retry(
                lambda: bot.set_webhook(
                    url=str(self._webhook_url),
                    secret_token=self._secret,
                    allowed_updates=ALLOWED_UPDATES,
                )
            )
            log.info("Telegram webhook registered for @%s", bot.username)
        else:
            await with_retry(lambda: bot.delete_webhook())
            await app.start()
            self._accepting = True
            self._poller = asyncio.create_task(self._poll(), name="relaybot:telegram-poll")
            log.info("polling Telegram as @%s", bot.username)

    async def stop_receiving(self) -> None:
        """Take no more updates: the webhook answers 503 (Telegram delivers again later),
        polling ends. Answers in progress can still be sent."""
        self._accepting = False
        if self._poller is not None:
            # An update fetched but not yet stored is not confirmed: Telegram delivers it again.
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None

    async def stop(self) -> None:
        """Stop receiving, finish the updates already received, close the HTTP clients."""
        await self.stop_receiving()
        app = self._app
        if app is None:
            return
        if app.running:
            await app.stop()
        while self._jobs:
            # A wait cut short (cancelled) cancels no answer: finishing or releasing them
            # is the core's (ConversationService.shutdown).
            await asyncio.wait(set(self._jobs))
        await app.shutdown()

    async def idle(self) -> None:
        """Wait until every update received so far has been handled (for tests)."""
        await self.application.update_queue.join()
        while self._jobs:
            await asyncio.gather(*self._jobs, return_exceptions=True)

    # -- receiving -----------------------------------------------------------------------
    def _secret_ok(self, given: str | None) -> bool:
        if not given:
            return False
        return hmac.compare_digest(given.encode(), self._secret.encode())

    async def _webhook(self, request: web.Request) -> web.StreamResponse:
        if not self._secret_ok(request.headers.get(SECRET_HEADER)):
            return web.Response(status=403, text="forbidden")
        if not self._accepting or self._app is None or not self._core.service.accepting:
            return web.Response(status=503, text="not ready")  # Telegram delivers again later
        try:
            data = await request.json()
        except ValueError:
            return web.Response(status=400, text="invalid JSON")
        if not isinstance(data, dict):
            return web.Response(status=400, text="invalid update")
        update = _parsed(data, self._app.bot)
        if update is None:
            # It reads no better when sent again, and Telegram sends again after any answer
            # but a 2xx (4xx too), holding back that chat's later updates meanwhile: answered
            # 200, dropped, as polling confirms it.
            return web.Response(text="skipped")
        # 200 only once the core has stored the event: from then on it is safe, and a
        # redelivery is recognised. The answer itself is written after we reply.
        try:
            await self._receive(update)
        except ShuttingDown:
            return web.Response(status=503, text="stopping")  # delivered again, elsewhere
        return web.Response(text="ok")

    async def _receive(self, update: Update) -> None:
        """Hand an update to the core; returns once it is stored (or ignored)."""
        upgrade = group_upgrade(update)
        if upgrade is not None:
            # The group's history, settings and budgets follow it to its new id.
            old, new = upgrade
            await self._core.service.move_chat(ChatRef(PLATFORM, old), ChatRef(PLATFORM, new))
            return
        received = self._translate(update)
        if received is None:
            return
        incoming, sink = received
        job = await self._core.service.submit(incoming, sink)
        if job is not None:
            self._jobs.add(job)
            job.add_done_callback(self._jobs.discard)
            job.add_done_callback(lambda _: sink.stop_typing())

    async def _receive_batch(
        self, updates: Sequence[Update], offset: int | None
    ) -> tuple[int | None, BaseException | None]:
        """Store a batch of updates together (one commit for all on SQLite, side by side on
        PostgreSQL): the next offset to confirm, and the first failure, if any.

        Each is handed to the core in the batch's order, before any waits (the core keeps
        each chat's order from that); only the updates before the first one that failed
        are confirmed, the rest come back and are stored again or dropped as duplicates.
        """
        outcomes = await asyncio.gather(
            *(self._receive(update) for update in updates), return_exceptions=True
        )
        for update, outcome in zip(updates, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                return offset, outcome
            offset = update.update_id + 1
        return offset, None

    def _parse_batch(self, batch: Sequence[Any]) -> tuple[list[Update], int | None]:
        """The updates of a raw getUpdates result that python-telegram-bot can read, in
        order, and the last update_id in it (None when none can be read).

        A bad update is logged (its update_id and the error, never its content: it may hold
        a person's message) and left out; confirming the batch confirms it too. One whose
        update_id cannot be read has no offset of its own: only a later update's confirms it.
        """
        bot = self.application.bot
        updates: list[Update] = []
        last: int | None = None
        for data in batch:
            update_id = data.get("update_id") if isinstance(data, dict) else None
            if type(update_id) is not int or update_id < 0:
                log.warning(
                    "skipped a Telegram update without a readable update_id (%s)",
                    "missing" if update_id is None else type(update_id).__name__,
                )
                continue
            last = update_id
            update = _parsed(data, bot)
            if update is not None:
                updates.append(update)
        return updates, last

    async def _poll(self) -> None:
        """Long-poll getUpdates; confirm (advance the offset past) an update only once the
        core has stored it, so a crash between fetching and storing loses nothing."""
        bot = self.application.bot
        # getUpdates is asked raw, so that one update PTB cannot parse (Update.de_list fails
        # the whole batch) is skipped instead of fetched again forever. Bot.do_api_request
        # warns that Bot.get_updates exists; that is the call we cannot use here.
        warnings.filterwarnings(
            "ignore", message=r"Please use 'Bot\.getUpdates'", category=PTBUserWarning
        )
        # As get_updates does: the long poll's wait on top of the request's read timeout.
        read_timeout = (self._requests[1].read_timeout or 0) + int(self._poll_timeout)
        offset: int | None = None
        failures = 0
        while self._accepting:
            try:
                batch = await bot.do_api_request(
                    "getUpdates",
                    api_kwargs={
                        "offset": offset,
                        "timeout": int(self._poll_timeout),
                        "allowed_updates": ALLOWED_UPDATES,
                    },
                    read_timeout=read_timeout,
                )
                updates, last = self._parse_batch(batch)
                offset, failed = await self._receive_batch(updates, offset)
                if failed is not None:
                    raise failed
                failures = 0
                if last is not None:
                    offset = last + 1  # every update read was stored, the bad ones skipped
                elif batch:
                    # Only updates without a readable update_id: they come back until a
                    # later update is confirmed, so wait for one instead of asking at once.
                    await asyncio.sleep(1.0)
            except ShuttingDown:
                return  # left unconfirmed for the next process
            except RetryAfter as err:
                await asyncio.sleep(retry_seconds(err))
            except Exception as err:
                # Telegram or the database is unwell: back off; unconfirmed updates come back.
                failures += 1
                wait = min(30.0, 0.5 * 2**failures)
                log.warning(
                    "polling Telegram failed (%s); retrying in %.1f s", type(err).__name__, wait
                )
                await asyncio.sleep(wait)

    def _fetcher(self, file_id: str, size: int | None) -> Fetch:
        app = self.application

        async def fetch() -> bytes:
            if size is not None and size > DOWNLOAD_LIMIT_BYTES:
                raise BadInput("telegram file over 20 MB", user_message=TOO_BIG)
            # Telegram's errors become the core's own, each with what the person is told
            # (the core keeps a voice note nobody addressed to the bot quiet either way).
            try:
                telegram_file = await with_retry(lambda: app.bot.get_file(file_id))
            except BadRequest as err:
                if "too big" in err.message.lower():
                    raise BadInput("telegram file too big", user_message=TOO_BIG) from err
                # "invalid file_id", "wrong file_id or the file is temporarily unavailable"
                raise BadInput(self._scrubbed("getFile", err), user_message=FILE_GONE) from err
            except InvalidToken as err:  # the token itself was refused: the operator's
                raise ConfigError(
                    "Telegram refused TELEGRAM_BOT_TOKEN (or TELEGRAM_API_BASE_URL is wrong) "
                    "when asked for a file"
                ) from err
            except TelegramError as err:  # 5xx, timeouts, a 429 longer than we wait
                raise UpstreamDown(
                    self._scrubbed("getFile", err), user_message=FILE_UNAVAILABLE
                ) from err
            try:
                # A download is safe to repeat: a 5xx or a lost connection is tried again.
                return bytes(await with_retry(telegram_file.download_as_bytearray))
            except (InvalidToken, Forbidden, BadRequest) as err:
                # PTB raises InvalidToken for the file server's 404 (and 401): getFile just
                # took the token, so the file is gone from Telegram's servers.
                raise BadInput(self._scrubbed("download", err), user_message=FILE_GONE) from err
            except TelegramError as err:
                raise UpstreamDown(
                    self._scrubbed("download", err), user_message=FILE_UNAVAILABLE
                ) from err

        return fetch

    def _scrubbed(self, step: str, err: TelegramError) -> str:
        """A file error for the log: what Telegram said, never the bot token (a download's
        URL holds it)."""
        return f"Telegram file {step} failed: {type(err).__name__}: {err}".replace(
            self._token, "<bot-token>"
        )

    def _translate(self, update: Update) -> tuple[IncomingMessage, TelegramSink] | None:
        """The neutral message for an update and the sink that answers it, or None."""
        identity = self._identity
        if identity is None:
            return None
        incoming = to_incoming(
            update,
            identity,
            self._fetcher,
            # Every group voice note goes to the core: the group's /voicemode decides.
            group_voice=True,
        )
        if incoming is None:
            return None
        return incoming, self._sink_for(incoming)

    def _sink_for(self, msg: IncomingMessage) -> TelegramSink:
        thread = msg.chat.thread_id
        reply_to = msg.platform_message_id
        service = self._core.service
        return TelegramSink(
            self.application.bot,
            int(msg.chat.chat_id),
            private=msg.is_direct,
            thread_id=int(thread) if thread else None,
            reply_to=int(reply_to) if reply_to and reply_to.isdigit() else None,
            pacing=self._pacing,
            hears_all=self._identity is not None and self._identity.reads_all_group_messages,
            # Should this process die before the answer is stored, whoever resumes the
            # message continues in the answer's messages instead of sending them again.
            on_messages=lambda ids: service.remember_reply(msg, tuple(map(str, ids))),
            continue_in=tuple(int(r) for r in msg.reply_refs if r.lstrip("-").isdigit()),
        )

    def restore(self, msg: IncomingMessage) -> tuple[IncomingMessage, ReplySink] | None:
        """Resume a stored Telegram message (after a restart): fresh downloads, a new sink.

        With `msg.reply_refs`, the sink's streamed answer continues in (edits) the messages
        an earlier run already sent for it, in order.
        """
        if msg.chat.platform != PLATFORM or self._app is None or self._identity is None:
            return None
        files = tuple(
            replace(a, fetch=self._fetcher(a.ref, a.size)) if a.ref else a for a in msg.attachments
        )
        return replace(msg, attachments=files), self._sink_for(msg)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        error = context.error
        log.error(
            "error while handling a Telegram update: %s",
            type(error).__name__,
            exc_info=(type(error), error, error.__traceback__) if error else None,
        )
