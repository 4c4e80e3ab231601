"""User stories: whatever the model writes (or a prompt the bot posts back says), nobody in
Slack is pinged by it: no @channel, @here, @everyone, user group or person by id."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from bots.slack import SlackSink
from bots.slack.events import plain_text
from core.testing.fake_slack import FakeSlack, app_mention_event, message_event, new_ts
from tests.bots.slack.conftest import SlackApp

CHANNEL = "C0GENERAL"
DM = "D0ALICE"
PINGS = ("<!channel", "<!here", "<!everyone", "<!subteam", "<@U0BOSS")
ZERO_WIDTH_SPACE = "\u200b"
SNEAKY = (
    "Sure! [everyone, look](!channel) and ![x](!here) and [boss](@U0BOSS), "
    "or plainly <!channel>, <!here|now>, <!subteam^S0OPS> and <@U0BOSS>."
)


def sent_to_slack(slack: FakeSlack) -> list[str]:
    """Every text Slack was given to show: message text, markdown blocks, the pieces of a
    native stream, a picture's comment; and each message as it ends up."""
    texts: list[str] = []
    methods = ("chat.postMessage", "chat.update", "chat.startStream", "chat.appendStream")
    for method in (*methods, "chat.stopStream", "files.completeUploadExternal"):
        for args in slack.api_arguments(method):
            texts.append(str(args.get("text") or ""))
            texts.append(str(args.get("markdown_text") or ""))
            texts.append(str(args.get("initial_comment") or ""))
            blocks: Any = args.get("blocks") or []
            if isinstance(blocks, str):
                blocks = json.loads(blocks)
            texts.extend(str(block.get("text", "")) for block in blocks)
    texts.extend(m.visible_text for m in slack.bot_messages())
    return texts


def pings_in(slack: FakeSlack) -> list[str]:
    return [text for text in sent_to_slack(slack) if any(p in text for p in PINGS)]


@pytest.mark.parametrize("native", [True, False], ids=["streamed", "edited"])
async def test_links_and_mentions_the_model_writes_ping_nobody(
    slack_app: SlackApp, native: bool
) -> None:
    slack = slack_app.slack
    slack.native_streaming = native
    slack_app.openai.reply = lambda messages: SNEAKY
    ts = new_ts()
    await slack_app.post_event(app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> hi"))
    await slack.wait_until(lambda: bool(slack.visible(CHANNEL, ts)))
    await slack_app.adapter.drain()

    assert pings_in(slack) == []
    # People read what the model wrote, only no one is notified.
    (answer,) = slack.visible_texts(CHANNEL, ts)
    assert answer.replace(ZERO_WIDTH_SPACE, "") == SNEAKY
    if not native:  # the message text (notifications, older clients): the links' labels
        text = slack.api_arguments("chat.update")[-1]["text"]
        assert text.startswith("Sure! everyone, look and x and boss, or plainly &lt;!channel&gt;")


async def test_a_link_to_everyone_in_a_dm_is_its_label(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    slack_app.openai.reply = lambda messages: "[all of you](!everyone)"
    await slack_app.post_event(message_event(channel=DM, text="hi"))
    await slack.wait_until(lambda: bool(slack.visible(DM)))
    await slack_app.adapter.drain()

    assert pings_in(slack) == []
    assert slack.api_arguments("chat.postMessage")[-1]["text"] == "all of you"


async def test_ordinary_answers_with_links_and_html_render_as_before(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    slack.native_streaming = False
    answer = (
        "Read [the docs](https://example.com/guide?page=2), write to "
        "[us](mailto:help@example.com) or see <https://example.com>.\n\n"
        "```html\n<!DOCTYPE html>\n<!-- a comment -->\n<p>a &lt; b</p>\n```"
    )
    slack_app.openai.reply = lambda messages: answer
    ts = new_ts()
    await slack_app.post_event(app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> html?"))
    await slack.wait_until(lambda: bool(slack.visible(CHANNEL, ts)))
    await slack_app.adapter.drain()

    assert slack.visible_texts(CHANNEL, ts) == [answer]  # the markdown block, untouched
    text = slack.api_arguments("chat.update")[-1]["text"]
    assert text.startswith(
        "Read <https://example.com/guide?page=2|the docs>, write to "
        "<mailto:help@example.com|us> or see <https://example.com>."
    )
    assert "&lt;!DOCTYPE html&gt;" in text


async def test_a_picture_prompt_naming_the_channel_pings_nobody(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    # Typed literally, "<!channel>" reaches the bot escaped, as Slack sends what people type.
    await slack_app.post_event(
        message_event(channel=DM, text="image: a banner saying &lt;!channel&gt; party time")
    )
    await slack.wait_for("/api/files.completeUploadExternal")
    await slack_app.adapter.drain()

    assert pings_in(slack) == []
    (picture,) = slack.visible(DM)
    assert plain_text(picture.text) == "a banner saying <!channel> party time"


async def test_a_ping_the_model_streams_in_pieces_pings_nobody(slack_app: SlackApp) -> None:
    # Models stream tokens, not words: "<", "!", "channel", ">" may arrive one by one, and
    # each piece of a native stream goes to Slack as soon as the pacing allows.
    slack = slack_app.slack
    ts = new_ts()
    slack.add_person_message(CHANNEL, ts, "<@U0BOT> announce it")
    sink = SlackSink(
        slack_app.adapter.client,
        channel=CHANNEL,
        thread_ts=ts,
        team_id=slack.team_id,
        user_id="U0ALICE",
        options=slack_app.adapter.sink_options,
    )
    pieces = ["Heads up ", "<", "!", "chan", "nel", "> and ", "<@", "U0BOSS", ">", " done <"]
    async with sink.stream() as stream:
        for piece in pieces:
            await stream.append(piece)
            await asyncio.sleep(0.08)  # longer than the pause between pieces sent

    assert len(slack.api_calls("chat.appendStream")) >= 3  # it went out in pieces
    assert pings_in(slack) == []
    (answer,) = slack.visible_texts(CHANNEL, ts)
    assert answer.replace(ZERO_WIDTH_SPACE, "") == "".join(pieces)


@pytest.mark.parametrize("native", [True, False], ids=["streamed", "edited"])
async def test_code_with_an_at_sign_after_a_bracket_is_sent_as_written(
    slack_app: SlackApp, native: bool
) -> None:
    """Java's `List<@NonNull String>` pings nobody: copied from the answer it compiles (a
    zero-width space in it did not)."""
    slack = slack_app.slack
    slack.native_streaming = native
    answer = (
        "Annotate the type:\n\n```java\nList<@NonNull String> names = new ArrayList<>();\n```"
        "\n\nor inline: `Map<@Nullable K, V>`."
    )
    slack_app.openai.reply = lambda messages: answer
    ts = new_ts()
    await slack_app.post_event(app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> java?"))
    await slack.wait_until(lambda: bool(slack.visible(CHANNEL, ts)))
    await slack_app.adapter.drain()

    assert slack.visible_texts(CHANNEL, ts) == [answer]
    assert not any(ZERO_WIDTH_SPACE in text for text in sent_to_slack(slack))
