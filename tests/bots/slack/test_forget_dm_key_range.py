"""/forget at a Slack DM's top level takes the DM's threads, and no other conversation.

The threads are found as the range of keys ['CHAT_KEY:', 'CHAT_KEY;') through the keys'
index (see `core.privacy.forget_chat`), exact only under binary ordering. Here on SQLite and
on a PostgreSQL database made with a linguistic collation (ICU's en-US, else glibc's
en_US.UTF-8), which orders punctuation by its own rules (ICU puts ';' before ':': in the
database's own order that range is empty). Beside the DM are conversations whose keys differ
from its threads' only in punctuation, a digit or case, which a wrong range takes or misses.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from core.db.models import Chat, InboundEvent, Message, UsageRecord
from core.testing.fake_slack import app_mention_event, message_event, new_ts, slash_command
from tests.bots.slack.conftest import SlackApp
from tests.conftest import POSTGRES_URL, _admin

DM = "D1"
# Neighbours: a digit ('0' < ':'), punctuation either side of ':' in byte order ('-', and ';'
# itself), and the DM's id in lower case (ICU orders case after letters; a channel, as Slack
# makes only DMs' ids start with D).
NEIGHBOURS = ("D10", "D1-x", "D1;x")
LOWER = "d1"
TEAM_KEY = "slack:T0TEAM"
KEY = f"{TEAM_KEY}:{DM}"

# How to make a database ordered by a linguistic collation, the first this server has.
LINGUISTIC = (
    "LOCALE_PROVIDER icu ICU_LOCALE 'en-US'",
    "LC_COLLATE 'en_US.utf8' LC_CTYPE 'en_US.utf8'",
)


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgres",
            marks=pytest.mark.skipif(not POSTGRES_URL, reason="RELAYBOT_TEST_POSTGRES_URL unset"),
        ),
    ]
)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """SQLite, or a PostgreSQL database of our own with a linguistic default collation."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'relaybot.db'}"
        return
    assert POSTGRES_URL
    name = f"relaybot_test_collation_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    for locale in LINGUISTIC:
        try:
            await _admin(POSTGRES_URL, f'CREATE DATABASE "{name}" TEMPLATE template0 {locale}')
            break
        except Exception:  # this server lacks that locale (or ICU)
            continue
    else:
        pytest.skip("the PostgreSQL server has no linguistic collation (ICU or en_US.utf8)")
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        await _admin(POSTGRES_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(autouse=True)
def workspace(slack_app: SlackApp) -> None:
    """The lower-case channel, made by Alice."""
    slack_app.slack.add_channel(LOWER, creator="U0ALICE", name="lower")


async def say(app: SlackApp, channel: str, words: str, thread: str | None = None) -> str:
    """WORDS in a DM (or one of its threads), or @bot WORDS in the channel; waits for the
    answer. The message's ts."""
    slack = app.slack
    ts = new_ts()
    where = thread or (None if channel.startswith("D") else ts)
    before = len(slack.visible(channel, where))
    if channel.startswith("D"):
        event = message_event(channel=channel, ts=ts, thread_ts=thread, text=words)
    else:
        event = app_mention_event(
            channel=channel, ts=ts, thread_ts=thread, text=f"<@U0BOT> {words}"
        )
    await app.post_event(event)
    await slack.wait_until(lambda: len(slack.visible(channel, where)) > before)
    await app.adapter.drain()
    return ts


async def command(app: SlackApp, channel: str, name: str, args: str = "") -> str:
    """A slash command (at the DM's top level: Slack gives it no thread); the answer."""
    slack = app.slack
    before = len(slack.visible(channel))
    response = await app.post(
        slash_command(name, args, channel=channel, response_url=slack.response_url), form=True
    )
    assert response.status_code == 200
    await slack.wait_until(lambda: len(slack.visible(channel)) > before)
    await app.adapter.drain()
    return slack.visible_texts(channel)[-1]


async def stored_keys(app: SlackApp) -> dict[str, set[str | None]]:
    """Every chat key stored, by table."""
    columns = {
        "chats": Chat.key,
        "messages": Message.chat_key,
        "inbound_events": InboundEvent.chat_key,
        "usage": UsageRecord.chat_key,
    }
    async with app.adapter.core.engine.connect() as conn:
        return {
            table: set((await conn.execute(select(column))).scalars())
            for table, column in columns.items()
        }


async def test_forget_at_a_dms_top_level_takes_its_threads_and_no_other_conversation(
    slack_app: SlackApp,
) -> None:
    assert await command(slack_app, DM, "/system", "Answer briefly.") == (
        "System prompt updated for this chat."
    )
    await say(slack_app, DM, "my top secret plan")
    first = await say(slack_app, DM, "my PIN is 4321")
    await say(slack_app, DM, "and my locker is 8765", thread=first)
    second = await say(slack_app, DM, "another topic")
    await say(slack_app, DM, "in the second thread", thread=second)
    kept = set()
    for channel in NEIGHBOURS:
        await command(slack_app, channel, "/system", f"You serve {channel}.")
        top = await say(slack_app, channel, f"words of {channel}")
        await say(slack_app, channel, f"a thread of {channel}", thread=top)
        kept |= {f"{TEAM_KEY}:{channel}", f"{TEAM_KEY}:{channel}:{top}"}
    kept.add(f"{TEAM_KEY}:{LOWER}:{await say(slack_app, LOWER, 'words of the channel')}")
    threads = {f"{KEY}:{first}", f"{KEY}:{second}"}
    before = await stored_keys(slack_app)
    assert before["chats"] == before["messages"] == {KEY} | threads | kept
    if slack_app.adapter.core.engine.dialect.name == "postgresql":
        # In the database's own order that range is not the threads: the test means something.
        async with slack_app.adapter.core.engine.connect() as conn:
            own_order = await conn.execute(
                text(
                    'SELECT key FROM chats WHERE key COLLATE "default" >= :first '
                    'AND key COLLATE "default" < :after'
                ),
                {"first": f"{KEY}:", "after": f"{KEY};"},
            )
            assert set(own_order.scalars()) != threads

    done = await command(slack_app, DM, "/forget")

    assert done.startswith("Done. I deleted everything stored about this chat and its 2 threads")
    after = await stored_keys(slack_app)
    # The DM and its threads are gone from every table (their usage rows name nobody); every
    # neighbour is still there, with its history, settings, events and usage.
    assert after["chats"] == after["messages"] == kept
    assert after["inbound_events"] == before["inbound_events"] - threads - {KEY}
    assert kept <= after["inbound_events"]
    assert after["usage"] == kept | {None}
