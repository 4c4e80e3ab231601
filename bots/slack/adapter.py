"""The Slack adapter: a slack-bolt AsyncApp over HTTP (/slack/events) or Socket Mode."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp, AsyncAssistant, AsyncBoltContext
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.logger.messages import (
    warning_client_prioritized_and_token_skipped,
    warning_token_skipped,
)
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.http_server import HttpServer
from bots.slack.events import (
    PLATFORM,
    asks_to_edit,
    mentioned_users,
    pictures_of,
    plain_text,
    thread_to_check,
    to_incoming,
    with_pictures,
    with_thread_parent,
)
from bots.slack.files import fetcher, slack_down
from bots.slack.sink import (
    ANSWER_EVENT_TYPE,
    TRANSCRIPT_EVENT_TYPE,
    Caller,
    ChannelAdmins,
    SinkOptions,
    SlackSink,
    StreamingSupport,
    UpdateBudget,
    error_name,
    retry_after,
)
from core.app import Core
from core.commands import COMMANDS
from core.errors import BadInput, ConfigError, ShuttingDown
from core.types import ChatRef, IncomingMessage, Sender

log = logging.getLogger("relaybot.slack")

EVENTS_PATH = "/slack/events"
SUGGESTED_PROMPTS = (
    {"title": "Summarise", "message": "Summarise this for me: "},
    {"title": "Explain", "message": "Explain like I'm new to the topic: "},
    {"title": "Draw", "message": "image: a lighthouse at dawn, watercolour"},
)
_THREAD_CACHE_SIZE = 10_000
_NEGATIVE_TTL = 300.0
_LOOKUP_PAGES = 5  # conversations.replies/history pages read looking for an earlier answer
# Seconds the Slack look-ups of one event (is the thread the bot's, who wrote it and whom
# it mentions) may take together: the event is acknowledged after them, and Slack wants
# its ack within 3 seconds. One that runs out counts as "not known".
LOOKUP_SECONDS = 2.0
_NAMES_PER_MESSAGE = 10  # people a message mentions by id whose names are looked up
_MAX_REPLIES_PAUSE = 60.0  # the longest conversations.replies is left alone after a 429
# Commands acting on a conversation's history: in a channel, the slash command's own
# conversation (the channel's top level) holds none; each thread is a conversation.
HISTORY_COMMANDS = {
    "reset": "to clear the history of one, say `reset` in that thread",
    "retry": "to have my last answer in one written again, say `retry` in that thread",
    "forget": "to delete what is stored about one, say `forget` in that thread",
}


def _answers(message: Any, event_key: str) -> bool:
    """Whether a message from conversations.* is tagged as (part of) the answer to `event_key`."""
    if not isinstance(message, Mapping) or not message.get("ts"):
        return False
    metadata = message.get("metadata")
    if not isinstance(metadata, Mapping) or metadata.get("event_type") != ANSWER_EVENT_TYPE:
        return False
    payload = metadata.get("event_payload")
    return isinstance(payload, Mapping) and payload.get("event") == event_key


def _from_bot(message: Mapping[str, Any], bot_user_id: str, bot_id: str | None) -> bool:
    return message.get("user") == bot_user_id or (
        bot_id is not None and message.get("bot_id") == bot_id
    )


def _takes_part(
    message: Mapping[str, Any], thread_ts: str, bot_user_id: str, bot_id: str | None
) -> bool:
    """Whether a message from conversations.replies of the thread `thread_ts` shows the bot
    taking part in it: one of its replies there other than a transcript (posted under a
    clip nobody addressed to it where the channel wants transcripts). Not the message the
    thread hangs under: in a channel the bot posts at the top only a slash command's output
    (/image's picture, /help), and people talking under that talk among themselves."""
    if str(message.get("ts") or "") == thread_ts:
        return False
    metadata = message.get("metadata")
    transcript = isinstance(metadata, Mapping) and (
        metadata.get("event_type") == TRANSCRIPT_EVENT_TYPE
    )
    return _from_bot(message, bot_user_id, bot_id) and not transcript


def _left_open(message: Any, after: str, me: tuple[str, str | None]) -> bool:
    """Whether a message from conversations.replies is a native stream a killed process
    started in this thread, after the person's message `after`, and never noted.

    chat.startStream takes no metadata (see `SlackSink`); every other text relaybot posts
    in a thread is tagged, as an answer or a notice, and uploads carry their files. So an
    untagged text message of ours after `after` is such a stream. Only one event of a
    thread is answered at a time, and the event resumed is the thread's oldest unfinished
    one: the stream is its answer.
    """
    if not isinstance(message, Mapping) or not message.get("ts"):
        return False
    if message.get("metadata") is not None or message.get("files"):
        return False
    return _from_bot(message, *me) and _ts_order(str(message["ts"])) > _ts_order(after)


def _ts_order(ts: str) -> tuple[int, int]:
    """A Slack ts ("1700000000.000100") as a sortable pair (a float loses digits)."""
    seconds, _, fraction = ts.partition(".")
    try:
        return int(seconds), int(fraction.ljust(6, "0") or 0)
    except ValueError:
        return 0, 0


class _ThreadMemory:
    """Which channel threads the bot takes part in, as this process learnt it (bounded; a
    "no" is forgotten after _NEGATIVE_TTL)."""

    def __init__(self) -> None:
        self._known: OrderedDict[tuple[str, str], tuple[bool, float]] = OrderedDict()

    def get(self, key: tuple[str, str]) -> bool | None:
        found = self._known.get(key)
        if found is None:
            return None
        member, at = found
        if not member and time.monotonic() - at > _NEGATIVE_TTL:
            del self._known[key]
            return None
        self._known.move_to_end(key)
        return member

    def set(self, key: tuple[str, str], member: bool) -> None:
        self._known[key] = (member, time.monotonic())
        self._known.move_to_end(key)
        while len(self._known) > _THREAD_CACHE_SIZE:
            self._known.popitem(last=False)


SLASH_COMMANDS = tuple(COMMANDS)


# auth.test's answers to a bot token Slack does not accept (bots/doctor.py words them too).
_TOKEN_REJECTED = frozenset(
    {"invalid_auth", "not_authed", "token_revoked", "account_inactive", "token_expired"}
)
_TOKEN_FIX = (
    "copy the Bot User OAuth Token (xoxb-...) from the app's OAuth & Permissions page; "
    "reinstall the app if it was revoked"
)


# apps.connections.open's answers to an app token Slack does not accept (an xoxb- token
# given as one: not_allowed_token_type), and what to do (bots/doctor.py says the same).
APP_TOKEN_REJECTED = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "not_allowed_token_type",
        "token_revoked",
        "account_inactive",
        "token_expired",
    }
)
APP_TOKEN_FIX = (
    "generate an App-Level Token (xapp-...) with the connections:write scope on the app's "
    "Basic Information page, and turn Socket Mode on; or unset it for HTTP mode"
)
# The most often a badly signed request to /slack/events is logged (seconds).
SIGNATURE_LOG_INTERVAL = 60.0
# files.info's answers saying the app may not read a file: the advice is the scope.
_FILE_SCOPE_ERRORS = frozenset({"missing_scope", "no_permission", "access_denied"})
_FILE_GONE_ERRORS = frozenset({"file_not_found", "file_deleted"})
_BOT_TOKEN_ERRORS = _TOKEN_REJECTED | {"not_allowed_token_type", "ekm_access_denied"}


def _file_scope_missing(error: str) -> BadInput:
    """The error for files.info refusing a file for want of a scope (missing_scope)."""
    return BadInput(
        f"slack files.info: {error}",
        user_message=(
            "I couldn't get that file: Slack would not let me read it. The app probably lacks "
            "the files:read scope; ask a workspace admin to add it and reinstall the app."
        ),
    )


def _file_info_failed(err: SlackApiError) -> Exception:
    """relaybot's error for files.info failing, so the core says what it means (or, where
    nobody addressed the bot, stays quiet) rather than "Something went wrong"."""
    error = error_name(err) or "error"
    status = err.response.status_code if err.response is not None else 0
    if error in _FILE_SCOPE_ERRORS:
        return _file_scope_missing(error)
    if error in _FILE_GONE_ERRORS:
        return BadInput(
            f"slack files.info: {error}",
            user_message="I couldn't find that file on Slack: it may have been deleted.",
        )
    if status == 429 or status >= 500 or error in ("ratelimited", "internal_error", "fatal_error"):
        return slack_down(f"slack files.info: {error}, HTTP {status}")
    if error in _BOT_TOKEN_ERRORS:
        return ConfigError(f"Slack rejected SLACK_BOT_TOKEN (files.info: {error}): {_TOKEN_FIX}")
    return BadInput(
        f"slack files.info: {error}",
        user_message=f"I couldn't get that file from Slack (it answered {error}).",
    )


class LookupFailed(Exception):
    """Reading an event asked the database (has the bot talked in this thread?), and it
    failed: the event gets no 2xx, and Slack sends it again, as when storing it fails."""


class SlackUnreachable(Exception):
    """auth.test did not answer who the bot is (Slack down, an unexpected error): the start
    goes on, and an event arriving before it did gets no 2xx (Slack sends it again)."""


def _stale(headers: Mapping[str, Any]) -> bool:
    """Whether a refused request's X-Slack-Request-Timestamp is over 5 minutes from this
    machine's clock (Bolt refuses those whatever their signature)."""
    values = headers.get("x-slack-request-timestamp") or ()
    value = values[0] if isinstance(values, list | tuple) and values else values
    try:
        return abs(time.time() - int(str(value))) > 300
    except ValueError:
        return False


def _not_about_the_token(record: logging.LogRecord) -> bool:
    # Bolt takes SLACK_BOT_TOKEN from the environment (relaybot reads it too) and, given
    # relaybot's client (and `authorize`) as well, warns on every start that it leaves
    # that token unused.
    return record.getMessage() not in (
        warning_client_prioritized_and_token_skipped(),
        warning_token_skipped(),
    )


def _not_a_refusal_while_stopping(record: logging.LogRecord) -> bool:
    # A stopping process refuses new events (ShuttingDown: no 2xx, Slack sends them again);
    # Bolt would log each refusal as a listener's failure, with its traceback.
    return not (record.exc_info and isinstance(record.exc_info[1], ShuttingDown))


_BOLT_LOG = logging.getLogger("relaybot.slack.bolt")
_BOLT_LOG.addFilter(_not_about_the_token)
_BOLT_LOG.addFilter(_not_a_refusal_while_stopping)


class SlackAdapter:
    """Receives Slack events, hands neutral messages to the core, answers through SlackSink."""

    def __init__(
        self, core: Core, server: HttpServer, *, sink_options: SinkOptions | None = None
    ) -> None:
        settings = core.settings
        if settings.slack_bot_token is None:
            raise ConfigError("Slack needs SLACK_BOT_TOKEN (xoxb-...)")
        self.socket_mode = settings.slack_app_token is not None
        if not self.socket_mode and settings.slack_signing_secret is None:
            raise ConfigError("Slack in HTTP mode needs SLACK_SIGNING_SECRET (or SLACK_APP_TOKEN)")
        self.core = core
        self.server = server
        self.sink_options = sink_options or SinkOptions()
        self.streaming = StreamingSupport()
        self.updates = UpdateBudget(self.sink_options)
        self.admins = ChannelAdmins()
        self._token = settings.slack_bot_token.get_secret_value()
        self.client = AsyncWebClient(token=self._token, base_url=settings.slack_api_url)
        secret = settings.slack_signing_secret

        async def authorize() -> AuthorizeResult:
            # A function, not the bound method: Bolt passes the arguments it names.
            return await self._authorize()

        self.app = AsyncApp(
            client=self.client,
            signing_secret=secret.get_secret_value() if secret is not None else None,
            # Listeners only translate and store the event (fast), then Slack gets its 200:
            # an acknowledged event is already durable. The answer is written afterwards.
            process_before_response=True,
            request_verification_enabled=not self.socket_mode,
            # Who the bot is comes from the auth.test of `start`, not from one Bolt would
            # make on the first event (which a 5xx there would cost).
            authorize=authorize,
            logger=_BOLT_LOG,
        )
        self._fetch_for = fetcher(core.http, self._token, self._file_info, settings)
        self._threads = _ThreadMemory()
        self._replies_paused_until = 0.0  # conversations.replies answered 429: not until then
        self._names: dict[str, str] = {}
        self._me: tuple[str, str | None] | None = None  # (bot user id, bot id)
        self._auth: AuthorizeResult | None = None  # from auth.test, asked once
        self._inflight: set[asyncio.Task[Any]] = set()
        self._socket: AsyncSocketModeHandler | None = None
        self._session: aiohttp.ClientSession | None = None
        self._bad_signatures = 0  # badly signed requests since the last line saying so
        self._signature_logged_at: float | None = None
        self._register()

    # -- lifecycle -------------------------------------------------------------------------
    async def setup(self) -> None:
        """Add /slack/events to the shared HTTP server (HTTP mode)."""
        if not self.socket_mode:
            self.server.app.router.add_post(EVENTS_PATH, self._http)

    async def start(self) -> None:
        """Open the Web API connection pool; connect Socket Mode when an app token is set."""
        if self._session is None or self._session.closed:
            # Without a session slack_sdk opens (and closes) one per call: a new connection,
            # and against slack.com a new TLS handshake, for every Web API request. Bolt's
            # per-event clients copy `client.session`, so they share this one too. (Before
            # start, and after stop, calls still work, each on a session of its own.)
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.client.timeout)
            )
            self.client.session = self._session
        await self._authenticate()
        if self.socket_mode:
            app_token = self.core.settings.slack_app_token
            assert app_token is not None
            url = await self._open_connection(app_token.get_secret_value())
            self._socket = AsyncSocketModeHandler(self.app, app_token.get_secret_value())
            if url is not None:
                self._socket.client.wss_uri = url  # connects there, without asking again
            await self._socket.connect_async()  # type: ignore[no-untyped-call]
            log.info("slack connected in socket mode")
        else:
            log.info("slack listening on %s", EVENTS_PATH)

    async def _authenticate(self) -> None:
        """Ask Slack who the bot is (auth.test, retried on 429/5xx) before taking events.

        A token Slack rejects stops the start with a ConfigError saying what to do (events
        would otherwise be acknowledged and dropped). When Slack cannot answer now (or
        answers another error), the start goes on: the first event asks again
        (`_authorize`).
        """
        try:
            await self._auth_result()
        except SlackUnreachable as err:
            log.warning("slack auth.test failed (%s); asking again on the first event", err)

    async def _open_connection(self, app_token: str) -> str | None:
        """apps.connections.open with SLACK_APP_TOKEN, once, before Socket Mode connects:
        the WebSocket URL to connect to.

        slack_sdk retries a connection Slack refuses for ever (a traceback every 10 s, never
        started, never exiting): a token Slack rejects stops the start with a ConfigError
        naming SLACK_APP_TOKEN instead. When Slack cannot answer now (or answers another
        error) the start goes on with None, and slack_sdk asks again, and retries.
        """
        try:
            response = await self.client.apps_connections_open(app_token=app_token)
        except SlackApiError as err:
            error = error_name(err) or "error"
            if error in APP_TOKEN_REJECTED:
                raise ConfigError(
                    f"Slack rejected SLACK_APP_TOKEN (apps.connections.open: {error}): "
                    f"{APP_TOKEN_FIX}"
                ) from None
            status = err.response.status_code if err.response is not None else 0
            log.warning(
                "slack apps.connections.open failed (%s, HTTP %s); retrying", error, status
            )
            return None
        except (aiohttp.ClientError, TimeoutError) as err:
            log.warning("slack apps.connections.open failed (%s); retrying", type(err).__name__)
            return None
        url = response.get("url")
        return url if isinstance(url, str) and url else None

    async def _auth_result(self) -> AuthorizeResult:
        """The bot's identity for Bolt, from one successful auth.test (kept)."""
        if self._auth is not None:
            return self._auth
        try:
            response = await Caller(self.sink_options)(self.client.auth_test)
        except SlackApiError as err:
            error = error_name(err) or "error"
            status = err.response.status_code if err.response is not None else 0
            if error in _TOKEN_REJECTED:
                raise ConfigError(
                    f"Slack rejected SLACK_BOT_TOKEN (auth.test: {error}): {_TOKEN_FIX}"
                ) from None
            raise SlackUnreachable(f"{error}, HTTP {status}") from None
        except (aiohttp.ClientError, TimeoutError) as err:
            raise SlackUnreachable(type(err).__name__) from None
        result = AuthorizeResult.from_auth_test_response(
            auth_test_response=response, bot_token=self._token
        )
        bot_id = response.get("bot_id")
        self._me = (str(response.get("user_id") or ""), str(bot_id) if bot_id else None)
        self._auth = result
        return result

    async def _authorize(self) -> AuthorizeResult:
        """Bolt's `authorize`: the kept auth.test result. Should it still be missing and
        Slack not answer, the error gives the event no 2xx (Bolt answers 500, Socket Mode
        does not acknowledge), so Slack delivers it again."""
        try:
            return await self._auth_result()
        except ConfigError as err:
            # Revoked since the start: log it (no token in it) and let Slack retry.
            log.error("%s", err)
            raise SlackUnreachable("bot token rejected") from None

    async def stop_receiving(self) -> None:
        """Take no more events: Socket Mode disconnects. (In HTTP mode the core, no longer
        accepting work, has every new event answered 503: Slack delivers it again.)"""
        if self._socket is not None:
            socket, self._socket = self._socket, None
            await socket.close_async()  # type: ignore[no-untyped-call]

    async def stop(self) -> None:
        """Stop receiving, let the events in progress finish, close the connection pool.

        The wait has no bound of its own: whoever stops the adapter bounds it (the runner
        by RELAYBOT_SHUTDOWN_GRACE, having released by then what could not finish).
        """
        try:
            await self.stop_receiving()
            await self.drain(within=None)
        finally:
            session, self._session = self._session, None
            if session is not None:
                self.client.session = None
                await session.close()

    async def drain(self, within: float | None = 10) -> None:
        """Wait until every event being worked on is done; TimeoutError after `within`
        seconds (None: no limit). Running out of time, or being cancelled, stops only the
        wait: the answers go on."""
        loop = asyncio.get_running_loop()
        deadline = None if within is None else loop.time() + within
        while self._inflight:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise TimeoutError(f"{len(self._inflight)} Slack event(s) still in progress")
            await asyncio.wait(set(self._inflight), timeout=left)

    # -- HTTP ------------------------------------------------------------------------------
    async def _http(self, request: web.Request) -> web.Response:
        # Bolt checks the signature and timestamp (401 otherwise) and acks before our work.
        bolt_request = await to_bolt_request(request)
        bolt_response = await self.app.async_dispatch(bolt_request)
        if bolt_response.status == 401:
            self._refused_signature(bolt_request.headers)
        if bolt_response.status == 500 and not self.core.service.accepting:
            # The listener refused the event because this process is stopping: Slack sends
            # it again (to another replica, or the next start).
            return web.Response(status=503, text="stopping")
        return await to_aiohttp_response(bolt_response)

    def _refused_signature(self, headers: Mapping[str, Any]) -> None:
        """One WARNING, at most every SIGNATURE_LOG_INTERVAL seconds, for requests refused
        (401) as not signed with SLACK_SIGNING_SECRET: Slack's own among them (every event,
        where the secret is wrong) would otherwise be refused without a word. Never the
        body or a header's value (the refusal itself is Bolt's)."""
        self._bad_signatures += 1
        now = time.monotonic()
        if self._signature_logged_at is not None and (
            now - self._signature_logged_at < SIGNATURE_LOG_INTERVAL
        ):
            return
        self._signature_logged_at = now
        count, self._bad_signatures = self._bad_signatures, 0
        if _stale(headers):
            log.warning(
                "refusing Slack requests to %s (HTTP 401): %d signed more than 5 minutes "
                "from this machine's clock; if Slack's events stop arriving, check the clock "
                "(NTP) (said at most once a minute)",
                EVENTS_PATH,
                count,
            )
            return
        log.warning(
            "refusing Slack requests to %s (HTTP 401): %d not signed with "
            "SLACK_SIGNING_SECRET; if Slack's events stop arriving, copy the Signing Secret "
            "from the app's Basic Information page (said at most once a minute)",
            EVENTS_PATH,
            count,
        )

    # -- listeners -------------------------------------------------------------------------
    def _register(self) -> None:
        self.app.event("app_mention")(self._on_event)
        self.app.event("message")(self._on_event)
        # Every core command also works as a slash command where the workspace installs it.
        for name in SLASH_COMMANDS:
            self.app.command(f"/{name}")(self._on_slash_command)

        assistant = AsyncAssistant()
        assistant.thread_started(self._on_thread_started)
        assistant.user_message(self._on_assistant_message)
        assistant.bot_message(self._ignore)
        assistant.thread_context_changed(self._ignore)
        self.app.assistant(assistant)

    async def _ignore(self) -> None:
        """Events we acknowledge and drop (our own assistant messages, context changes)."""

    async def _on_thread_started(self, event: Mapping[str, Any]) -> None:
        thread = event.get("assistant_thread") or {}
        try:
            await self.client.assistant_threads_setSuggestedPrompts(
                channel_id=str(thread.get("channel_id", "")),
                thread_ts=str(thread.get("thread_ts", "")),
                title="Try one of these:",
                prompts=list(SUGGESTED_PROMPTS),
            )
        except SlackApiError as err:
            log.warning("could not set suggested prompts: %s", err.response.get("error"))
        except (aiohttp.ClientError, TimeoutError) as err:
            log.warning("could not set suggested prompts: %s", type(err).__name__)

    async def _on_assistant_message(
        self, event: Mapping[str, Any], body: Mapping[str, Any], context: AsyncBoltContext
    ) -> None:
        await self._handle(event, body, context, assistant=True)

    async def _on_event(
        self, event: Mapping[str, Any], body: Mapping[str, Any], context: AsyncBoltContext
    ) -> None:
        await self._handle(event, body, context, assistant=False)

    async def _handle(
        self,
        event: Mapping[str, Any],
        body: Mapping[str, Any],
        context: AsyncBoltContext,
        *,
        assistant: bool,
    ) -> None:
        if not self.core.service.accepting:
            # Stopping: the event is not acknowledged (503), and Slack delivers it again, to
            # another replica or the next start. Nothing of it is looked up meanwhile.
            raise ShuttingDown("not accepting new work")
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            try:
                msg = await self._to_incoming(event, body, context)
            except LookupFailed:
                raise  # the database's trouble, not the event's: it reads fine next time
            except Exception:
                # An event this adapter cannot read reads no better when Slack sends it
                # again (four times, each failure counting toward Slack turning the app's
                # events off): acknowledged and logged, as before storing was fenced.
                log.exception("slack event could not be read; skipped")
                return
            if msg is None:
                return
            if not msg.is_direct and msg.chat.thread_id and msg.addressed_to_bot:
                # The bot answers there: its thread from now on (an unaddressed clip, which
                # only the channel's voicemode may answer, does not make it so).
                self._threads.set((str(event["channel"]), msg.chat.thread_id), True)
            sink = SlackSink(
                self.client,
                channel=str(event["channel"]),
                thread_ts=msg.chat.thread_id,
                team_id=str(body.get("team_id") or context.team_id or ""),
                user_id=msg.sender.id,
                assistant_thread=assistant,
                status_for=self.core.settings.first_token_timeout,
                options=self.sink_options,
                support=self.streaming,
                budget=self.updates,
                admins=self.admins,
                on_messages=self._noting(msg),
                tag=msg.event_key,
            )
            # Until the event is stored, an error propagates: no 2xx (Bolt answers 500,
            # Socket Mode leaves the envelope unacknowledged) and Slack delivers it again;
            # the inbox's unique event key makes a second delivery harmless.
            job = await self.core.service.submit(msg, sink)
        except ShuttingDown:
            raise  # no 200: Slack retries, and another replica (or the next start) answers
        except LookupFailed as err:
            log.warning(
                "slack event not read: the database did not answer (%s); not acknowledged, "
                "Slack will send it again",
                err,
            )
            raise
        except Exception as err:
            log.warning(
                "slack event not stored (%s); not acknowledged, Slack will send it again",
                type(err).__name__,
            )
            raise
        else:
            self._track(job)  # stored: acknowledged, and answered whatever comes
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def _to_incoming(
        self, event: Mapping[str, Any], body: Mapping[str, Any], context: AsyncBoltContext
    ) -> IncomingMessage | None:
        bot_user_id = str(context.bot_user_id or "")
        bot_id = context.bot_id
        team_id = str(body.get("team_id") or context.team_id or "")
        deadline = asyncio.get_running_loop().time() + LOOKUP_SECONDS
        in_thread = False
        check = thread_to_check(event, bot_user_id, bot_id)
        if check is not None:
            in_thread = await self._bot_in_thread(team_id, *check, bot_user_id, bot_id, deadline)

        def convert(names: Mapping[str, str] | None = None) -> IncomingMessage | None:
            return to_incoming(
                event,
                team_id=team_id,
                bot_user_id=bot_user_id,
                bot_id=bot_id,
                in_bot_thread=in_thread,
                fetch_for=self._fetch_for,
                names=names,
            )

        msg = convert()
        if msg is None:
            return None
        # Names: of the sender in channels (the model tells people apart by them), and of
        # the people the text mentions by id alone (it reads "@bob", not "<@U0BOB>").
        mentioned = mentioned_users(event, bot_user_id)
        wanted = [*([] if msg.is_direct else [msg.sender.id]), *mentioned[:_NAMES_PER_MESSAGE]]
        names = await self._user_names(list(dict.fromkeys(wanted)), deadline)
        if mentioned:
            msg = convert(names) or msg
        if not msg.is_direct:
            name = names.get(msg.sender.id, msg.sender.id)
            msg = dataclasses.replace(msg, sender=Sender(id=msg.sender.id, name=name))
            parent = await self._thread_parent(event, msg, deadline)
            if parent is not None:
                msg = with_thread_parent(msg, parent, self._fetch_for, self._names)
        if msg.addressed_to_bot and not msg.attachments and asks_to_edit(msg.text):
            # "edit: add a party hat" in a thread the bot already talks in (under the
            # person's own photo, under its last edit): the latest picture there is meant.
            found = await self._latest_pictures(event, deadline)
            if found:
                msg = with_pictures(msg, found, self._fetch_for)
        return msg

    async def _latest_pictures(
        self, event: Mapping[str, Any], deadline: float
    ) -> list[Mapping[str, Any]]:
        """The pictures of the latest message in `event`'s thread that has any (the message
        the thread hangs under included), as the thread stands when the event is read;
        none outside a thread, or when Slack could not say in time."""
        thread_ts = str(event.get("thread_ts") or "")
        ts = str(event.get("ts", ""))
        if not thread_ts or thread_ts == ts or time.monotonic() < self._replies_paused_until:
            return []
        found: list[Mapping[str, Any]] = []
        cursor: str | None = None
        try:
            async with asyncio.timeout_at(deadline):
                for _ in range(_LOOKUP_PAGES):
                    response = await self.client.conversations_replies(
                        channel=str(event.get("channel", "")),
                        ts=thread_ts,
                        limit=200,
                        cursor=cursor,
                    )
                    for message in response.get("messages") or []:
                        pictures = pictures_of(message) if isinstance(message, Mapping) else []
                        if pictures:
                            found = pictures
                    meta = response.get("response_metadata") or {}
                    cursor = meta.get("next_cursor") if response.get("has_more") else None
                    if not cursor:
                        break
        except SlackApiError as err:
            wait = retry_after(err)
            if wait is not None:  # rate limited: leave the method alone for that long
                self._replies_paused_until = time.monotonic() + min(wait, _MAX_REPLIES_PAUSE)
            log.info("could not read a thread's pictures: %s", error_name(err) or "error")
            return []
        except (aiohttp.ClientError, TimeoutError) as err:
            log.info("could not read a thread's pictures: %s", type(err).__name__)
            return []
        return found

    async def _thread_parent(
        self, event: Mapping[str, Any], msg: IncomingMessage, deadline: float
    ) -> Mapping[str, Any] | None:
        """The message a channel thread hangs under, when the bot is asked in that thread
        for the first time ("@bot can you answer this?" under someone's question, "@bot
        what is in this picture?" under a photo). None where the bot already talks in the
        thread (its history has it) or Slack could not say in time."""
        thread_ts = str(event.get("thread_ts") or "")
        channel = str(event.get("channel", ""))
        if not msg.addressed_to_bot or not thread_ts or thread_ts == str(event.get("ts", "")):
            return None
        if time.monotonic() < self._replies_paused_until:
            return None
        if await self._has_history(msg.chat):
            return None
        try:
            async with asyncio.timeout_at(deadline):
                response = await self.client.conversations_replies(
                    channel=channel, ts=thread_ts, limit=1
                )
        except SlackApiError as err:
            log.info("could not read a thread's first message: %s", error_name(err) or "error")
            return None
        except (aiohttp.ClientError, TimeoutError) as err:
            log.info("could not read a thread's first message: %s", type(err).__name__)
            return None
        for message in response.get("messages") or []:
            if isinstance(message, Mapping) and str(message.get("ts")) == thread_ts:
                return message
        return None

    def _track(self, job: asyncio.Task[None] | None) -> None:
        if job is not None:
            self._inflight.add(job)
            job.add_done_callback(self._inflight.discard)

    async def _on_slash_command(
        self, ack: Any, command: Mapping[str, Any], context: AsyncBoltContext
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            channel = str(command.get("channel_id", ""))
            team = str(command.get("team_id") or context.team_id or "")
            user = str(command.get("user_id", ""))
            name = str(command.get("command", "")).lstrip("/").lower()
            if name in HISTORY_COMMANDS and not channel.startswith("D"):
                # The channel's top level holds no history to act on: say where it is.
                await ack(
                    text=f"In a channel each thread is its own conversation, so there is no "
                    f"history here for /{name}: {HISTORY_COMMANDS[name]}.",
                    response_type="ephemeral",
                )
                return
            # Slack escapes & < > (and marks up mentions) in a command's text as in a
            # message's: the core gets what the person typed.
            words = plain_text(str(command.get("text") or ""))
            msg = IncomingMessage(
                chat=ChatRef(PLATFORM, f"{team}:{channel}"),
                sender=Sender(id=user, name=str(command.get("user_name") or user)),
                event_key=f"{PLATFORM}:command:{command.get('trigger_id', '')}",
                text=f"{command.get('command', '')} {words}".strip(),
                is_direct=channel.startswith("D"),
            )
            sink = SlackSink(
                self.client,
                channel=channel,
                thread_ts=None,
                team_id=team,
                user_id=user,
                options=self.sink_options,
                support=self.streaming,
                budget=self.updates,
                admins=self.admins,
                on_messages=self._noting(msg),
                tag=msg.event_key,
                # Where the bot cannot post (a channel it is not in, other people's DMs),
                # the person is told through the command's response_url.
                response_url=str(command.get("response_url") or "") or None,
                bot_user_id=context.bot_user_id,
            )
            # Slack never retries a slash command: store it, then acknowledge either way.
            self._track(await self.core.service.submit(msg, sink))
            await ack()
        except ShuttingDown as err:
            await ack(err.user_message)
        except Exception:
            log.exception("slack slash command failed")
            await ack("Sorry, that did not work. Please try again.")
        finally:
            if task is not None:
                self._inflight.discard(task)

    # -- resuming after a restart -----------------------------------------------------------
    def _noting(self, msg: IncomingMessage) -> Callable[[tuple[str, ...]], None]:
        """Notes the messages of `msg`'s answer beside its event, for a successor."""
        service = self.core.service
        return lambda refs: service.remember_reply(msg, refs)

    def restore(self, msg: IncomingMessage) -> tuple[IncomingMessage, SlackSink] | None:
        """A stored Slack message with working file fetches and a sink for its thread/DM."""
        if msg.chat.platform != PLATFORM:
            return None
        team, _, channel = msg.chat.chat_id.partition(":")
        if not channel:
            return None
        attachments = tuple(
            dataclasses.replace(a, fetch=self._fetch_for({"id": a.ref})) if a.ref else a
            for a in msg.attachments
        )
        sink = SlackSink(
            self.client,
            channel=channel,
            thread_ts=msg.chat.thread_id,
            team_id=team,
            user_id=msg.sender.id,
            # A DM thread may be an assistant thread; setStatus failing elsewhere is harmless.
            assistant_thread=msg.is_direct and msg.chat.thread_id is not None,
            status_for=self.core.settings.first_token_timeout,
            options=self.sink_options,
            support=self.streaming,
            budget=self.updates,
            admins=self.admins,
            on_messages=self._noting(msg),
            # An earlier run posted (part of) this answer: continue in those messages. When
            # their note never reached the database, look for them by their metadata.
            continue_in=msg.reply_refs,
            tag=msg.event_key,
            find_earlier=self._finder(channel, msg),
        )
        return dataclasses.replace(msg, attachments=attachments), sink

    def _finder(
        self, channel: str, msg: IncomingMessage
    ) -> Callable[[], Awaitable[tuple[str, ...]]] | None:
        """The look-up of an earlier run's answer messages to `msg`, where one is possible:
        after the person's message, in its thread (or, unthreaded, in the conversation)."""
        after = msg.platform_message_id
        if msg.reply_refs or not after:
            return None
        return lambda: self._tagged_answer(channel, msg.chat.thread_id, after, msg.event_key)

    async def _identity(self) -> tuple[str, str | None] | None:
        """The bot's user id and bot id (from the one auth.test, `_auth_result`); None when
        Slack would not say (the tagged messages can still be found)."""
        if self._me is None:
            try:
                await self._auth_result()
            except (SlackUnreachable, ConfigError) as err:
                log.info("auth.test failed: %s", type(err).__name__)
                return None
        return self._me

    async def _tagged_answer(
        self, channel: str, thread_ts: str | None, after: str, event_key: str
    ) -> tuple[str, ...]:
        """The ts of the messages tagged as the answer to `event_key`, oldest first, and in a
        thread also of a native stream left open for it (`_left_open`).

        Reads the thread (conversations.replies) or, for an unthreaded DM, the conversation
        (conversations.history) from `after` on, with the messages' metadata. Needs the
        *:history scope of the conversation; any failure means "none found".
        """
        call = Caller(self.sink_options)
        found: list[str] = []
        cursor: str | None = None
        try:
            # Native streams are only ever started in threads (SlackSink.can_stream_natively).
            me = await self._identity() if thread_ts is not None else None
            for _ in range(_LOOKUP_PAGES):
                if thread_ts is not None:
                    response = await call(
                        self.client.conversations_replies,
                        channel=channel,
                        ts=thread_ts,
                        oldest=after,
                        include_all_metadata=True,
                        limit=200,
                        cursor=cursor,
                    )
                else:
                    response = await call(
                        self.client.conversations_history,
                        channel=channel,
                        oldest=after,
                        include_all_metadata=True,
                        limit=200,
                        cursor=cursor,
                    )
                for message in response.get("messages") or []:
                    if _answers(message, event_key) or (
                        me is not None and _left_open(message, after, me)
                    ):
                        found.append(str(message["ts"]))
                meta = response.get("response_metadata") or {}
                cursor = meta.get("next_cursor") if response.get("has_more") else None
                if not cursor:
                    break
        except SlackApiError as err:
            log.info("could not look for an earlier answer's messages: %s", error_name(err))
            return ()
        except (aiohttp.ClientError, TimeoutError) as err:
            log.info("could not look for an earlier answer's messages: %s", type(err).__name__)
            return ()
        if found:
            log.info("found an earlier run's answer messages by their metadata")
        return tuple(sorted(set(found), key=_ts_order))

    # -- Slack look-ups --------------------------------------------------------------------
    async def _bot_in_thread(
        self,
        team: str,
        channel: str,
        thread_ts: str,
        bot_user_id: str,
        bot_id: str | None,
        deadline: float,
    ) -> bool:
        """Whether the bot takes part in a channel thread (so replies need no mention).

        Known here; else the conversation's history in the database (shared by every
        replica) says the bot has talked there; else, for a thread whose history was
        forgotten, Slack's conversations.replies shows a reply of the bot's (a "no" is
        remembered for a while). A failed or slow Slack look-up means "no", never a lost
        event; a database that cannot say raises LookupFailed (the event is not
        acknowledged, and read again when Slack sends it again).
        """
        key = (channel, thread_ts)
        if self._threads.get(key):
            return True
        if await self._has_history(ChatRef(PLATFORM, f"{team}:{channel}", thread_ts)):
            self._threads.set(key, True)
            return True
        if self._threads.get(key) is False or time.monotonic() < self._replies_paused_until:
            return False
        try:
            async with asyncio.timeout_at(deadline):
                response = await self.client.conversations_replies(
                    channel=channel, ts=thread_ts, limit=200, include_all_metadata=True
                )
        except SlackApiError as err:
            wait = retry_after(err)
            if wait is not None:  # rate limited: leave the method alone for that long
                pause = min(wait, _MAX_REPLIES_PAUSE)
                self._replies_paused_until = time.monotonic() + pause
            log.warning("could not read a thread's replies: %s", error_name(err) or "error")
            return False
        except (aiohttp.ClientError, TimeoutError) as err:
            log.warning("could not read a thread's replies: %s", type(err).__name__)
            return False
        messages = response.get("messages") or []
        member = any(
            _takes_part(m, thread_ts, bot_user_id, bot_id)
            for m in messages
            if isinstance(m, Mapping)
        )
        self._threads.set(key, member)
        return member

    async def _has_history(self, chat: ChatRef) -> bool:
        """Whether the bot has talked in `chat` (the database says); LookupFailed when the
        database could not say."""
        try:
            return await self.core.service.has_history(chat)
        except ShuttingDown:
            raise
        except Exception as err:
            raise LookupFailed(type(err).__name__) from err

    async def _user_names(self, user_ids: list[str], deadline: float) -> dict[str, str]:
        """The display names of these people that are known or Slack gives by `deadline`."""
        found = await asyncio.gather(*(self._user_name(u, deadline) for u in user_ids))
        return {u: name for u, name in zip(user_ids, found, strict=True) if name is not None}

    async def _user_name(self, user_id: str, deadline: float) -> str | None:
        """A person's display name (users.info, remembered); None when Slack could not say
        now (too slow, rate limited, unreachable: asked again next time)."""
        cached = self._names.get(user_id)
        if cached is not None:
            return cached
        name = user_id
        try:
            async with asyncio.timeout_at(deadline):
                response = await self.client.users_info(user=user_id)
            user = response.get("user") or {}
            self.admins.saw_user(user)  # the channel admin check need not ask again
            profile = user.get("profile") or {}
            name = str(
                profile.get("display_name") or user.get("real_name") or user.get("name") or name
            )
        except SlackApiError as err:
            log.debug("users.info failed: %s", error_name(err) or "error")
            status = err.response.status_code if err.response is not None else 0
            if status == 429 or status >= 500:
                return None
            # Slack's answer (user_not_found, missing_scope): the id it is.
        except (aiohttp.ClientError, TimeoutError) as err:
            log.debug("users.info failed: %s", type(err).__name__)
            return None
        if len(self._names) > _THREAD_CACHE_SIZE:
            self._names.clear()
        self._names[user_id] = name
        return name

    async def _file_info(self, file_id: str) -> Mapping[str, Any]:
        """A file's object from files.info (429 and 5xx retried); Slack's refusals as
        relaybot's errors (`_file_info_failed`), its silence as UpstreamDown."""
        try:
            response = await Caller(self.sink_options)(self.client.files_info, file=file_id)
        except SlackApiError as err:
            failed = _file_info_failed(err)
            log.warning("slack files.info failed: %s", failed)
            raise failed from None
        except (aiohttp.ClientError, TimeoutError) as err:
            log.warning("slack files.info failed: %s", type(err).__name__)
            raise slack_down(f"slack files.info: {type(err).__name__}") from None
        file = response.get("file")
        return file if isinstance(file, Mapping) else {}
