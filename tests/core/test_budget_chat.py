"""A chat budget's subject is the channel or group, whichever thread a request was in."""

from __future__ import annotations

from core.accounting import budget_chat, spend_subjects
from core.types import ChatRef


def test_a_threads_key_counts_for_the_chat_its_chat_ref_names() -> None:
    for ref in (
        ChatRef("telegram", "-1002003004005", "7"),
        ChatRef("telegram", "-1002003004005"),
        ChatRef("telegram", "1001"),
        ChatRef("slack", "T0TEAM:C0GENERAL", "1700000000.000100"),
        ChatRef("slack", "T0TEAM:C0GENERAL"),
        ChatRef("slack", "T0TEAM:D0BOB", "1700000000.000200"),
        ChatRef("slack", "T0TEAM:D0BOB"),
        ChatRef("console", "default"),
    ):
        assert budget_chat(ref.key) == (ref.parent_key or ref.key)
        assert budget_chat(budget_chat(ref.key)) == budget_chat(ref.key)
    assert budget_chat("console:notes:2024") == "console:notes:2024"  # a console chat's name


def test_spend_counts_for_the_channel_not_the_thread() -> None:
    thread = ChatRef("slack", "T0TEAM:C0GENERAL", "1700000000.000100")
    assert spend_subjects("slack", "U0BOB", thread.key) == [
        ("user", "slack:U0BOB"),
        ("chat", "slack:T0TEAM:C0GENERAL"),
        ("global", ""),
    ]
