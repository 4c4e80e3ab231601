"""/forget said by a group's admin in a forum group's General topic forgets the topics too."""

from __future__ import annotations

from sqlalchemy import select

from core.db.models import Chat, Message
from tests.bots.telegram.conftest import ADA, GROUP, Bot


async def test_forget_in_general_forgets_every_topic_of_the_group(bot: Bot) -> None:
    telegram = bot.telegram
    telegram.chat_admins[GROUP] = {ADA}
    await bot.deliver(telegram.text_update(GROUP, "@relay_test_bot the plan for General"))
    await bot.deliver(
        telegram.text_update(GROUP, "@relay_test_bot the plan for topic 7", message_thread_id=7)
    )
    await bot.deliver(
        telegram.text_update(GROUP, "/system Talk like a pirate", message_thread_id=7)
    )

    await bot.deliver(telegram.text_update(GROUP, "/forget"))

    async with bot.core.engine.connect() as conn:
        messages = (await conn.execute(select(Message.chat_key, Message.content))).all()
        chats = (await conn.execute(select(Chat.key))).all()
    assert messages == [] and chats == []
    assert telegram.texts(GROUP)[-1].startswith(
        "Done. I deleted everything stored about this chat and its thread ("
    )
