"""/forget as a slash command in a DM: the DM is one person's, its threads too.

A slash command always comes from the DM's top level (Slack gives it no thread). Seen before:
it deleted the top level only and said everything was deleted, while each conversation the
person had in a thread of the DM stayed stored.
"""

from __future__ import annotations

from sqlalchemy import inspect, select, text

from core.db.models import Message, UsageRecord
from core.testing.fake_slack import message_event, new_ts, slash_command
from tests.bots.slack.conftest import SlackApp

DM = "D0ALICE"
OTHER_DM = "D0BOB"
KEY = f"slack:T0TEAM:{DM}"


async def say(slack_app: SlackApp, channel: str, words: str, thread: str | None = None) -> str:
    """Post a message as its sender; wait for the bot's answer; the message's ts."""
    slack = slack_app.slack
    ts = new_ts()
    user = "U0BOB" if channel == OTHER_DM else "U0ALICE"
    shown = len(slack.visible(channel, thread))
    event = message_event(channel=channel, user=user, ts=ts, thread_ts=thread, text=words)
    await slack_app.post_event(event)
    # (A top-level message's answer comes after it; a thread's, after it in the thread.)
    await slack.wait_until(lambda: len(slack.visible(channel, thread)) > shown)
    await slack_app.adapter.drain()
    return ts


async def every_row(slack_app: SlackApp) -> list[str]:
    async with slack_app.adapter.core.engine.connect() as conn:
        tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
        rows: list[str] = []
        for table in tables:
            found = await conn.execute(text(f'SELECT * FROM "{table}"'))
            rows += [f"{table}: " + " | ".join(str(v) for v in row) for row in found]
    return rows


async def test_slash_forget_in_a_dm_forgets_the_conversations_in_its_threads(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    first = await say(slack_app, DM, "remember my top secret plan")
    await say(slack_app, DM, "and my PIN is 4321", thread=first)
    second = await say(slack_app, DM, "another topic")
    await say(slack_app, DM, "my locker code is 8765", thread=second)
    bobs = await say(slack_app, OTHER_DM, "bob's own words")
    await say(slack_app, OTHER_DM, "bob's thread", thread=bobs)
    assert any("4321" in row for row in await every_row(slack_app))

    response = await slack_app.post(
        slash_command("/forget", "", channel=DM, response_url=slack.response_url), form=True
    )
    assert response.status_code == 200
    await slack.wait_until(lambda: any("Done." in t for t in slack.visible_texts(DM)))
    await slack_app.adapter.drain()

    done = slack.visible_texts(DM)[-1]
    assert done.startswith("Done. I deleted everything stored about this chat and its 2 threads")
    # Nothing of the DM is left: its top level, both threads, their events and settings. The
    # budgets' day totals keep its key (a key, a day and an amount): what it cost still counts.
    for row in await every_row(slack_app):
        kept = row.startswith("spend_totals: ")
        for trace in ("secret plan", "4321", "8765", "another topic", *(() if kept else (DM,))):
            assert trace not in row, row
    async with slack_app.adapter.core.engine.connect() as conn:
        usage = (await conn.execute(select(UsageRecord.chat_key, UsageRecord.user_id))).all()
        bob = await conn.execute(select(Message.chat_key).where(Message.chat_key.like("%D0BOB%")))
        bob_keys = sorted({key for (key,) in bob})
    # The DM's usage stays for the totals, naming nobody; Bob's DM and thread are untouched.
    assert usage.count((None, None)) == 4  # one call per exchange of Alice's
    assert sorted(u for u in usage if u != (None, None)) == [
        (f"slack:T0TEAM:{OTHER_DM}", "U0BOB"),
        (f"slack:T0TEAM:{OTHER_DM}:{bobs}", "U0BOB"),
    ]
    assert bob_keys == [f"slack:T0TEAM:{OTHER_DM}", f"slack:T0TEAM:{OTHER_DM}:{bobs}"]

    # Back in a forgotten thread, the model starts afresh.
    await say(slack_app, DM, "what is my PIN?", thread=first)
    last = slack_app.openai.chat_requests()[-1]["messages"]
    assert [m["content"] for m in last if m["role"] != "system"] == ["what is my PIN?"]


async def test_forget_said_in_a_dm_thread_forgets_that_thread_only(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    first = await say(slack_app, DM, "top level words")
    await say(slack_app, DM, "thread words", thread=first)
    await say(slack_app, DM, "forget", thread=first)
    assert slack.visible_texts(DM, first)[-1].startswith(
        "Done. I deleted everything stored about this chat (2 messages"
    )
    async with slack_app.adapter.core.engine.connect() as conn:
        left = await conn.execute(select(Message.chat_key, Message.content).order_by(Message.id))
        assert left.all() == [(KEY, "top level words"), (KEY, "echo: top level words")]
