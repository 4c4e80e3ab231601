"""User stories: a bare address the model writes reaches the person as written. Its
underscores are no emphasis ("/json/__init__.py" is not "/json/init.py" with "init" bold),
file names stay file names, and code shows as written."""

from __future__ import annotations

from typing import Any

from tests.bots.telegram.conftest import PRIVATE_CHAT, Bot

URL = "https://github.com/python/cpython/blob/main/Lib/json/__init__.py"
ANSWER = (
    f"The package starts in {URL} (read it). See https://x.org/a_b_c. The files README.md, "
    f"core/service.py and example.py have _notes_ too. In code: `{URL}`; as a link: "
    f"[the same file]({URL}).\n\n```\n{URL}\n```"
)


def _words(text: str, entity: dict[str, Any]) -> str:
    """The text an entity covers (its offsets count UTF-16 units)."""
    units = text.encode("utf-16-le")
    start = entity["offset"] * 2
    return units[start : start + entity["length"] * 2].decode("utf-16-le")


async def test_a_bare_url_with_underscores_is_shown_as_written(bot: Bot) -> None:
    bot.openai.queue_reply(ANSWER)
    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "where does json start?"))

    (message,) = bot.telegram.chat_log(PRIVATE_CHAT)
    text = message.text
    assert f"The package starts in {URL} (read it)." in text
    assert "See https://x.org/a_b_c. The files README.md, core/service.py and example.py" in text
    kinds = {(e["type"], _words(text, e)) for e in message.entities}
    # Emphasis where the model meant it, and nowhere in an address.
    assert ("italic", "notes") in kinds
    assert not [kind for kind in kinds if kind[0] in ("bold", "italic") and kind[1] != "notes"]
    # Code as written; the one link the model made goes where it said; no file name is one.
    assert ("code", URL) in kinds and ("pre", URL) in kinds
    links = [(e["url"], _words(text, e)) for e in message.entities if e["type"] == "text_link"]
    assert links == [(URL, "the same file")]
