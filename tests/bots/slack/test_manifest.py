"""The shipped Slack app manifest asks for what the adapter uses."""

from __future__ import annotations

import yaml

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
