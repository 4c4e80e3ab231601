"""The conversation service: one incoming message in, answers out, everything recorded."""

from __future__ import annotations

import base64
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from core.commands import HELP_TEXT, parse_command
from core.config import Settings
from core.db.store import Store, StoredMessage
from core.errors import BadInput, ContextTooLong, RelaybotError
from core.locks import ChatLocks
from core.moderation import WITHHELD_NOTICE, Moderator
from core.openai_client import OpenAIClient, Usage
from core.ports import ReplySink, ReplyStream
from core.tokens import PER_MESSAGE_TOKENS, PER_NAME_TOKENS, context_window, counter_for
from core.trimming import Budget, fit_newest
from core.types import Attachment, AttachmentKind, IncomingMessage, Reply, ReplyKind

log = logging.getLogger("relaybot.service")

AUDIO_EXTENSIONS = ("flac", "mp3", "mp4", "mpeg", "mpga", "m4a", "ogg", "wav", "webm")
AUDIO_MIME_EXTENSIONS = {
    "audio/ogg": "ogg",
    "audio/opus": "ogg",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/mp4": "m4a",
    "audio/x-m4a": "m4a",
    "audio/m4a": "m4a",
    "audio/aac": "m4a",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/webm": "webm",
    "audio/flac": "flac",
    "video/mp4": "mp4",
    "video/webm": "webm",
    "video/mpeg": "mpeg",
}
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def audio_filename(attachment: Attachment) -> str:
    """A file name whose extension the transcription endpoint accepts, or BadInput."""
    stem, _, ext = attachment.filename.rpartition(".")
    ext = ext.lower() if stem else ""
    if ext == "oga" or ext == "opus":
        ext = "ogg"
    if ext not in AUDIO_EXTENSIONS:
        ext = AUDIO_MIME_EXTENSIONS.get(attachment.mime.split(";")[0].strip().lower(), "")
    if not ext:
        raise BadInput(
            f"unsupported audio {attachment.filename!r} ({attachment.mime})",
            user_message=(
                "I can't transcribe that file type. Send audio as "
                + ", ".join(AUDIO_EXTENSIONS)
                + "."
            ),
        )
    return f"{(stem or 'audio').rsplit('/', 1)[-1] or 'audio'}.{ext}"


def speaker_name(name: str) -> str | None:
    """A name the chat API accepts in its `name` field, or None."""
    cleaned = _NAME_UNSAFE.sub("_", name.strip()).strip("_")[:64]
    return cleaned or None


@dataclass(slots=True)
class _Answer:
    text: str = ""
    usage: Usage | None = None


class ConversationService:
    """Handles neutral incoming messages; adapters call `handle` with a reply sink."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        client: OpenAIClient,
        locks: ChatLocks | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.locks = locks or ChatLocks()
        self.moderator = Moderator(client, settings.moderation_model, settings.moderation)
        self._vision = settings.vision_model_names()

    # -- entry point ----------------------------------------------------------------------
    async def handle(self, msg: IncomingMessage, sink: ReplySink) -> bool:
        """Process one message; False when it was a redelivery and nothing was done."""
        started = time.perf_counter()
        # The place in the chat's queue is taken before the first await: arrival order holds.
        ticket = self.locks.reserve(msg.chat.key)
        try:
            event_id = await self.store.record_inbound(
                msg.event_key, msg.chat.key, msg.sender.id
            )
        except BaseException:
            ticket.release()
            raise
        if event_id is None:
            ticket.release()
            log.info("duplicate event dropped", extra={"chat": msg.chat.key})
            return False
        outcome = "done"
        try:
            async with ticket:
                await self._process(msg, sink)
        except RelaybotError as err:
            outcome = "failed"
            log.warning("message failed: %s", type(err).__name__, extra={"chat": msg.chat.key})
            await self._tell(sink, err.user_message, ReplyKind.ERROR)
        except Exception:
            outcome = "failed"
            log.exception("unexpected error handling a message", extra={"chat": msg.chat.key})
            await self._tell(sink, RelaybotError.user_message, ReplyKind.ERROR)
        finally:
            await self.store.finish_inbound(event_id, outcome)
            log.info(
                "handled message",
                extra={
                    "chat": msg.chat.key,
                    "outcome": outcome,
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                },
            )
        return True

    async def _tell(self, sink: ReplySink, text: str, kind: ReplyKind) -> None:
        try:
            await sink.send(Reply(text=text, kind=kind))
        except Exception:
            log.exception("could not deliver a notice")

    # -- routing --------------------------------------------------------------------------
    async def _process(self, msg: IncomingMessage, sink: ReplySink) -> None:
        command = parse_command(msg.text)
        if command is not None:
            await self._command(command[0], command[1], msg, sink)
            return
        audio = self._first(msg, AttachmentKind.AUDIO)
        images = [a for a in msg.attachments if a.kind is AttachmentKind.IMAGE]
        text = msg.text.strip()
        if audio is not None:
            transcript = await self._transcribe(msg, audio, translate=False)
            if not msg.is_direct and self.settings.group_voice_transcript_only:
                await sink.send(Reply(text=transcript, kind=ReplyKind.TRANSCRIPT))
                return
            text = f"{text}\n\n{transcript}".strip() if text else transcript
        if not text and not images:
            if msg.attachments:
                raise BadInput(
                    "unsupported attachment",
                    user_message="I can only read text, voice or audio messages and images.",
                )
            raise BadInput("empty message", user_message="Your message was empty.")
        await self._chat(msg, sink, text, images)

    @staticmethod
    def _first(msg: IncomingMessage, kind: AttachmentKind) -> Attachment | None:
        return next((a for a in msg.attachments if a.kind is kind), None)

    # -- chat -----------------------------------------------------------------------------
    async def _chat(
        self,
        msg: IncomingMessage,
        sink: ReplySink,
        text: str,
        images: list[Attachment],
        *,
        store_user_turn: bool = True,
    ) -> None:
        if len(text) > self.settings.max_input_chars:
            raise BadInput(
                f"input of {len(text)} chars",
                user_message=(
                    f"Your message is {len(text):,} characters long; the limit is "
                    f"{self.settings.max_input_chars:,}. Please send a shorter one."
                ),
            )
        chat = await self.store.chat_settings(msg.chat.key)
        model = chat.model or self.settings.chat_model
        system = chat.system_prompt or self.settings.system_prompt
        counter = counter_for(model)
        if images and not self._supports_vision(model):
            images = []
            if not text:
                raise BadInput(
                    "vision unsupported",
                    user_message=f"The model {model} cannot look at images.",
                )
        stored_text = text or "[image]"
        name = None if msg.is_direct else speaker_name(msg.sender.name or msg.sender.id)
        user_id: int | None = None
        if store_user_turn:
            (user_id,) = await self.store.append_messages(
                msg.chat.key,
                [
                    {
                        "role": "user",
                        "content": stored_text,
                        "name": name,
                        "token_count": counter.count(stored_text),
                        "encoding": counter.encoding_name,
                        "event_key": msg.event_key,
                    }
                ],
            )
        try:
            await self.moderator.check_input(text)
        except RelaybotError:
            if user_id is not None:
                await self.store.set_message_status(user_id, "withheld")
            raise
        window = context_window(model, self.settings.context_tokens)
        budget = Budget(
            window=window,
            reply_tokens=self.settings.reply_tokens,
            system_tokens=counter.count(system),
        ).history_tokens
        image_parts = [await self._image_part(a) for a in images]
        await sink.typing()
        messages = await self._request_messages(msg.chat.key, system, model, budget)

        async def trim_harder() -> list[dict[str, Any]]:
            return await self._request_messages(msg.chat.key, system, model, budget // 2)

        answer = await self._stream_answer(sink, model, messages, image_parts, msg, trim_harder)
        if answer is None:
            return
        usage = answer.usage or Usage(
            prompt_tokens=sum(counter.count(str(m.get("content", ""))) for m in messages),
            completion_tokens=counter.count(answer.text),
        )
        await self.store.append_messages(
            msg.chat.key,
            [
                {
                    "role": "assistant",
                    "content": answer.text,
                    "token_count": counter.count(answer.text),
                    "encoding": counter.encoding_name,
                }
            ],
        )
        await self._record_usage(msg, model, "chat", usage=usage)

    def _supports_vision(self, model: str) -> bool:
        return any(model == v or model.startswith(v + "-") for v in self._vision)

    async def _image_part(self, attachment: Attachment) -> dict[str, Any]:
        data = await attachment.fetch()
        b64 = base64.b64encode(data).decode("ascii")
        mime = attachment.mime if attachment.mime.startswith("image/") else "image/jpeg"
        return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{b64}"}}

    async def _request_messages(
        self, chat_key: str, system: str, model: str, budget: int
    ) -> list[dict[str, Any]]:
        """System prompt + the newest history that fits `budget`, oldest first."""
        counter = counter_for(model)
        kept: list[StoredMessage] = []

        async def costs() -> AsyncIterator[int]:
            async for row in self.store.newest_messages(chat_key):
                tokens = row.token_count
                if row.encoding != counter.encoding_name:
                    tokens = counter.count(row.content)
                kept.append(row)
                yield tokens + PER_MESSAGE_TOKENS + (PER_NAME_TOKENS if row.name else 0)

        collected = [c async for c in _take_while_fits(costs(), budget)]
        count = fit_newest(collected, budget)
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
        for row in reversed(kept[:count]):
            item: dict[str, Any] = {"role": row.role, "content": row.content}
            if row.name:
                item["name"] = row.name
            messages.append(item)
        return messages

    async def _stream_answer(
        self,
        sink: ReplySink,
        model: str,
        messages: list[dict[str, Any]],
        image_parts: list[dict[str, Any]],
        msg: IncomingMessage,
        trim_harder: Callable[[], Awaitable[list[dict[str, Any]]]],
    ) -> _Answer | None:
        answer = _Answer()
        async with sink.stream() as stream:
            try:
                try:
                    await self._stream_into(stream, answer, model, messages, image_parts)
                except ContextTooLong:
                    if answer.text:
                        raise
                    # The provider counts differently from us (or the override is wrong):
                    # trim harder once before giving up.
                    messages = await trim_harder()
                    await self._stream_into(stream, answer, model, messages, image_parts)
            except RelaybotError as err:
                if not answer.text:
                    raise
                # Keep what the person already saw, marked, and say what happened.
                await stream.append("\n\n[answer cut short]")
                await self.store.append_messages(
                    msg.chat.key,
                    [
                        {
                            "role": "assistant",
                            "content": answer.text,
                            "token_count": counter_for(model).count(answer.text),
                            "encoding": counter_for(model).encoding_name,
                            "status": "partial",
                        }
                    ],
                )
                raise RelaybotError(
                    str(err),
                    user_message="The answer was cut short: " + err.user_message,
                ) from err
            flagged = await self.moderator.output_flagged(answer.text)
            if flagged:
                await stream.retract(WITHHELD_NOTICE)
                await self.store.append_messages(
                    msg.chat.key,
                    [
                        {
                            "role": "assistant",
                            "content": answer.text,
                            "token_count": 0,
                            "encoding": counter_for(model).encoding_name,
                            "status": "withheld",
                        }
                    ],
                )
                return None
        return answer

    async def _stream_into(
        self,
        stream: ReplyStream,
        answer: _Answer,
        model: str,
        messages: list[dict[str, Any]],
        image_parts: list[dict[str, Any]],
    ) -> None:
        if image_parts and messages[-1]["role"] == "user":
            last = dict(messages[-1])
            last["content"] = [{"type": "text", "text": last["content"]}, *image_parts]
            messages = [*messages[:-1], last]
        async for delta in self.client.chat_stream(
            model=model, messages=messages, max_tokens=self.settings.reply_tokens
        ):
            if delta.text:
                answer.text += delta.text
                await stream.append(delta.text)
            if delta.usage is not None:
                answer.usage = delta.usage

    # -- audio ----------------------------------------------------------------------------
    async def _transcribe(
        self, msg: IncomingMessage, audio: Attachment, *, translate: bool
    ) -> str:
        limit = self.settings.max_audio_bytes
        too_big = BadInput(
            "audio too large",
            user_message=(
                f"That audio file is too large to transcribe (the limit is {limit // 2**20} MB)."
            ),
        )
        if audio.size is not None and audio.size > limit:
            raise too_big
        filename = audio_filename(audio)
        data = await audio.fetch()
        if len(data) > limit:
            raise too_big
        if not data:
            raise BadInput("empty audio", user_message="That audio file is empty.")
        model = self.settings.translate_model if translate else self.settings.transcribe_model
        text = (
            await self.client.transcribe(
                model=model, audio=data, filename=filename, translate=translate
            )
        ).strip()
        await self._record_usage(msg, model, "audio", audio_seconds=audio.duration_seconds or 0.0)
        if not text:
            raise BadInput("no speech", user_message="I couldn't hear any speech in that audio.")
        await self.moderator.check_input(text)
        return text

    # -- commands -------------------------------------------------------------------------
    async def _command(self, name: str, args: str, msg: IncomingMessage, sink: ReplySink) -> None:
        key = msg.chat.key
        if name in ("help", "start"):
            await sink.send(Reply(text=HELP_TEXT, kind=ReplyKind.NOTICE))
        elif name == "reset":
            await self.store.clear_history(key)
            await sink.send(
                Reply(text="History cleared. Let's start over.", kind=ReplyKind.NOTICE)
            )
        elif name == "system":
            await self._system_command(args, msg, sink)
        elif name == "model":
            await self._model_command(args, msg, sink)
        elif name == "image":
            await self._image_command(args, msg, sink)
        elif name == "edit":
            await self._edit_command(args, msg, sink)
        elif name == "translate":
            audio = self._first(msg, AttachmentKind.AUDIO)
            if audio is None:
                raise BadInput(
                    "translate without audio",
                    user_message="Send /translate with a voice note or audio file to translate.",
                )
            text = await self._transcribe(msg, audio, translate=True)
            await sink.send(Reply(text=text, kind=ReplyKind.TRANSCRIPT))
        elif name == "retry":
            last = await self.store.pop_last_answer(key)
            if last is None:
                raise BadInput("nothing to retry", user_message="There is no answer to retry yet.")
            await self._chat(msg, sink, last.content, [], store_user_turn=False)
        else:
            raise BadInput(
                f"unknown command {name}",
                user_message=f"Unknown command /{name}. Send /help to see what I can do.",
            )

    async def _system_command(self, args: str, msg: IncomingMessage, sink: ReplySink) -> None:
        key = msg.chat.key
        if not args:
            current = (await self.store.chat_settings(key)).system_prompt
            shown = current or self.settings.system_prompt
            origin = "this chat's" if current else "the default"
            await sink.send(
                Reply(
                    text=f"Current system prompt ({origin}):\n{shown}\n\n"
                    "Change it with /system TEXT, or go back with /system default.",
                    kind=ReplyKind.NOTICE,
                )
            )
            return
        if args.lower() in ("default", "reset"):
            await self.store.update_chat(key, msg.chat.platform, system_prompt=None)
            await sink.send(
                Reply(text="System prompt reset to the default.", kind=ReplyKind.NOTICE)
            )
            return
        await self.moderator.check_input(args)
        await self.store.update_chat(key, msg.chat.platform, system_prompt=args)
        await sink.send(Reply(text="System prompt updated for this chat.", kind=ReplyKind.NOTICE))

    async def _model_command(self, args: str, msg: IncomingMessage, sink: ReplySink) -> None:
        key = msg.chat.key
        current = (await self.store.chat_settings(key)).model or self.settings.chat_model
        models = await self.client.list_models()
        if not args:
            lines = [f"{'* ' if m == current else '  '}{m}" for m in models]
            await sink.send(
                Reply(
                    text=f"Current model: {current}\nAvailable models:\n"
                    + "\n".join(lines)
                    + "\n\nPick one with /model NAME.",
                    kind=ReplyKind.NOTICE,
                )
            )
            return
        name = args.split()[0]
        if name.lower() == "default":
            await self.store.update_chat(key, msg.chat.platform, model=None)
            await sink.send(
                Reply(text=f"Model reset to {self.settings.chat_model}.", kind=ReplyKind.NOTICE)
            )
            return
        if models and name not in models:
            raise BadInput(
                f"unknown model {name}",
                user_message=f"The endpoint has no model named {name}. Send /model to list them.",
            )
        await self.store.update_chat(key, msg.chat.platform, model=name)
        await sink.send(Reply(text=f"This chat now uses {name}.", kind=ReplyKind.NOTICE))

    async def _image_command(self, prompt: str, msg: IncomingMessage, sink: ReplySink) -> None:
        if not prompt:
            raise BadInput(
                "image without prompt", user_message="Describe the image: /image PROMPT"
            )
        await self.moderator.check_input(prompt)
        await sink.typing()
        model = self.settings.image_model
        png = await self.client.generate_image(
            model=model, prompt=prompt, size=self.settings.image_size
        )
        await self._record_usage(msg, model, "image", images=1)
        await sink.send(Reply(text=prompt, image=png, image_name="image.png"))

    async def _edit_command(self, prompt: str, msg: IncomingMessage, sink: ReplySink) -> None:
        source = self._first(msg, AttachmentKind.IMAGE)
        if source is None or not prompt:
            raise BadInput(
                "edit without image",
                user_message="Send /edit INSTRUCTION together with (or as a reply to) a photo.",
            )
        await self.moderator.check_input(prompt)
        await sink.typing()
        model = self.settings.image_model
        png = await self.client.edit_image(
            model=model,
            image=await source.fetch(),
            filename=source.filename or "image.png",
            prompt=prompt,
            size=self.settings.image_size,
        )
        await self._record_usage(msg, model, "image", images=1)
        await sink.send(Reply(text=prompt, image=png, image_name="edited.png"))

    # -- usage ----------------------------------------------------------------------------
    async def _record_usage(
        self,
        msg: IncomingMessage,
        model: str,
        kind: str,
        *,
        usage: Usage | None = None,
        audio_seconds: float = 0.0,
        images: int = 0,
    ) -> None:
        await self.store.add_usage(
            platform=msg.chat.platform,
            chat_key=msg.chat.key,
            user_id=msg.sender.id,
            model=model,
            kind=kind,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            cached_tokens=usage.cached_tokens if usage else 0,
            audio_seconds=audio_seconds,
            images=images,
            cost_usd=0.0,
        )


async def _take_while_fits(costs: AsyncIterator[int], budget: int) -> AsyncIterator[int]:
    """Pull costs until their sum passes `budget` (one past, so fit_newest sees the edge)."""
    total = 0
    async for cost in costs:
        yield cost
        total += cost
        if total > budget:
            return
