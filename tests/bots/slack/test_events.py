"""The pure conversion from Slack events to neutral messages, and Markdown to mrkdwn."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from bots.slack.events import (
    command_words,
    plain_text,
    to_incoming,
    translate_commands,
    unlabelled_users,
)
from bots.slack.mrkdwn import to_mrkdwn
from bots.slack.sink import split_text
from core.testing.fake_slack import (
    app_mention_event,
    bot_message_event,
    message_changed_event,
    message_event,
)
from core.types import AttachmentKind, ChatRef


async def _never() -> bytes:
    raise AssertionError("not fetched")


def _fetch_for(file: Mapping[str, Any]) -> Any:
    return _never


def convert(event: dict[str, Any], *, in_bot_thread: bool = False) -> Any:
    return to_incoming(
        event,
        team_id="T1",
        bot_user_id="UBOT",
        bot_id="BBOT",
        in_bot_thread=in_bot_thread,
        fetch_for=_fetch_for,
    )


def test_a_channel_mention_becomes_a_thread_conversation_without_the_mention() -> None:
    msg = convert(app_mention_event(channel="C1", ts="1.000001", text="<@UBOT>  hello"))
    assert msg.chat == ChatRef("slack", "T1:C1", "1.000001")
    assert msg.text == "hello"
    assert msg.event_key == "slack:C1:1.000001"
    assert not msg.is_direct


def test_app_mention_and_message_twins_share_one_event_key() -> None:
    a = convert(app_mention_event(channel="C1", ts="2.0", text="<@UBOT> x"))
    b = convert(message_event(channel="C1", ts="2.0", text="<@UBOT> x"))
    assert a.event_key == b.event_key and a.chat == b.chat


def test_thread_replies_need_a_mention_unless_the_bot_is_in_the_thread() -> None:
    reply = message_event(channel="C1", thread_ts="3.0", text="more")
    assert convert(reply) is None
    assert convert(reply, in_bot_thread=True).chat.thread_id == "3.0"


def test_dms_are_answered_and_a_dm_thread_is_its_own_conversation() -> None:
    top = convert(message_event(channel="D1", text="hi"))
    threaded = convert(message_event(channel="D1", thread_ts="4.0", text="hi"))
    assert top.is_direct and top.chat.thread_id is None
    assert threaded.chat.thread_id == "4.0"


@pytest.mark.parametrize(
    "event",
    [
        bot_message_event(channel="C1", text="<@UBOT> hi"),
        bot_message_event(channel="D1", text="mine", bot_id="BBOT", user="UBOT"),
        message_event(channel="C1", text="no mention"),
        message_changed_event(channel="D1", ts="5.0", new_text="edit"),
        {**message_event(channel="D1", text="joined"), "subtype": "channel_join"},
    ],
)
def test_bots_edits_joins_and_chatter_are_ignored(event: dict[str, Any]) -> None:
    assert convert(event) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("reset", "/reset"),
        ("Help", "/help"),
        ("help me write a poem", "help me write a poem"),
        ("model", "/model"),
        ("model gpt-4o", "/model gpt-4o"),
        ("Model o3", "/model o3"),
        ("model llama3.1:8b", "/model llama3.1:8b"),
        ("model: gpt-4o", "/model gpt-4o"),
        ("model:gpt-4o-mini", "/model gpt-4o-mini"),
        ("model: default", "/model default"),
        ("model default", "model default"),
        ("Model comparison?", "Model comparison?"),
        ("model v2?", "model v2?"),
        ("model trains are fun to build", "model trains are fun to build"),
        ("system", "/system"),
        ("System:", "/system"),
        ("system: You are a pirate.", "/system You are a pirate."),
        ("System:default", "/system default"),
        ("system You are a pirate.", "system You are a pirate."),
        ("System requirements for PostgreSQL 16?", "System requirements for PostgreSQL 16?"),
        ("voicemode", "/voicemode"),
        ("voicemode transcript", "/voicemode transcript"),
        ("image: a red fox", "/image a red fox"),
        ("Image:a red fox", "/image a red fox"),
        ("/retry", "/retry"),
        ("just chatting", "just chatting"),
        ("translate", "/translate"),
        ("translate this into French", "translate this into French"),
        ("budget", "/budget"),
        ("budget chat here month 20", "/budget chat here month 20"),
        ("budget here is tight", "budget here is tight"),
        ("budget meetings are long", "budget meetings are long"),
        ("usage slack:U0BOB", "/usage slack:U0BOB"),
        ("usage of the word", "usage of the word"),
        ("Edit: I meant Tuesday", "Edit: I meant Tuesday"),
    ],
)
def test_text_commands_translate_to_core_commands(text: str, expected: str) -> None:
    assert translate_commands(text) == expected


def test_edit_with_a_colon_is_a_command_only_on_a_message_with_an_image() -> None:
    assert translate_commands("edit: make the sky pink", with_image=True) == (
        "/edit make the sky pink"
    )
    assert translate_commands("Edit: I meant Tuesday") == "Edit: I meant Tuesday"


def test_image_with_a_colon_on_a_message_with_an_image_is_talk_about_it() -> None:
    question = "Image: what does this chart show?"
    assert translate_commands(question, with_image=True) == question
    assert translate_commands("image: a red fox") == "/image a red fox"


def test_slack_markup_becomes_the_text_people_see() -> None:
    names = {"U0BOB": "bob"}
    assert plain_text("<@U0BOB> and <@U0EVE>, <@U0CAROL|carol>", names) == (
        "@bob and @U0EVE, @carol"
    )
    assert plain_text("<#C1|general> <#C2> <#C3|>") == "#general #C2 #C3"
    assert plain_text("<!here> <!channel> <!everyone> <!here|here>") == (
        "@here @channel @everyone @here"
    )
    assert plain_text("<!subteam^S1|@team> <!subteam^S2>") == "@team @S2"
    assert plain_text("<!date^1392734382^{date_pretty}|Feb 18, 2014>") == "Feb 18, 2014"
    assert plain_text("<https://x.test/a?b=1&amp;c=2|the docs>") == (
        "the docs (https://x.test/a?b=1&c=2)"
    )
    assert plain_text("<https://x.test> <http://example.com|example.com>") == (
        "https://x.test example.com"
    )
    assert plain_text("<mailto:a@b.test|a@b.test> <mailto:s@b.test|Sales>") == (
        "a@b.test Sales (s@b.test)"
    )
    # &amp; last: what the person typed as "&lt;" stays "&lt;".
    assert plain_text("a &lt; b &gt; c &amp;&amp; &amp;lt;") == "a < b > c && &lt;"
    assert unlabelled_users("<@UBOT> <@U1> <@U2|two> <@U1> <@W3>", "UBOT") == ["U1", "W3"]


def test_a_message_reaches_the_core_as_plain_text_commands_translated() -> None:
    msg = convert(app_mention_event(channel="C1", text="<@UBOT> image: a cat &amp; <@U1> &lt;3"))
    assert msg.text == "/image a cat & @U1 <3"


def test_notices_name_commands_the_way_people_type_them_in_slack() -> None:
    assert (
        command_words("Describe the image: /image PROMPT") == "Describe the image: `image:` PROMPT"
    )
    # system and model: the colon only where an argument follows.
    assert command_words("/system - show or set: /system TEXT, /system default") == (
        "`system` - show or set: `system:` TEXT, `system:` default"
    )
    assert command_words("Send /model to pick another, or /model default.") == (
        "Send `model` to pick another, or `model:` default."
    )
    assert command_words("Pick one with /model NAME. /model WORD lists") == (
        "Pick one with `model:` NAME. `model:` WORD lists"
    )
    assert (
        command_words("Send /help to see, /budget user X") == "Send `help` to see, `budget` user X"
    )
    # Only the core's commands, and not inside paths or words.
    assert command_words("see /usr/bin and a/reset, /resetting") == (
        "see /usr/bin and a/reset, /resetting"
    )


def test_files_become_audio_and_image_attachments() -> None:
    files = [
        {"id": "F1", "name": "clip.m4a", "mimetype": "audio/mp4", "size": 10},
        {"id": "F2", "name": "screen.mov", "mimetype": "video/quicktime", "size": 10},
        {"id": "F3", "name": "cat.png", "mimetype": "image/png", "size": 10},
        {"id": "F4", "name": "notes.pdf", "mimetype": "application/pdf"},
    ]
    msg = convert(message_event(channel="D1", files=files))
    kinds = [a.kind for a in msg.attachments]
    assert kinds == [
        AttachmentKind.AUDIO,
        AttachmentKind.AUDIO,
        AttachmentKind.IMAGE,
        AttachmentKind.FILE,
    ]
    assert msg.attachments[0].filename == "clip.m4a" and msg.attachments[0].size == 10


def test_markdown_becomes_slack_mrkdwn() -> None:
    md = (
        "# Title\n\n**bold**, _it_, ~~gone~~, `a<b`, [docs](https://x.test) & more\n\n- one\n- two"
    )
    assert to_mrkdwn(md) == (
        "*Title*\n\n*bold*, _it_, ~gone~, `a&lt;b`, <https://x.test|docs> &amp; more\n\n"
        "• one\n• two"
    )


def test_long_text_splits_at_paragraphs_within_the_limit() -> None:
    head, rest = split_text("a" * 50 + "\n\n" + "b" * 50, 80)
    assert head == "a" * 50 and rest == "b" * 50


def test_topping_up_a_full_message_never_cuts_a_word_in_two() -> None:
    text = "Relaybot streams long answers"
    # Room for 7 characters left in the current message: "Relaybo" would cut the word.
    assert split_text(text, 7, may_defer=True) == ("", text)
    # With a word break in reach, the head ends there even if it is short.
    assert split_text(text, 12, may_defer=True) == ("Relaybot", "streams long answers")


def test_a_split_inside_a_code_block_closes_it_and_reopens_it_with_its_language() -> None:
    code = "\n".join(f"x = {i}" for i in range(30))
    text = f"Intro\n\n````python\n{code}\n````\n\nDone."
    head, rest = split_text(text, 100)
    assert len(head) <= 100
    assert head.startswith("Intro\n\n````python\nx = 0\n") and head.endswith("\n````")
    assert rest.startswith("````python\nx = ")
    assert head.count("````") == 2 and rest.count("````") == 2
    # Text before the split (a message being topped up) may hold the opening fence.
    head, rest = split_text(code, 40, before="Look:\n```py\n")
    assert head.endswith("\n```") and rest.startswith("```py\n")
    # Closed blocks and text without any are left as they were.
    closed = "```\nx = 1\n```\n\n" + "word " * 40
    head, rest = split_text(closed, 60)
    assert head.startswith("```\nx = 1\n```\n\nword") and head.count("```") == 2
    assert "```" not in rest
