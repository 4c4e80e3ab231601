"""User stories: a long answer split into Slack messages keeps its characters and its
formatting whole: no flag cut in two (every later flag would pair wrongly), no message
showing half a "**bold**" or "[link](url)" as Markdown."""

from __future__ import annotations

from markdown_it import MarkdownIt

from core.testing.fake_slack import message_event
from tests.bots.slack.conftest import SlackApp

DM = "D0ALICE"
_MARKDOWN = MarkdownIt("commonmark").enable("strikethrough")


async def _answer(slack_app: SlackApp, answer: str) -> list[str]:
    """The markdown of each message the answer to a DM was posted as."""
    slack_app.openai.queue_reply(answer)
    await slack_app.post_event(message_event(channel=DM, text="go"))
    await slack_app.adapter.drain(within=30)
    return [message.blocks[0]["text"] for message in slack_app.slack.visible(DM)]


def _indicators(text: str) -> int:
    return sum(1 for c in text if "\U0001f1e6" <= c <= "\U0001f1ff")


async def test_a_row_of_flags_is_not_cut_inside_a_flag(slack_app: SlackApp) -> None:
    answer = "Flags: " + "\U0001f1eb\U0001f1f7\U0001f1e9\U0001f1ea" * 1500  # 🇫🇷🇩🇪, no spaces
    texts = await _answer(slack_app, answer)
    assert len(texts) >= 2
    assert "".join(texts) == answer, "every character once, in order"
    for text in texts:
        assert _indicators(text) % 2 == 0, f"a message ends inside a flag: {text[-2:]!r}"


async def test_a_long_chinese_paragraph_keeps_its_bold_spans_whole(slack_app: SlackApp) -> None:
    answer = "开" * 20 + ("这是一个很长的句子" * 3 + "**重要的内容**") * 200  # no spaces
    texts = await _answer(slack_app, answer)
    assert len(texts) >= 2
    assert "".join(texts) == answer
    for text in texts:
        shown = _MARKDOWN.render(text)
        assert "*" not in shown, f"asterisks shown: {text[:12]!r}...{text[-12:]!r}"


async def test_a_cut_at_a_space_does_not_fall_inside_bold_or_a_link(slack_app: SlackApp) -> None:
    # Where the first message must end (3,900 characters), every space is inside the bold;
    # where the second must, inside the link's words. Both are cut before them instead.
    bold = "**" + " ".join(["important"] * 300) + "**"
    link = "[" + " ".join(["guide"] * 300) + "](https://docs.example.com/setup)"
    answer = "word " * 300 + bold + " and " + link + " done."
    texts = await _answer(slack_app, answer)
    assert len(texts) == 3
    for text in texts:
        shown = _MARKDOWN.render(text)
        assert "*" not in shown and "[" not in shown, f"{text[:12]!r}...{text[-12:]!r}"
    assert texts[1].startswith("**important") and texts[2].startswith("[guide")
