"""Export stored conversations in OpenAI's chat fine-tuning format (JSON Lines).

One line per chat: {"messages": [system, user, assistant, ...]}. Exchanges whose answer was
withheld by moderation or cut short are left out with the prompts that led to them, refused
prompts are left out, and a chat's trailing prompts without an answer are dropped (a training
example ends with an assistant turn). Turns before `since` are left out, and with them an
answer whose question came before it (an example starts with a question). Voice notes'
transcripts a group was posted are the speakers' turns; an exchange about pictures is left
out (the pictures are not kept, and an answer about them would teach describing nothing).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any, TextIO

from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from core.db.models import Message
from core.db.store import read_chat_settings
from core.types import ChatRef, without_image_mark

FORMATS = ("openai-jsonl",)


def build_example(
    system: str, rows: Iterable[tuple[str, str, str | None, str]]
) -> dict[str, Any] | None:
    """A training example from history rows (role, content, name, status), or None."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    pending: list[dict[str, Any]] = []
    # The pending prompts came with pictures, which are not kept: the answer to them
    # describes what the example cannot show, so the exchange is left out.
    blind = False
    for role, content, name, status in rows:
        if role == "user":
            # "heard": a voice note's transcript a group was posted, the speaker's words
            # the next question in the group may be about (the model was sent it too).
            if status in ("ok", "heard"):
                item: dict[str, Any] = {"role": "user", "content": content}
                if name:
                    item["name"] = name
                pending.append(item)
                blind = blind or without_image_mark(content)[1]
        elif role == "assistant":
            # An answer with no prompt before it (its question was before `--since`) is
            # not an exchange: an example starts with a question.
            asked = bool(pending) or len(messages) > 1
            if status == "ok" and content and asked and not blind:
                messages.extend(pending)
                messages.append({"role": "assistant", "content": content})
            # A withheld or partial answer takes its prompts with it.
            pending = []
            blind = False
    if len(messages) < 3:
        return None
    return {"messages": messages}


async def export_openai_jsonl(
    engine: AsyncEngine,
    out: TextIO,
    *,
    default_system_prompt: str,
    chats: list[str] | None = None,
    since: datetime | None = None,
) -> int:
    """Write one line per chat with at least one answered exchange; returns the line count."""
    session_factory = async_sessionmaker(engine, expire_on_commit=False)
    where: list[ColumnElement[bool]] = []
    if chats:
        where.append(Message.chat_key.in_(chats))
    if since is not None:
        where.append(Message.created_at >= since)
    async with session_factory() as session:
        keys = list(
            (
                await session.execute(
                    select(Message.chat_key).where(*where).distinct().order_by(Message.chat_key)
                )
            ).scalars()
        )
    written = 0
    for key in keys:
        async with session_factory() as session:
            # A thread or topic has the prompt its channel or group set, unless it has its own:
            # what the model was sent.
            conn = await session.connection()
            chat = await conn.run_sync(read_chat_settings, key, ChatRef.parent_of(key))
            rows = (
                await session.execute(
                    select(Message.role, Message.content, Message.name, Message.status)
                    .where(Message.chat_key == key, *where)
                    .order_by(Message.id)
                )
            ).all()
        system = chat.system_prompt or default_system_prompt
        example = build_example(system, ((r[0], r[1], r[2], r[3]) for r in rows))
        if example is None:
            continue
        out.write(json.dumps(example, ensure_ascii=False) + "\n")
        written += 1
    return written
