"""The shipped Slack app manifest asks for what the adapter uses."""

from __future__ import annotations

import yaml

from core.testing.fake_slack import app_mention_event, new_ts
from tests.bots.slack.conftest import SlackApp
from tests.conftest import REPO


def test_the_manifest_has_the_scopes_events_and_command_relaybot_needs() -> None:
    manifest = yaml.safe_load((REPO / "deploy" / "slack-app-manifest.yaml").read_text())
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {
        "app_mentions:read",
        "chat:write",
        "im:history",
        "channels:history",
        "groups:history",
        # Reading a thread or DM back (conversations.replies/history) to find the messages
        # of an answer an interrupted run posted, by their metadata, in every conversation.
        "mpim:history",
        "files:read",
        "files:write",
        "assistant:write",
        "commands",
        "users:read",
        "channels:read",
        "groups:read",
        # conversations.info on a group DM (who may change a conversation) needs it.
        "mpim:read",
    } <= scopes
    events = set(manifest["settings"]["event_subscriptions"]["bot_events"])
    assert {
        "app_mention",
        "message.channels",
        "message.groups",
        # Group DMs: without it a follow-up in the bot's thread there needed a mention.
        "message.mpim",
        "message.im",
        "assistant_thread_started",
    } <= events
    from bots.slack.adapter import SLASH_COMMANDS

    declared = [c["command"] for c in manifest["features"]["slash_commands"]]
    assert "/image" in declared
    # Every slash command the manifest declares has a handler in the adapter.
    assert {c.removeprefix("/") for c in declared} <= set(SLASH_COMMANDS)
    assert "assistant_view" in manifest["features"]
    url = manifest["settings"]["event_subscriptions"]["request_url"]
    assert url.endswith("/slack/events")


def test_the_manifest_declares_the_history_commands_a_channel_answers() -> None:
    # README: in a channel /reset, /retry and /forget say to use the thread instead.
    from bots.slack.adapter import HISTORY_COMMANDS

    manifest = yaml.safe_load((REPO / "deploy" / "slack-app-manifest.yaml").read_text())
    commands = manifest["features"]["slash_commands"]
    assert {f"/{name}" for name in HISTORY_COMMANDS} <= {c["command"] for c in commands}
    request_url = manifest["settings"]["event_subscriptions"]["request_url"]
    # One host to replace, as the header says; every command posts where events do.
    assert {c["url"] for c in commands} == {request_url}


def test_the_manifest_declares_every_slash_command_that_works_without_a_file() -> None:
    # /edit needs a photo and /translate a voice note: a slash command carries neither.
    from bots.slack.adapter import SLASH_COMMANDS

    manifest = yaml.safe_load((REPO / "deploy" / "slack-app-manifest.yaml").read_text())
    declared = {c["command"] for c in manifest["features"]["slash_commands"]}
    assert {"/help", "/usage", "/budget"} <= declared
    assert declared == {f"/{name}" for name in SLASH_COMMANDS} - {"/edit", "/translate"}


async def test_the_manifest_lets_the_adapter_read_the_group_dms_it_asks_about(
    slack_app: SlackApp,
) -> None:
    # A conversation-changing command in a group DM makes the adapter ask conversations.info
    # whether everyone may (ChannelAdmins): for a group DM Slack answers it only with
    # mpim:read, without which every such look-up was missing_scope.
    slack = slack_app.slack
    slack.add_channel("G0GROUPDM", creator="U0CAROL", kind="mpim")
    slack.add_user("U0ALICE", "alice")
    ts = new_ts()
    await slack_app.post_event(
        app_mention_event(
            channel="G0GROUPDM", user="U0ALICE", ts=ts, text="<@U0BOT> system: Talk like a pirate."
        )
    )
    await slack.wait_until(lambda: bool(slack.visible("G0GROUPDM", ts)))
    await slack_app.adapter.drain()
    asked = [args.get("channel") for args in slack.api_arguments("conversations.info")]
    assert "G0GROUPDM" in asked
    manifest = yaml.safe_load((REPO / "deploy" / "slack-app-manifest.yaml").read_text())
    assert "mpim:read" in manifest["oauth_config"]["scopes"]["bot"]
