"""Who may change a Slack channel's conversation for everyone (`system: TEXT`, `reset`, ...):
its creator and the workspace's admins and owners, as Slack tells a bot; not its other
members. In a DM everyone may. Where Slack does not say, members are trusted alike."""

from __future__ import annotations

import logging

import pytest

from core.testing.fake_slack import app_mention_event, message_event, new_ts, slash_command
from tests.bots.slack.conftest import SlackApp

CHANNEL = "C0GENERAL"
CREATOR = "U0CAROL"
MEMBER = "U0ALICE"
REFUSED = (
    ":warning: In a group only its admins can use `system`: it changes the conversation for "
    "everyone."
)


@pytest.fixture(autouse=True)
def workspace(slack_app: SlackApp) -> None:
    """#general, made by Carol; Alice is a member like any other."""
    slack = slack_app.slack
    slack.add_channel(CHANNEL, creator=CREATOR)
    slack.add_user(MEMBER, "alice")
    slack.add_user(CREATOR, "carol")


async def mention(app: SlackApp, text: str, *, user: str, thread_ts: str | None = None) -> str:
    """@bot TEXT in the channel (or one of its threads); waits for the reply. The thread."""
    ts = new_ts()
    thread = thread_ts or ts
    slack = app.slack
    before = len(slack.visible(CHANNEL, thread))
    await app.post_event(
        app_mention_event(
            channel=CHANNEL, user=user, ts=ts, thread_ts=thread_ts, text=f"<@U0BOT> {text}"
        )
    )
    await slack.wait_until(lambda: len(slack.visible(CHANNEL, thread)) > before)
    await app.adapter.drain()
    return thread


async def set_and_show(app: SlackApp, user: str) -> tuple[str, str]:
    """`system: Talk like a pirate.` by `user` in a new thread, then `system` there (anyone
    may look): what each was answered."""
    thread = await mention(app, "system: Talk like a pirate.", user=user)
    await mention(app, "system", user=MEMBER, thread_ts=thread)
    said, shown = app.slack.visible_texts(CHANNEL, thread)
    return said, shown


async def test_a_plain_members_system_prompt_in_a_channel_is_refused(slack_app: SlackApp) -> None:
    said, shown = await set_and_show(slack_app, MEMBER)

    assert said == REFUSED
    assert "pirate" not in shown
    # Asked again, the channel's creator is remembered a while, not asked of Slack each time.
    await set_and_show(slack_app, MEMBER)
    assert len(slack_app.slack.api_calls("conversations.info")) == 1


async def test_a_plain_members_slash_command_in_a_channel_is_refused(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    response = await slack_app.post(
        slash_command("/system", "Talk like a pirate.", channel=CHANNEL, user=MEMBER),
        form=True,
    )
    assert response.status_code == 200
    await slack.wait_until(lambda: bool(slack.visible(CHANNEL)))
    await slack_app.adapter.drain()

    assert slack.visible_texts(CHANNEL) == [REFUSED]


@pytest.mark.parametrize(
    "who", ["creator", "is_admin", "is_owner", "is_primary_owner"], ids=lambda w: w
)
async def test_the_channels_creator_and_the_workspaces_admins_may_set_it(
    slack_app: SlackApp, who: str
) -> None:
    user = CREATOR
    if who != "creator":
        user = "U0DANA"
        slack_app.slack.add_user(user, "dana", **{who: True})

    refused, _ = await set_and_show(slack_app, MEMBER)
    said, shown = await set_and_show(slack_app, user)

    assert refused == REFUSED
    assert said == "System prompt updated for this chat."
    assert "Talk like a pirate." in shown


async def test_everyone_may_set_it_in_a_dm(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    slack.add_channel("D0ALICE", creator=MEMBER, kind="im")
    refused, _ = await set_and_show(slack_app, MEMBER)  # (in the channel)
    assert refused == REFUSED
    for text in ("system: Talk like a pirate.", "system"):
        before = len(slack.visible("D0ALICE"))
        await slack_app.post_event(message_event(channel="D0ALICE", user=MEMBER, text=text))
        await slack.wait_until(lambda: len(slack.visible("D0ALICE")) > before)  # noqa: B023
        await slack_app.adapter.drain()

    said, shown = slack.visible_texts("D0ALICE")
    assert said == "System prompt updated for this chat."
    assert "Talk like a pirate." in shown
    assert len(slack.api_calls("conversations.info")) == 1  # the channel's, not the DM's


async def test_in_a_group_dm_members_are_trusted_alike(slack_app: SlackApp) -> None:
    slack_app.slack.add_channel(CHANNEL, creator=CREATOR, kind="mpim")

    said, shown = await set_and_show(slack_app, MEMBER)

    assert said == "System prompt updated for this chat."
    assert "Talk like a pirate." in shown
    # (Slack was asked: a channel's member would have been refused, see above.)
    assert len(slack_app.slack.api_calls("conversations.info")) == 1


@pytest.mark.parametrize(
    ("method", "error", "status"),
    [
        ("conversations.info", "missing_scope", 200),  # no channels:read
        ("users.info", "missing_scope", 200),  # no users:read
        ("conversations.info", "internal_error", 500),
    ],
    ids=["no-channels-read", "no-users-read", "slack-down"],
)
async def test_when_slack_does_not_say_members_are_trusted_as_before(
    slack_app: SlackApp, caplog: pytest.LogCaptureFixture, method: str, error: str, status: int
) -> None:
    slack_app.slack.fail_next(method, error, status=status, times=20)
    caplog.set_level(logging.DEBUG, logger="relaybot.slack")

    said, shown = await set_and_show(slack_app, MEMBER)
    again, _ = await set_and_show(slack_app, MEMBER)

    assert said == again == "System prompt updated for this chat."
    assert "Talk like a pirate." in shown
    # The operator is told why, once: a missing scope (it lasts until the app is
    # reinstalled) as a warning naming the scopes, a passing failure at debug level.
    told = [r for r in caplog.records if "who administers a channel" in r.getMessage()]
    level = logging.WARNING if error == "missing_scope" else logging.DEBUG
    assert [(r.levelno, f"{method}: {error}" in r.getMessage()) for r in told] == [(level, True)]
    assert ("reinstall the Slack app" in told[0].getMessage()) == (error == "missing_scope")


async def test_help_marks_what_a_plain_member_may_not_change(slack_app: SlackApp) -> None:
    thread = await mention(slack_app, "help", user=MEMBER)
    await mention(slack_app, "help", user=CREATOR, thread_ts=thread)

    member, creator = slack_app.slack.visible_texts(CHANNEL, thread)
    assert "group admins only" in member
    assert "group admins only" not in creator
