"""User stories: what people type in Slack reaches the model as they wrote it, and talk that
happens to start like a command is talk."""

from __future__ import annotations

from bots.slack.events import plain_text
from core.testing.fake_openai import make_png
from core.testing.fake_slack import app_mention_event, message_event, new_ts
from tests.bots.slack.conftest import SlackApp

CHANNEL = "C0GENERAL"
DM = "D0ALICE"


def last_user_text(slack_app: SlackApp) -> str:
    content = slack_app.openai.chat_requests()[-1]["messages"][-1]["content"]
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if part["type"] == "text")
    return str(content)


async def test_slacks_markup_reaches_the_model_as_the_plain_text_people_see(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    slack.add_user("U0BOB", "bob")
    # What Slack sends for: @relaybot is a < b && c > d? Ask @bob or @carol in #dev or
    # #C0OPS, @here, @oncall. See the docs (https://x.test/?a=1&b=2), https://y.test,
    # mail bob@x.test or Write to us (sales@x.test)
    text = (
        "<@U0BOT> is a &lt; b &amp;&amp; c &gt; d? Ask <@U0BOB> or <@U0CAROL|carol> in "
        "<#C0DEV|dev> or <#C0OPS>, <!here>, <!subteam^S0ONCALL|@oncall>. See "
        "<https://x.test/?a=1&amp;b=2|the docs>, <https://y.test>, mail "
        "<mailto:bob@x.test|bob@x.test> or <mailto:sales@x.test|Write to us>"
    )
    ts = new_ts()
    await slack_app.post_event(app_mention_event(channel=CHANNEL, ts=ts, text=text))
    await slack.wait_for("/api/chat.stopStream")
    await slack_app.adapter.drain()

    assert last_user_text(slack_app) == (
        "is a < b && c > d? Ask @bob or @carol in #dev or #C0OPS, @here, @oncall. See "
        "the docs (https://x.test/?a=1&b=2), https://y.test, mail bob@x.test or "
        "Write to us (sales@x.test)"
    )
    # The mentioned person was looked up (once); the bot itself never.
    assert [args["user"] for args in slack.api_arguments("users.info")].count("U0BOB") == 1
    assert "U0BOT" not in [args["user"] for args in slack.api_arguments("users.info")]


async def test_an_image_prompt_reaches_the_image_model_decoded(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    await slack_app.post_event(message_event(channel=DM, text="image: a cat &amp; a dog, &lt;3"))
    await slack.wait_for("/api/files.completeUploadExternal")
    await slack_app.adapter.drain()

    (generation,) = slack_app.openai.calls("/images/generations")
    assert generation.json["prompt"] == "a cat & a dog, <3"
    (message,) = slack.visible(DM)
    # The picture's comment is mrkdwn, escaped as Slack wants: people read the prompt.
    assert message.text == "a cat &amp; a dog, &lt;3"
    assert plain_text(message.text) == "a cat & a dog, <3"


async def say_in_dm(slack_app: SlackApp, text: str) -> str:
    """Send `text` in the DM; the bot's reply."""
    slack = slack_app.slack
    before = len(slack.visible(DM))
    await slack_app.post_event(message_event(channel=DM, text=text))
    await slack.wait_until(lambda: len(slack.visible(DM)) > before)
    await slack_app.adapter.drain()
    return slack.visible_texts(DM)[-1]


async def test_questions_that_start_with_system_or_model_are_answered(
    slack_app: SlackApp,
) -> None:
    for question in ["System requirements for PostgreSQL 16?", "Model comparison?", "model x?"]:
        assert await say_in_dm(slack_app, question) == f"echo: {question}"

    system_prompt = slack_app.openai.chat_requests()[-1]["messages"][0]["content"]
    assert system_prompt == slack_app.adapter.core.settings.system_prompt


async def test_the_system_prompt_is_set_with_a_colon_and_shown_without(
    slack_app: SlackApp,
) -> None:
    await say_in_dm(slack_app, "system: You are a pirate.")
    assert "You are a pirate." in await say_in_dm(slack_app, "system")
    assert await say_in_dm(slack_app, "ahoy?") == "echo: ahoy?"

    (request,) = slack_app.openai.chat_requests()
    assert request["messages"][0]["content"] == "You are a pirate."


async def test_help_shows_the_colon_where_system_and_model_take_an_argument(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    await slack_app.post_event(message_event(channel=DM, text="help"))
    await slack.wait_until(lambda: len(slack.visible(DM)) == 1)
    await slack_app.adapter.drain()

    (help_text,) = slack.visible_texts(DM)
    assert "`system` - show or set this chat's system prompt: `system:` TEXT, " in help_text
    assert "`system:` default" in help_text
    assert "`model` - list the chat models, or pick one for this chat: `model:` NAME" in help_text


async def test_image_colon_on_a_picture_is_a_question_about_it(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    chart = slack.add_file(make_png(4, 4), name="chart.png", mimetype="image/png")
    await slack_app.post_event(
        message_event(channel=DM, text="Image: what does this chart show?", files=[chart])
    )
    await slack.wait_until(lambda: bool(slack.visible(DM)))
    await slack_app.adapter.drain()

    assert slack_app.openai.calls("/images/generations") == []
    assert last_user_text(slack_app) == "Image: what does this chart show?"
    content = slack_app.openai.chat_requests()[-1]["messages"][-1]["content"]
    assert [part["type"] for part in content] == ["text", "image_url"]
    assert slack.visible_texts(DM) == ["echo: Image: what does this chart show?"]
