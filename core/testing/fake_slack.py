"""A fake Slack Web API (and Socket Mode) over real HTTP, plus signed event request builders.

Start it with `async with FakeSlack() as slack:` and point `AsyncWebClient(base_url=slack.api_url)`
(or SLACK_API_URL) at it. What a person would see in a channel or thread is in
`slack.visible(channel, thread_ts)`: the final text of each message after updates and streams.

Native streams behave as public reports of real Slack say (see `bots.slack.sink.SlackSink`): an
open stream refuses chat.update (`streaming_state_conflict`) and chat.delete
(`cant_delete_message`); one that is not open refuses chat.appendStream and chat.stopStream
(`message_not_in_streaming_state`); `expire_stream` ends one as Slack does after ~5 minutes.
Message metadata is kept and read back by conversations.replies/history only with
`include_all_metadata`, as Slack does. chat.update refuses a `text` over 4,000 bytes
(`msg_too_long`), as Slack does though it posts up to 40,000 characters. `fail_next` injects
Slack errors and 429s (from the N-th call on, with `after`);
`limit_rate` enforces a rate tier on a method; `after_next` runs an action after a call is
carried out but before its answer goes back (a caller killed in that instant).
`keep_out` makes a conversation one the bot cannot post in (`not_in_channel`, or
`channel_not_found` for other people's DMs), as Slack answers there. Slash commands built
with `response_url=slack.response_url` have what is posted to their response URL recorded in
`slack.command_responses`. `add_remote_file` makes a remote file as Slack shows one (url_private
on another host). users.info answers the people `add_user` made (workspace admins
and owners flagged as Slack flags them), conversations.info the conversations `add_channel`
made (with their creator); others are `user_not_found` and `channel_not_found`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import mimetypes
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import WSMsgType, web

from core.testing.server import FakeServer, RecordedRequest, SlidingWindow

Handler = Callable[[web.Request, dict[str, Any]], Awaitable[web.Response]]

# chat.update refuses a longer `text` (msg_too_long), markdown block or not, though
# chat.postMessage takes up to 40,000 characters (public reports measured it live:
# pymc-labs/daimon#106, gitlab-org/gitlab!258898, seratch/ChatGPT-in-Slack#102).
UPDATE_TEXT_BYTES = 4_000

LOGIN_PAGE = (
    "<!DOCTYPE html><html><head><title>Slack</title></head>"
    "<body><h1>Sign in to your workspace</h1></body></html>"
)


@dataclass(slots=True)
class FakeMessage:
    """One message in the fake workspace, as it currently stands."""

    channel: str
    ts: str
    thread_ts: str | None
    text: str = ""
    markdown: str | None = None
    blocks: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    user: str = ""
    bot_id: str | None = None
    streaming: bool = False
    deleted: bool = False
    edits: int = 0
    # Message metadata ({"event_type": ..., "event_payload": {...}}), as posted or updated.
    metadata: dict[str, Any] | None = None
    # Legacy attachments: a forwarded message's (is_share), an integration's alert.
    attachments: list[dict[str, Any]] = field(default_factory=list)
    subtype: str | None = None

    @property
    def visible_text(self) -> str:
        """What a person reads: a markdown block or markdown_text if present, else `text`."""
        for block in self.blocks:
            if block.get("type") == "markdown":
                return str(block.get("text", ""))
        if self.markdown is not None:
            return self.markdown
        return self.text


@dataclass(slots=True)
class FakeFile:
    """A file the fake serves at a private URL that needs the bot token."""

    id: str
    name: str
    mimetype: str
    data: bytes
    filetype: str = ""
    require_token: bool = True
    redirect_host: str | None = None
    # A remote file's (see `FakeSlack.add_remote_file`): Slack keeps only this URL.
    external_url: str | None = None
    external_type: str = "app"

    def to_event(self, base: str) -> dict[str, Any]:
        """The file object as it appears in a message event (and files.info gives it)."""
        if self.external_url is not None:
            # As files.remote.info shows one: url_private is the external URL itself.
            return {
                "id": self.id,
                "name": self.name,
                "title": self.name,
                "mimetype": self.mimetype,
                "filetype": self.filetype,
                "size": 0,
                "mode": "external",
                "is_external": True,
                "external_type": self.external_type,
                "external_id": self.id.lower(),
                "external_url": self.external_url,
                "url_private": self.external_url,
                "file_access": "visible",
            }
        url = f"{base}/files-pri/T0-{self.id}/{self.name}"
        return {
            "id": self.id,
            "name": self.name,
            "title": self.name,
            "mimetype": self.mimetype,
            "filetype": self.filetype or self.name.rpartition(".")[2],
            "size": len(self.data),
            "url_private": url,
            "url_private_download": url + "?download=1",
            "mode": "hosted",
        }


@dataclass(slots=True)
class _Failure:
    method: str
    error: str
    status: int
    retry_after: int | None
    times: int
    after: int = 0  # calls of `method` let through before the first one refused


@dataclass(slots=True)
class SocketEnvelope:
    """One envelope sent over the fake Socket Mode connection, and the ack that came back."""

    envelope_id: str
    payload: dict[str, Any]
    ack: dict[str, Any] | None = None


class FakeSlack(FakeServer):
    """Slack's Web API surface relaybot uses, with Slack-shaped errors and 429s."""

    def __init__(
        self,
        *,
        bot_token: str = "xoxb-test-bot-token",
        app_token: str = "xapp-test-app-token",
        team_id: str = "T0TEAM",
        bot_user_id: str = "U0BOT",
        bot_id: str = "B0BOT",
    ) -> None:
        super().__init__()
        self.bot_token = bot_token
        self.app_token = app_token
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        # False makes chat.startStream answer unknown_method, as a workspace without it would.
        self.native_streaming = True
        self.messages: list[FakeMessage] = []
        self.files: dict[str, FakeFile] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.channels: dict[str, dict[str, Any]] = {}
        self.statuses: list[dict[str, Any]] = []
        self.suggested_prompts: list[dict[str, Any]] = []
        self.titles: list[dict[str, Any]] = []
        # (monotonic time, method, ok) for every Web API call: lets tests check back-off.
        self.timeline: list[tuple[float, str, bool]] = []
        # (method, arguments) for every authorised Web API call: query, form and JSON merged.
        self.arguments: list[tuple[str, dict[str, Any]]] = []
        self.uploads: dict[str, bytes] = {}
        self.envelopes: list[SocketEnvelope] = []
        # What was posted to slash commands' response_url (JSON bodies), oldest first.
        self.command_responses: list[dict[str, Any]] = []
        # Conversations the bot cannot post in, and the error Slack answers there.
        self.kept_out: dict[str, str] = {}
        self._pending_uploads: dict[str, dict[str, Any]] = {}
        self._failures: list[_Failure] = []
        self._after: dict[str, Callable[[], None]] = {}
        self._rates: dict[str, SlidingWindow] = {}  # limit_rate's, per method
        self._lock = threading.Lock()
        self._ts = itertools.count(1)
        self._sockets: list[web.WebSocketResponse] = []
        self._socket_connected: asyncio.Event | None = None
        self._acked: asyncio.Condition | None = None
        self._download_failures: list[int] = []  # statuses the next downloads answer

    # -- knobs -------------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        """The Web API base URL (ends with a slash, as slack_sdk expects)."""
        return self.url + "/api/"

    @property
    def response_url(self) -> str:
        """A slash command's response_url on this fake (see `command_responses`)."""
        return self.url + "/commands/response"

    def keep_out(self, channel: str, error: str = "not_in_channel") -> None:
        """Make posting in `channel` fail as Slack does where the bot is not a member
        (`not_in_channel`) or cannot see the conversation at all (`channel_not_found`)."""
        self.kept_out[channel] = error

    def fail_next(
        self,
        method: str,
        error: str = "ratelimited",
        *,
        status: int | None = None,
        retry_after: int | None = None,
        times: int = 1,
        after: int = 0,
    ) -> None:
        """Answer the next `times` calls of `method` with {"ok": false, "error": error}; with
        `after`, the `after` calls before them are carried out (so the (after+1)-th refused).

        With `retry_after` the answer is HTTP 429 with a Retry-After header, as Slack sends.
        """
        code = status if status is not None else (429 if retry_after is not None else 200)
        with self._lock:
            self._failures.append(_Failure(method, error, code, retry_after, times, after))

    def fail_downloads(self, status: int = 503, *, times: int = 1) -> None:
        """Answer the next `times` downloads of a hosted file with HTTP `status` (a file
        server that is down: 5xx, or busy: 429)."""
        with self._lock:
            self._download_failures.extend([status] * times)

    def add_file(
        self,
        data: bytes,
        *,
        name: str,
        mimetype: str,
        filetype: str = "",
        require_token: bool = True,
        redirect_host: str | None = None,
    ) -> dict[str, Any]:
        """Host a file; returns the file object to put in a message event.

        `require_token=False` stands for a bot without files:read: the URL then always answers
        the HTML login page. `redirect_host` makes the URL redirect (302) to that host first.
        """
        file_id = "F" + uuid.uuid4().hex[:10].upper()
        item = FakeFile(file_id, name, mimetype, data, filetype, require_token, redirect_host)
        self.files[file_id] = item
        event = item.to_event(self.url)
        if redirect_host is not None:
            event["url_private"] = f"{self.url}/redirect/{file_id}"
            event["url_private_download"] = event["url_private"]
        return event

    def add_remote_file(
        self,
        data: bytes,
        *,
        name: str,
        mimetype: str = "application/vnd.slack-remote",
        filetype: str = "remote",
        external_type: str = "app",
    ) -> dict[str, Any]:
        """A remote file (files.remote.add by an app, then shared); returns its file object.

        Slack holds only its name and external URL: url_private is that URL, on the app's
        host, and the size is 0. That host is `localhost` here (the API being 127.0.0.1),
        and answers `data` to anyone, as an app's server would (`downloads` records it).
        A storage service's file (`external_type="gdrive"`) keeps its own `mimetype` and
        `filetype`.
        """
        file_id = "F" + uuid.uuid4().hex[:10].upper()
        url = f"http://localhost:{self.port}/remote/{file_id}/{name}"
        item = FakeFile(
            file_id, name, mimetype, data, filetype, external_url=url, external_type=external_type
        )
        self.files[file_id] = item
        return item.to_event(self.url)

    def add_user(
        self,
        user_id: str,
        name: str,
        real_name: str = "",
        *,
        is_admin: bool = False,
        is_owner: bool = False,
        is_primary_owner: bool = False,
    ) -> None:
        """Make users.info know a user; a workspace admin, owner or primary owner is flagged
        so (Slack flags an owner as an admin too)."""
        self.users[user_id] = {
            "id": user_id,
            "team_id": self.team_id,
            "name": name,
            "real_name": real_name or name,
            "is_bot": False,
            "is_admin": is_admin or is_owner or is_primary_owner,
            "is_owner": is_owner or is_primary_owner,
            "is_primary_owner": is_primary_owner,
            "profile": {"display_name": name, "real_name": real_name or name},
        }

    def add_channel(
        self, channel_id: str, *, creator: str, name: str = "general", kind: str = "channel"
    ) -> None:
        """Make conversations.info know a conversation: a public `channel`, a private
        `group`, a group DM (`mpim`) or a DM (`im`), and who created it."""
        info: dict[str, Any] = {
            "id": channel_id,
            "created": 1_700_000_000,
            "is_channel": kind == "channel",
            "is_group": kind == "group",
            "is_private": kind in ("group", "mpim", "im"),
            "is_mpim": kind == "mpim",
            "is_im": kind == "im",
            "is_archived": False,
        }
        if kind == "im":
            info["user"] = creator
        else:
            info.update(name=name, creator=creator, is_member=True)
        self.channels[channel_id] = info

    def expire_stream(self, ts: str) -> None:
        """End a native stream as Slack does by itself, about 5 minutes after it started."""
        for message in self.messages:
            if message.ts == ts:
                message.streaming = False

    def add_person_message(
        self,
        channel: str,
        ts: str,
        text: str,
        *,
        user: str = "U0ALICE",
        thread_ts: str | None = None,
        files: list[dict[str, Any]] | None = None,
    ) -> FakeMessage:
        """Put a person's message into the conversation (what conversations.* read back);
        `files` as `add_file` returns them."""
        message = FakeMessage(
            channel=channel, ts=ts, thread_ts=thread_ts, text=text, user=user, files=files or []
        )
        self.messages.append(message)
        return message

    def add_integration_message(
        self,
        channel: str,
        ts: str,
        *,
        text: str = "",
        attachments: list[dict[str, Any]] | None = None,
        blocks: list[dict[str, Any]] | None = None,
        bot_id: str = "B0INTEGRATION",
    ) -> FakeMessage:
        """Put another app's message (subtype bot_message: an alert from a monitoring tool,
        often with empty `text` and its content in legacy `attachments` or `blocks`)."""
        message = FakeMessage(
            channel=channel,
            ts=ts,
            thread_ts=None,
            text=text,
            blocks=blocks or [],
            bot_id=bot_id,
            attachments=attachments or [],
            subtype="bot_message",
        )
        self.messages.append(message)
        return message

    def visible(self, channel: str, thread_ts: str | None = None) -> list[FakeMessage]:
        """Messages a person sees in a channel (top level) or in one thread, oldest first."""
        return [
            m
            for m in self.messages
            if m.channel == channel and not m.deleted and m.thread_ts == thread_ts
        ]

    def visible_texts(self, channel: str, thread_ts: str | None = None) -> list[str]:
        """The text of each visible message in a channel or thread."""
        return [m.visible_text for m in self.visible(channel, thread_ts)]

    def bot_messages(self) -> list[FakeMessage]:
        """Every message the bot posted and did not delete."""
        return [m for m in self.messages if not m.deleted]

    def api_calls(self, method: str) -> list[RecordedRequest]:
        """Recorded calls of one Web API method."""
        return self.calls("/api/" + method)

    def api_arguments(self, method: str) -> list[dict[str, Any]]:
        """The arguments of every call of one Web API method, however they were sent."""
        return [args for name, args in self.arguments if name == method]

    def downloads(self) -> list[RecordedRequest]:
        """File downloads seen so far (with or without a token): of private files, and of
        remote files' external URLs."""
        paths = ("/files-pri/", "/redirect/", "/remote/")
        return [r for r in self.requests if r.path.startswith(paths)]

    async def wait_until(self, predicate: Callable[[], bool], within: float = 10) -> None:
        """Wait until `predicate()` holds, re-checking after each request the fake receives."""
        assert self._changed is not None
        async with asyncio.timeout(within):
            async with self._changed:
                await self._changed.wait_for(predicate)

    # -- routing -----------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        """Web API methods, the upload URL, private file URLs and the Socket Mode socket."""
        api: dict[str, Handler] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.delete": self._delete,
            "chat.startStream": self._start_stream,
            "chat.appendStream": self._append_stream,
            "chat.stopStream": self._stop_stream,
            "files.info": self._files_info,
            "files.getUploadURLExternal": self._get_upload_url,
            "files.completeUploadExternal": self._complete_upload,
            "assistant.threads.setStatus": self._set_status,
            "assistant.threads.setSuggestedPrompts": self._set_prompts,
            "assistant.threads.setTitle": self._set_title,
            "conversations.replies": self._replies,
            "conversations.history": self._history,
            "users.info": self._users_info,
            "conversations.info": self._conversations_info,
            "apps.connections.open": self._connections_open,
        }
        for name, handler in api.items():
            app.router.add_route("*", f"/api/{name}", self._api(name, handler))
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_get("/files-pri/{team_file}/{name}", self._download)
        app.router.add_get("/redirect/{file_id}", self._redirect)
        app.router.add_get("/remote/{file_id}/{name}", self._remote)
        app.router.add_get("/socket", self._socket)
        app.router.add_post("/commands/response", self._command_response)

    def _api(self, name: str, handler: Handler) -> Callable[[web.Request], Awaitable[Any]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            rec: RecordedRequest = self.recorded(request)
            args: dict[str, Any] = dict(request.query)
            args.update({k: v for k, v in rec.form.items() if isinstance(v, str)})
            if isinstance(rec.json, dict):
                args.update(rec.json)
            expected = self.app_token if name == "apps.connections.open" else self.bot_token
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            token = token or str(args.get("token", ""))
            if token != expected:
                # A bot token given as the app token is a token of the wrong type to Slack,
                # not an unknown one.
                wrong_type = name == "apps.connections.open" and token == self.bot_token
                error = "not_allowed_token_type" if wrong_type else "invalid_auth"
                return self._record_result(name, _slack_error(error))
            self.arguments.append((name, dict(args)))
            with self._lock:
                window = self._rates.get(name)
                limited = window.admit() if window is not None else None
            if limited is not None:
                return self._record_result(
                    name,
                    _slack_error("ratelimited", status=429, headers={"Retry-After": str(limited)}),
                )
            failure = self._take_failure(name)
            if failure is not None:
                headers = {}
                if failure.retry_after is not None:
                    headers["Retry-After"] = str(failure.retry_after)
                return self._record_result(
                    name, _slack_error(failure.error, status=failure.status, headers=headers)
                )
            response = await handler(request, args)
            with self._lock:
                after = self._after.pop(name, None)
            if after is not None:
                after()
            return self._record_result(name, response)

        return wrapped

    def _record_result(self, name: str, response: web.Response) -> web.Response:
        body = response.body if isinstance(response.body, bytes) else b"{}"
        ok = response.status == 200 and json.loads(body).get("ok") is True
        self.timeline.append((time.monotonic(), name, ok))
        return response

    def limit_rate(self, method: str, calls: int, seconds: float) -> None:
        """Answer 429 with Retry-After, as Slack's rate tiers do, to a call of `method` that
        would make more than `calls` in the last `seconds` (the whole workspace)."""
        with self._lock:
            self._rates[method] = SlidingWindow(calls, seconds)

    def after_next(self, method: str, action: Callable[[], None]) -> None:
        """Run `action` once the next call of `method` has been carried out, before its
        answer goes back: say, kill the caller, so Slack did the work and the caller never
        heard of it. `action` runs on the server's loop and must not block for long."""
        with self._lock:
            self._after[method] = action

    def _take_failure(self, method: str) -> _Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.method == method and failure.after > 0:
                    failure.after -= 1
                    return None
                if failure.method == method and failure.times > 0:
                    failure.times -= 1
                    if failure.times == 0:
                        self._failures.remove(failure)
                    return failure
        return None

    def _next_ts(self) -> str:
        n = next(self._ts)
        return f"{1_800_000_000 + n}.{n:06d}"

    def _find(self, channel: str, ts: str) -> FakeMessage | None:
        return next(
            (m for m in self.messages if m.channel == channel and m.ts == ts and not m.deleted),
            None,
        )

    # -- auth, users -------------------------------------------------------------------
    async def _auth_test(self, request: web.Request, args: dict[str, Any]) -> web.Response:
        return _ok(
            url="https://fake.slack.com/",
            team="Fake Team",
            user="relaybot",
            team_id=self.team_id,
            user_id=self.bot_user_id,
            bot_id=self.bot_id,
            is_enterprise_install=False,
        )

    async def _users_info(self, request: web.Request, args: dict[str, Any]) -> web.Response:
        user = self.users.get(str(args.get("user", "")))
        if user is None:
            return _slack_error("user_not_found")
        return _ok(user=user)

    async def _conversations_info(
        self, request: web.Request, args: dict[str, Any]
    ) -> web.Response:
        channel = self.channels.get(str(args.get("channel", "")))
        if channel is None:
            return _slack_error("channel_not_found")
        return _ok(channel=channel)

    # -- messages ----------------------------------------------------------------------
    async def _post_message(self, request: web.Request, args: dict[str, Any]) -> web.Response:
        channel = str(args.get("channel", ""))
        if not channel:
            return _slack_error("channel_not_found")
        if channel in self.kept_out:
            return _slack_error(self.kept_out[channel])
        content = _content(args)
        if isinstance(content, str):
            return _slack_error(content)
        text, markdown, blocks = content
        metadata = _metadata(args)
        if isinstance(metadata, str):
            return _slack_error(metadata)
        message = FakeMessage(
            channel=channel,
            ts=self._next_ts(),
            thread_ts=args.get("thread_ts") or None,
            text=text,
            markdown=markdown,
            blocks=blocks,
            user=self.bot_user_id,
            bot_id=self.bot_id,
            metadata=metadata,
        )
        self.messages.append(message)
        return _ok(channel=channel, ts=message.ts, message={"text": text, "ts": message.ts})

    async def _update(self, request: web.Request, args: dict[str, Any]) -> web.Response:
        message = self._find(str(args.get("channel", "")), str(args.get("ts", "")))
        if message is None:
            return _slack_error("message_not_found")
        if message.streaming:
            return _slack_error("streaming_state_conflict")
        content = _content(args)
        if isinstance(content, str):
            return _slack_error(content)
        if len(content[0].encode()) > UPDATE_TEXT_BYTES:
            return _slack_error("msg_too_long")
        metadata = _metadata(args)
        if isinstance(metadata, str):
            return _slack_error(metadata)
        message.text, message.markdown, message.blocks = content
        if metadata is not None:
            message.metadata = metadata
        message.edits += 1
        return _ok(channel=message.channel, ts=message.ts, text=message.text)

    async def _delete(self, request: web.Request, args: dict[str, Any]) -> web.Response:
        message = self._find(str(args.get("channel", "")), str(args.get("ts", "")))
        if message is None:
            return _slack_error("message_not_found")
        if message.streaming:
            return _slack_error("cant_delete_message")
        message.deleted = True
        return _ok(channel=message.channel, ts=message.ts)

    # -- native streaming --------------------------------------------------------------
    async def _start_stream(self, request: web.Request, args: dict[str, Any]) -> web.Response:
        if not self.native_streaming:
            return _slack_error("unknown_method")
        channel = str(args.get("channel", ""))
        thread_ts = args.get("thread_ts")
        if not channel or not thread_ts:
            return _slack_error("invalid_arguments")
        if channel in self.kept_out:
            return _slack_error(self.kept_out[channel])
        # Slack needs to know who the streamed answer is for outside DMs.
        if not channel.startswith("D") and not (
            args.get("recipient_user_id") and args.get("recipient_team_id")
        ):
            return _slack_error("missing_recipient_user_id")
        message = FakeMessage(
            channel=channel,
            ts=self._next_ts(),
            thread_ts=str(thread_ts),
            markdown=_stream_text(args),
            user=self.bot_user_id,
            bot_id=self.bot_id,
            streaming=True,
        )
        self.messages.append(message)
        return _ok(channel=channel, ts=message.ts)

    async def _append_stream(self, request: web.Request, args: dict[str, Any]) -> web.Response:
        message = self._find(str(args.get("channel", "")), str(args.get("ts", "")))
        if message is None:
            return _slack_error("message_not_found")
        if not message.streaming:
            return _slack_error("message_not_in_streaming_state")
        piece = _stream_text(args)
        if len(piece) > 12_000:
            return _slack_error("msg_too_long")
        message.markdown = (message.markdown or "") + piece
        message.edits += 1
        return _ok(channel=message.channel, ts=message.ts)

    async def _stop_stream(self, request: web.Request, args: dict[str, Any]) -> web.Response:
        message = self._find(str(args.get("channel", "")), str(args.get("ts", "")))
        if message is None:
            return _slack_error("message_not_found")
        if not message.streaming:
            return _slack_error("message_not_in_streaming_state")
        metadata = _metadata(args)
        if isinstance(metadata, str):
            return _slack_error(metadata)
        message.markdown = (message.markdown or "") + _stream_text(args)
        message.streaming = False
        if metadata is not None:
            message.metadata = metadata
        return _ok(channel=message.channel, ts=message.ts, message={"ts": message.ts})

    # -- files -------------------------------------------------------------------------
    async def _files_info(self, request: web.Request, args: dict[str, Any]) -> web.Response:
        item = self.files.get(str(args.get("file", "")))
        if item is None:
            return _slack_error("file_not_found")
        return _ok(file=item.to_event(self.url))

    async def _get_upload_url(self, request: web.Request, args: dict[str, Any]) -> web.Response:
        filename = str(args.get("filename", ""))
        length = int(args.get("length", 0) or 0)
        if not filename or length <= 0:
            return _slack_error("invalid_arguments")
        file_id = "F" + uuid.uuid4().hex[:10].upper()
        self._pending_uploads[file_id] = {"filename": filename, "length": length}
        return _ok(upload_url=f"{self.url}/upload/{file_id}", file_id=file_id)

    async def _upload(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        pending = self._pending_uploads.get(file_id)
        body: bytes = self.recorded(request).body
        if pending is None:
            return web.Response(status=404, text="not found")
        if len(body) != pending["length"]:
            return web.Response(status=400, text="length mismatch")
        self.uploads[file_id] = body
        return web.Response(text=f"OK - {len(body)}")

    async def _complete_upload(self, request: web.Request, args: dict[str, Any]) -> web.Response:
        try:
            files = json.loads(str(args.get("files", "[]")))
        except ValueError:
            return _slack_error("invalid_arguments")
        channel = args.get("channel_id")
        if channel and str(channel) in self.kept_out:
            return _slack_error(self.kept_out[str(channel)])
        done: list[dict[str, Any]] = []
        for item in files:
            file_id = item.get("id")
            pending = self._pending_uploads.pop(file_id, None)
            if pending is None or file_id not in self.uploads:
                return _slack_error("file_not_found")
            done.append(
                {"id": file_id, "name": pending["filename"], "title": item.get("title", "")}
            )
            # Hosted from now on, as Slack does: conversations.* and files.info give the
            # whole file object (mimetype, url_private), and its URL serves the bytes.
            mimetype = mimetypes.guess_type(pending["filename"])[0] or "application/octet-stream"
            self.files[file_id] = FakeFile(
                file_id, pending["filename"], mimetype, self.uploads[file_id]
            )
        if channel:
            message = FakeMessage(
                channel=str(channel),
                ts=self._next_ts(),
                thread_ts=args.get("thread_ts") or None,
                text=str(args.get("initial_comment", "")),
                files=done,
                user=self.bot_user_id,
                bot_id=self.bot_id,
            )
            self.messages.append(message)
        return _ok(files=done)

    async def _download(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            failing = self._download_failures.pop(0) if self._download_failures else None
        if failing is not None:
            return web.Response(status=failing, text="unavailable")
        file_id = request.match_info["team_file"].rpartition("-")[2]
        item = self.files.get(file_id)
        if item is None:
            return web.Response(status=404, text="not found")
        auth = request.headers.get("Authorization", "")
        if item.require_token and auth == f"Bearer {self.bot_token}":
            return web.Response(body=item.data, content_type=item.mimetype)
        # Slack answers a browser login page, with status 200, to requests it cannot authorise.
        return web.Response(text=LOGIN_PAGE, content_type="text/html")

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        item = self.files.get(request.match_info["file_id"])
        if item is None or item.redirect_host is None:
            return web.Response(status=404, text="not found")
        target = f"http://{item.redirect_host}:{self.port}/files-pri/T0-{item.id}/{item.name}"
        raise web.HTTPFound(target)

    async def _remote(self, request: web.Request) -> web.StreamResponse:
        """A remote file's external URL: the app's own server, which asks for no token."""
        item = self.files.get(request.match_info["file_id"])
        if item is None or item.external_url is None:
            return web.Response(status=404, text="not found")
        return web.Response(body=item.data, content_type=item.mimetype)

    async def _command_response(self, request: web.Request) -> web.Response:
        """A message sent to a slash command's response_url (JSON), as Slack takes it."""
        body = self.recorded(request).json
        if not isinstance(body, dict):
            return web.Response(status=400, text="invalid_payload")
        self.command_responses.append(body)
        return web.Response(text="ok")

    # -- assistant threads -------------------------------------------------------------
    async def _set_status(self, request: web.Request, args: dict[str, Any]) -> web.Response:
        self.statuses.append(args)
        return _ok()

    async def _set_prompts(self, request: web.Request, args: dict[str, Any]) -> web.Response:
        self.suggested_prompts.append(args)
        return _ok()

    async def _set_title(self, request: web.Request, args: dict[str, Any]) -> web.Response:
        self.titles.append(args)
        return _ok()

    async def _replies(self, request: web.Request, args: dict[str, Any]) -> web.Response:
        """A thread: its parent first, then the replies oldest first (the page `limit`,
        `oldest`, `latest`, `inclusive` and `cursor` select), as conversations.replies."""
        channel, ts = str(args.get("channel", "")), str(args.get("ts", ""))
        if not channel or not ts:
            return _slack_error("invalid_arguments")
        live = [m for m in self.messages if m.channel == channel and not m.deleted]
        parent = [m for m in live if m.ts == ts]
        replies = [m for m in live if m.thread_ts == ts and m.ts != ts]
        replies = _in_window(sorted(replies, key=_ts_key), args)
        page, more, cursor = _page(replies, args, default_limit=1000)
        if isinstance(page, str):
            return _slack_error(page)
        found = [self._read_back(m, args) for m in [*parent, *page]]
        return _ok(messages=found, has_more=more, response_metadata={"next_cursor": cursor})

    async def _history(self, request: web.Request, args: dict[str, Any]) -> web.Response:
        """A conversation's top-level messages, newest first, as conversations.history."""
        channel = str(args.get("channel", ""))
        if not channel:
            return _slack_error("channel_not_found")
        top = [
            m
            for m in self.messages
            if m.channel == channel and not m.deleted and m.thread_ts in (None, m.ts)
        ]
        top = _in_window(sorted(top, key=_ts_key, reverse=True), args)
        page, more, cursor = _page(top, args, default_limit=100)
        if isinstance(page, str):
            return _slack_error(page)
        found = [self._read_back(m, args) for m in page]
        return _ok(messages=found, has_more=more, response_metadata={"next_cursor": cursor})

    def _file_object(self, file: dict[str, Any]) -> dict[str, Any]:
        hosted = self.files.get(str(file.get("id", "")))
        return hosted.to_event(self.url) if hosted is not None else dict(file)

    def _read_back(self, message: FakeMessage, args: dict[str, Any]) -> dict[str, Any]:
        """A message as conversations.* return it; metadata only with include_all_metadata."""
        found: dict[str, Any] = {"type": "message", "ts": message.ts, "text": message.visible_text}
        if message.user:
            found["user"] = message.user
        if message.subtype:
            found["subtype"] = message.subtype
        if message.blocks:
            found["blocks"] = message.blocks
        if message.attachments:
            found["attachments"] = message.attachments
        if message.thread_ts:
            found["thread_ts"] = message.thread_ts
        if message.bot_id:
            found["bot_id"] = message.bot_id
        if message.files:
            # As Slack: each file object whole (a file the fake hosts as it stands now).
            found["files"] = [self._file_object(f) for f in message.files]
            found["upload"] = True
        if message.metadata is not None and _true(args.get("include_all_metadata")):
            found["metadata"] = message.metadata
        return found

    # -- socket mode -------------------------------------------------------------------
    async def _connections_open(self, request: web.Request, args: dict[str, Any]) -> web.Response:
        return _ok(url=f"ws://127.0.0.1:{self.port}/socket")

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        self._sockets.append(ws)
        if self._acked is None:
            self._acked = asyncio.Condition()
        await ws.send_json(
            {"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A0APP"}}
        )
        if self._socket_connected is None:
            self._socket_connected = asyncio.Event()
        self._socket_connected.set()
        async for frame in ws:
            if frame.type is not WSMsgType.TEXT:
                continue
            data = json.loads(frame.data)
            for envelope in self.envelopes:
                if envelope.envelope_id == data.get("envelope_id"):
                    envelope.ack = data
            async with self._acked:
                self._acked.notify_all()
        self._sockets.remove(ws)
        return ws

    async def wait_socket_connected(self, within: float = 10) -> None:
        """Wait until a Socket Mode client has connected."""
        if self._socket_connected is None:
            self._socket_connected = asyncio.Event()
        async with asyncio.timeout(within):
            await self._socket_connected.wait()

    async def send_envelope(
        self, body: dict[str, Any], *, kind: str = "events_api", retry_attempt: int = 0
    ) -> SocketEnvelope:
        """Push an event over the socket, as Slack does in Socket Mode; returns the envelope."""
        envelope = SocketEnvelope(uuid.uuid4().hex, body)
        self.envelopes.append(envelope)
        frame = {
            "envelope_id": envelope.envelope_id,
            "type": kind,
            "payload": body,
            "accept_response_payload": kind != "events_api",
            "retry_attempt": retry_attempt,
            "retry_reason": "timeout" if retry_attempt else "",
        }
        for ws in list(self._sockets):
            await ws.send_json(frame)
        return envelope

    async def wait_ack(self, envelope: SocketEnvelope, within: float = 10) -> dict[str, Any]:
        """Wait until the client acknowledged `envelope`."""
        if self._acked is None:
            self._acked = asyncio.Condition()
        condition = self._acked
        async with asyncio.timeout(within):
            async with condition:
                await condition.wait_for(lambda: envelope.ack is not None)
        assert envelope.ack is not None
        return envelope.ack

    async def stop(self) -> None:
        """Close open sockets, then stop the server."""
        for ws in list(self._sockets):
            await ws.close()
        await super().stop()


# -- helpers for the fake's answers --------------------------------------------------------
def _ok(**fields: Any) -> web.Response:
    return web.json_response({"ok": True, **fields})


def _slack_error(
    error: str, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"ok": False, "error": error}, status=status, headers=headers)


def _blocks(value: Any) -> list[dict[str, Any]] | None:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, list):
        return None
    return [b for b in value if isinstance(b, dict)]


def _content(args: dict[str, Any]) -> tuple[str, str | None, list[dict[str, Any]]] | str:
    """(text, markdown_text, blocks) of a post or update, or Slack's error name."""
    text = str(args.get("text") or "")
    markdown = args.get("markdown_text")
    blocks = _blocks(args.get("blocks"))
    if blocks is None:
        return "invalid_blocks"
    if markdown is not None and (text or blocks):
        return "markdown_text_conflict"
    if not text and not blocks and not markdown:
        return "no_text"
    if len(text) > 40_000:
        return "msg_too_long"
    if markdown is not None and len(str(markdown)) > 12_000:
        return "msg_too_long"
    markdown_chars = sum(
        len(str(b.get("text", ""))) for b in blocks if b.get("type") == "markdown"
    )
    if markdown_chars > 12_000:
        return "invalid_blocks"
    return text, (str(markdown) if markdown is not None else None), blocks


def _true(value: Any) -> bool:
    """A boolean argument as Slack reads it (slack_sdk sends 1/0 in query strings)."""
    return value is True or str(value).lower() in ("1", "true")


def _metadata(args: dict[str, Any]) -> dict[str, Any] | str | None:
    """The `metadata` of a post, update or stopStream (None when absent), or Slack's error."""
    value = args.get("metadata")
    if value in (None, ""):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return "invalid_metadata_format"
    if not isinstance(value, dict):
        return "invalid_metadata_format"
    if not isinstance(value.get("event_type"), str) or not isinstance(
        value.get("event_payload"), dict
    ):
        return "invalid_metadata_schema"
    return {"event_type": value["event_type"], "event_payload": value["event_payload"]}


def _ts_pair(ts: str) -> tuple[int, int]:
    seconds, _, fraction = ts.partition(".")
    return int(seconds or 0), int(fraction.ljust(6, "0") or 0)


def _ts_key(message: FakeMessage) -> tuple[int, int]:
    return _ts_pair(message.ts)


def _in_window(messages: list[FakeMessage], args: dict[str, Any]) -> list[FakeMessage]:
    """Those after `oldest` and before `latest` (either end included with `inclusive`)."""
    inclusive = _true(args.get("inclusive"))
    kept = messages
    if args.get("oldest"):
        low = _ts_pair(str(args["oldest"]))
        kept = [m for m in kept if _ts_key(m) > low or (inclusive and _ts_key(m) == low)]
    if args.get("latest"):
        high = _ts_pair(str(args["latest"]))
        kept = [m for m in kept if _ts_key(m) < high or (inclusive and _ts_key(m) == high)]
    return kept


def _page(
    messages: list[FakeMessage], args: dict[str, Any], *, default_limit: int
) -> tuple[list[FakeMessage] | str, bool, str]:
    """(this page, has_more, next_cursor) for `limit` and `cursor`, or Slack's error."""
    try:
        limit = int(args.get("limit") or default_limit)
        start = int(str(args.get("cursor") or "page:0").removeprefix("page:"))
    except ValueError:
        return "invalid_cursor", False, ""
    limit = max(1, min(limit, 1000))
    page = messages[start : start + limit]
    more = start + limit < len(messages)
    return page, more, f"page:{start + limit}" if more else ""


def _stream_text(args: dict[str, Any]) -> str:
    """The markdown a start/append/stop call adds: markdown_text or markdown_text chunks."""
    text = str(args.get("markdown_text") or "")
    chunks = args.get("chunks")
    if isinstance(chunks, str):
        try:
            chunks = json.loads(chunks)
        except ValueError:
            chunks = []
    for chunk in chunks or []:
        if isinstance(chunk, dict) and chunk.get("type") == "markdown_text":
            text += str(chunk.get("text", ""))
    return text


# -- signed requests and event payloads ----------------------------------------------------
def sign(secret: str, timestamp: int | str, body: bytes | str) -> str:
    """Slack's v0 signature of a request body."""
    raw = body.encode() if isinstance(body, str) else body
    base = f"v0:{timestamp}:".encode() + raw
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def signed_request(
    secret: str,
    payload: dict[str, Any] | str,
    *,
    timestamp: int | None = None,
    retry_num: int | None = None,
    retry_reason: str = "http_timeout",
    form: bool = False,
) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of an Events API (JSON) or slash command (form) request, correctly signed.

    A string payload is sent as is; with `form=True` a dict is URL-encoded.
    """
    if isinstance(payload, str):
        body = payload.encode()
    elif form:
        body = urlencode(payload).encode()
    else:
        body = json.dumps(payload).encode()
    ts = int(time.time()) if timestamp is None else timestamp
    headers = {
        "Content-Type": "application/x-www-form-urlencoded" if form else "application/json",
        "X-Slack-Request-Timestamp": str(ts),
        "X-Slack-Signature": sign(secret, ts, body),
    }
    if retry_num is not None:
        headers["X-Slack-Retry-Num"] = str(retry_num)
        headers["X-Slack-Retry-Reason"] = retry_reason
    return body, headers


_event_ts = itertools.count(1)


def new_ts() -> str:
    """A fresh, unique Slack message timestamp."""
    n = next(_event_ts)
    return f"{1_700_000_000 + n}.{n:06d}"


def event_callback(
    event: dict[str, Any],
    *,
    team_id: str = "T0TEAM",
    bot_user_id: str = "U0BOT",
    event_id: str | None = None,
) -> dict[str, Any]:
    """The Events API envelope around one event."""
    return {
        "token": "legacy-verification-token",
        "team_id": team_id,
        "api_app_id": "A0APP",
        "event": event,
        "type": "event_callback",
        "event_id": event_id or "Ev" + uuid.uuid4().hex[:10].upper(),
        "event_time": int(time.time()),
        "authorizations": [
            {"enterprise_id": None, "team_id": team_id, "user_id": bot_user_id, "is_bot": True}
        ],
        "is_ext_shared_channel": False,
    }


def message_event(
    *,
    channel: str,
    user: str = "U0ALICE",
    text: str = "",
    ts: str | None = None,
    thread_ts: str | None = None,
    channel_type: str | None = None,
    files: list[dict[str, Any]] | None = None,
    team_id: str = "T0TEAM",
    attachments: list[dict[str, Any]] | None = None,
    blocks: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A person's message in a channel (C…), private channel (G…) or DM (D…); a forwarded
    message comes in `attachments` (see `shared_message`)."""
    kind = channel_type or {"D": "im", "G": "group"}.get(channel[:1], "channel")
    event: dict[str, Any] = {
        "type": "message",
        "channel": channel,
        "user": user,
        "text": text,
        "ts": ts or new_ts(),
        "team": team_id,
        "channel_type": kind,
        "event_ts": ts or new_ts(),
    }
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
        event["parent_user_id"] = user
    if files:
        event["subtype"] = "file_share"
        event["files"] = files
        event["upload"] = False
    if attachments:
        event["attachments"] = attachments
    if blocks:
        event["blocks"] = blocks
    return event


def shared_message(
    text: str,
    *,
    author_id: str = "U0BOB",
    author_name: str = "Bob",
    channel_id: str = "C0OPS",
    channel_name: str = "ops",
    ts: str = "1700000000.000100",
) -> dict[str, Any]:
    """The attachment Slack puts in a message that forwards (shares) another message."""
    return {
        "is_msg_unfurl": True,
        "is_share": True,
        "author_id": author_id,
        "author_name": author_name,
        "author_subname": author_name,
        "fallback": f"[{ts}] {author_name}: {text}",
        "text": text,
        "channel_id": channel_id,
        "channel_name": channel_name,
        "channel_team": "T0TEAM",
        "footer": f"Posted in #{channel_name}",
        "ts": ts,
        "from_url": f"https://fake.slack.com/archives/{channel_id}/p{ts.replace('.', '')}",
        "mrkdwn_in": ["text"],
        "color": "D0D0D0",
    }


def app_mention_event(
    *,
    channel: str,
    user: str = "U0ALICE",
    text: str = "",
    ts: str | None = None,
    thread_ts: str | None = None,
    files: list[dict[str, Any]] | None = None,
    team_id: str = "T0TEAM",
    attachments: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The app_mention twin of a message that @-mentions the bot."""
    event = message_event(
        channel=channel,
        user=user,
        text=text,
        ts=ts,
        thread_ts=thread_ts,
        files=files,
        team_id=team_id,
        attachments=attachments,
    )
    event["type"] = "app_mention"
    event.pop("channel_type", None)
    event.pop("subtype", None)
    return event


def bot_message_event(
    *,
    channel: str,
    text: str,
    bot_id: str = "B0OTHER",
    user: str | None = None,
    thread_ts: str | None = None,
) -> dict[str, Any]:
    """A message posted by a bot (another one, or ours when `bot_id`/`user` are ours)."""
    event = message_event(channel=channel, text=text, thread_ts=thread_ts, user=user or "")
    if user is None:
        event.pop("user")
        event["subtype"] = "bot_message"
    event["bot_id"] = bot_id
    event["bot_profile"] = {"id": bot_id, "name": "some bot"}
    return event


def message_changed_event(
    *, channel: str, ts: str, new_text: str, user: str = "U0ALICE"
) -> dict[str, Any]:
    """An edit of an earlier message."""
    return {
        "type": "message",
        "subtype": "message_changed",
        "channel": channel,
        "channel_type": {"D": "im", "G": "group"}.get(channel[:1], "channel"),
        "hidden": True,
        "ts": new_ts(),
        "event_ts": new_ts(),
        "message": {"type": "message", "user": user, "text": new_text, "ts": ts},
        "previous_message": {"type": "message", "user": user, "text": "before", "ts": ts},
    }


def slash_command(
    command: str,
    text: str,
    *,
    channel: str,
    user: str = "U0ALICE",
    team_id: str = "T0TEAM",
    response_url: str = "http://127.0.0.1:9/commands/response",
) -> dict[str, str]:
    """The form fields of a slash command invocation (pass `FakeSlack.response_url` to
    record what is sent back through it)."""
    return {
        "token": "legacy-verification-token",
        "team_id": team_id,
        "team_domain": "fake",
        "channel_id": channel,
        "channel_name": "general",
        "user_id": user,
        "user_name": "alice",
        "command": command,
        "text": text,
        "api_app_id": "A0APP",
        "response_url": response_url,
        "trigger_id": uuid.uuid4().hex,
    }


def assistant_thread_started_event(
    *, channel: str, thread_ts: str, user: str = "U0ALICE"
) -> dict[str, Any]:
    """A person opened a new thread in the assistant side panel."""
    return {
        "type": "assistant_thread_started",
        "assistant_thread": {
            "user_id": user,
            "context": {},
            "channel_id": channel,
            "thread_ts": thread_ts,
        },
        "event_ts": new_ts(),
    }
