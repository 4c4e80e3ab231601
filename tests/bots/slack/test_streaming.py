"""User stories: answers stream into Slack, long ones split, rate limits are honoured."""

from __future__ import annotations

from core.testing.fake_slack import app_mention_event, message_event, new_ts
from tests.bots.slack.conftest import SlackApp

CHANNEL = "C0GENERAL"
DM = "D0ALICE"


def long_answer(paragraphs: int = 60) -> str:
    para = "Relaybot streams **long** answers into Slack, paragraph after paragraph. " * 6
    return "\n\n".join(f"{i}. {para.strip()}" for i in range(paragraphs))


def words(texts: list[str]) -> list[str]:
    return " ".join(texts).split()


async def test_a_long_answer_streams_natively_across_messages_without_losing_text(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    answer = long_answer()
    assert len(answer) > 25_000
    slack_app.openai.queue_reply(answer)
    # Not all at once: an answer that arrived whole before the first call went out would
    # be sent as whole messages, with nothing to append.
    slack_app.openai.chunk_delay = 0.00001
    ts = new_ts()
    await slack_app.post_event(app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> essay"))
    await slack_app.adapter.drain(within=30)

    texts = slack.visible_texts(CHANNEL, ts)
    assert len(texts) >= 3
    assert all(len(text) <= 12_000 for text in texts)
    assert words(texts) == answer.split()
    assert not any(m.streaming for m in slack.visible(CHANNEL, ts))  # every stream stopped
    # It really streamed (a model this fast goes out in a few big pieces; see
    # test_slow_slack.py for the pacing).
    assert slack.api_calls("chat.appendStream")


async def test_without_native_streaming_the_answer_is_posted_then_edited_and_split(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    slack.native_streaming = False
    answer = long_answer(20)
    slack_app.openai.queue_reply(answer)
    slack_app.openai.chunk_delay = 0.0005
    ts = new_ts()
    await slack_app.post_event(app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> essay"))
    await slack_app.adapter.drain(within=30)

    texts = slack.visible_texts(CHANNEL, ts)
    assert len(texts) >= 3
    assert all(len(text) <= 4_000 for text in texts)
    assert words(texts) == answer.split()
    assert slack.api_calls("chat.update")
    # The finished messages carry a markdown block, so Markdown renders.
    assert all(m.blocks and m.blocks[0]["type"] == "markdown" for m in slack.visible(CHANNEL, ts))


async def test_a_dm_answer_is_edited_into_place_in_the_dm(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    slack_app.openai.queue_reply("Here is *some* `code` and a list:\n\n- one\n- two")
    slack_app.openai.chunk_delay = 0.02
    await slack_app.post_event(message_event(channel=DM, text="format please"))
    await slack_app.adapter.drain()

    (message,) = slack.visible(DM)
    assert message.visible_text == "Here is *some* `code` and a list:\n\n- one\n- two"
    assert message.text == "Here is _some_ `code` and a list:\n\n• one\n• two"  # mrkdwn fallback
    assert message.edits >= 1


async def test_a_429_on_append_stream_is_honoured_and_nothing_is_lost(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    slack.fail_next("chat.appendStream", retry_after=1)
    answer = long_answer(8)
    slack_app.openai.queue_reply(answer)
    slack_app.openai.chunk_delay = 0.001
    ts = new_ts()
    await slack_app.post_event(app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> go"))
    await slack_app.adapter.drain(within=30)

    assert words(slack.visible_texts(CHANNEL, ts)) == answer.split()
    limited = next(
        t for t, method, ok in slack.timeline if method == "chat.appendStream" and not ok
    )
    after = [
        t
        for t, method, _ in slack.timeline
        if method in ("chat.appendStream", "chat.stopStream") and t > limited
    ]
    assert after and min(after) - limited >= 0.95


async def test_a_429_on_chat_update_is_honoured_and_the_final_text_arrives(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    slack.native_streaming = False
    slack.fail_next("chat.update", retry_after=1)
    answer = long_answer(3)
    slack_app.openai.queue_reply(answer)
    slack_app.openai.chunk_delay = 0.001
    ts = new_ts()
    await slack_app.post_event(app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> go"))
    await slack_app.adapter.drain(within=30)

    assert words(slack.visible_texts(CHANNEL, ts)) == answer.split()
    limited = next(t for t, method, ok in slack.timeline if method == "chat.update" and not ok)
    after = [t for t, method, _ in slack.timeline if method == "chat.update" and t > limited]
    assert after and min(after) - limited >= 0.95


async def test_a_slack_server_error_on_posting_is_retried_without_asking_the_model_again(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    slack.native_streaming = False
    slack.fail_next("chat.postMessage", "internal_error", status=500, times=2)
    slack_app.openai.queue_reply("worth the wait")
    ts = new_ts()
    await slack_app.post_event(app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> go"))
    await slack_app.adapter.drain(within=30)

    assert slack.visible_texts(CHANNEL, ts) == ["worth the wait"]
    assert len(slack_app.openai.chat_requests()) == 1


async def test_a_flagged_answer_is_withdrawn_and_replaced_by_a_notice(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    slack_app.openai.queue_reply("this answer says FLAGME and must not stay")
    ts = new_ts()
    await slack_app.post_event(app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> hi"))
    await slack_app.adapter.drain()

    texts = slack.visible_texts(CHANNEL, ts)
    assert len(texts) == 1
    assert "FLAGME" not in texts[0]


async def test_an_empty_answer_and_one_cut_at_the_reply_limit_are_explained(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    slack_app.openai.queue_reply("")
    empty_ts = new_ts()
    await slack_app.post_event(
        app_mention_event(channel=CHANNEL, ts=empty_ts, text="<@U0BOT> hello?")
    )
    await slack_app.adapter.drain()
    slack_app.openai.queue_reply("Part one of a longer story")
    slack_app.openai.finish_reason = "length"
    cut_ts = new_ts()
    await slack_app.post_event(
        app_mention_event(channel=CHANNEL, ts=cut_ts, text="<@U0BOT> tell me a story")
    )
    await slack_app.adapter.drain()

    assert slack.visible_texts(CHANNEL, empty_ts) == [
        ":warning: The model sent back an empty answer. Please try again, or put it another way."
    ]
    assert slack.visible_texts(CHANNEL, cut_ts) == [
        "Part one of a longer story\n\n[cut off at the reply length limit]"
    ]
    assert not any(m.streaming for m in slack.visible(CHANNEL))  # no stream left open


def code_answer(lines: int) -> str:
    body = "\n".join(
        f"    result_{i} = compute_value({i}) + offset  # step {i}" for i in range(lines)
    )
    return (
        "Here is the script:\n\n```python\ndef main():\n" + body + "\n```\n\nRun it with python."
    )


def fence_lines(markdown: str) -> list[str]:
    return [line for line in markdown.split("\n") if line.startswith("```")]


def without_fences(texts: list[str]) -> list[str]:
    """The lines of `texts`, the fence lines a split added left out."""
    return [line for text in texts for line in text.split("\n") if not line.startswith("```")]


async def test_a_long_code_answer_in_a_dm_keeps_its_code_block_across_messages(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    answer = code_answer(120)
    assert 4_000 < len(answer) < 8_000
    slack_app.openai.queue_reply(answer)
    await slack_app.post_event(message_event(channel=DM, text="write me a long script"))
    await slack_app.adapter.drain(within=30)

    texts = slack.visible_texts(DM)
    assert len(texts) == 2
    # Each message is Markdown that renders on its own: the block closed, then reopened.
    assert fence_lines(texts[0]) == ["```python", "```"]
    assert texts[0].endswith("\n```")
    assert texts[1].startswith("```python\n")
    assert fence_lines(texts[1]) == ["```python", "```"]
    assert all(len(text) <= 4_000 for text in texts)
    assert without_fences(texts) == without_fences([answer])


async def test_a_long_code_answer_streamed_in_a_thread_keeps_its_code_block_across_messages(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    answer = code_answer(260)
    assert 11_000 < len(answer) < 20_000
    slack_app.openai.queue_reply(answer)
    ts = new_ts()
    await slack_app.post_event(
        app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> long script")
    )
    await slack_app.adapter.drain(within=30)

    texts = slack.visible_texts(CHANNEL, ts)
    assert len(texts) == 2
    assert slack.api_calls("chat.startStream")  # streamed natively
    assert fence_lines(texts[0]) == ["```python", "```"]
    assert texts[1].startswith("```python\n")
    assert fence_lines(texts[1]) == ["```python", "```"]
    assert all(len(text) <= 12_000 for text in texts)
    assert without_fences(texts) == without_fences([answer])
