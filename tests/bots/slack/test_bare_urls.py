"""User stories: a bare address the model writes reaches the person as written. Its
underscores are no emphasis ("/json/__init__.py" is not "/json/init.py" with "init" in
italics), file names stay file names, and code shows as written."""

from __future__ import annotations

import pytest

from core.testing.fake_slack import message_event
from tests.bots.slack.conftest import SlackApp

DM = "D0ALICE"
URL = "https://github.com/python/cpython/blob/main/Lib/json/__init__.py"
ANSWER = (
    f"The package starts in {URL} (read it). See https://x.org/a_b_c. The files README.md, "
    f"core/service.py and example.py have _notes_ too. In code: `{URL}`; as a link: "
    f"[the same file]({URL}).\n\n```\n{URL}\n```"
)
# The mrkdwn text: each address a link to itself (the dot after one is the sentence's).
MRKDWN = (
    f"The package starts in <{URL}> (read it). See <https://x.org/a_b_c>. The files "
    f"README.md, core/service.py and example.py have _notes_ too. In code: `{URL}`; as a "
    f"link: <{URL}|the same file>.\n\n```\n{URL}\n```"
)


@pytest.mark.parametrize("native", [True, False], ids=["streamed", "edited"])
async def test_a_bare_url_with_underscores_is_shown_as_written(
    slack_app: SlackApp, native: bool
) -> None:
    slack = slack_app.slack
    slack.native_streaming = native
    slack_app.openai.queue_reply(ANSWER)
    await slack_app.post_event(message_event(channel=DM, text="where does json start?"))
    await slack.wait_until(lambda: bool(slack.visible(DM)))
    await slack_app.adapter.drain()

    (message,) = slack.visible(DM)
    assert message.visible_text == ANSWER, "Slack formats the Markdown as the model wrote it"
    assert message.text == MRKDWN, "the text notifications and older clients show"
