"""kill -9 one of three replicas while messages flow: nothing lost, nothing doubled, in order.

The victim and the moment are drawn from a seeded random generator (RELAYBOT_TEST_SEED to
replay a run). Telegram's part is played as Telegram plays it: an update the killed process
never acknowledged is delivered again to another replica.
"""

from __future__ import annotations

import os
import random
from collections import Counter

from core.testing.fake_slack import message_event
from tests.reliability.cluster import (
    Cluster,
    Slack,
    Telegram,
    answers,
    check_prompts_in_order,
    check_slack_conversations,
    deliver_and_kill_one,
    expected_history,
    slack_events,
    updates_for,
)

CHATS = [3001, 3002, 3003, 3004, 3005]
PER_CHAT = 6
SEED = int(os.environ.get("RELAYBOT_TEST_SEED", "20261125"))


def test_a_replica_killed_mid_flow_loses_nothing_and_keeps_each_chats_order(
    replicas: Cluster, telegram: Telegram
) -> None:
    cluster = replicas
    # Answers stream for a while, so the kill can land before, during or after a model call.
    cluster.openai.chunk_delay = 0.04
    plan = updates_for(cluster.telegram, CHATS, PER_CHAT)
    kill = deliver_and_kill_one(cluster, random.Random(SEED), plan, telegram.deliver)

    # The killed replica comes back (as an orchestrator restarts it) and takes work again.
    (restarted,) = cluster.start(1)
    extra = {chat: [cluster.telegram.text_update(chat, f"chat {chat} is back")] for chat in CHATS}
    for chat, (update,) in extra.items():
        telegram.deliver(update, restarted)
        plan[chat].extend([update])

    total = len(CHATS) * (PER_CHAT + 1)
    cluster.wait_all_done(CHATS, total, within=60)
    context = f"seed {SEED}: {kill}; deliveries {telegram.deliveries}"

    # What each person sees: every message answered, replying to it, in the chat's order;
    # at most one message answered twice (sent, then killed before it was stored).
    doubled = 0
    for chat, ups in plan.items():
        got = answers(cluster.telegram, chat)
        replied = Counter(reply_to for reply_to, _ in got)
        ids = [u["message"]["message_id"] for u in ups]
        assert sorted(replied) == ids, context
        doubled += sum(n - 1 for n in replied.values())
        first_seen = list(dict.fromkeys(reply_to for reply_to, _ in got))
        assert first_seen == ids, context
        texts = {u["message"]["message_id"]: "echo: " + u["message"]["text"] for u in ups}
        assert all(text == texts[reply_to] for reply_to, text in got), context
    assert doubled <= 1, context
    # What the model was asked: always that chat's complete history, in order.
    asked = check_prompts_in_order(cluster.openai, plan)
    assert len(asked) == total
    # What is stored: every event done, every history complete, ordered, nothing partial.
    assert sorted(s for _, s in cluster.events(CHATS)) == ["done"] * total, context
    for chat, ups in plan.items():
        assert cluster.history(f"telegram:{chat}") == expected_history(ups), context


SLACK_DMS = ["D0CRASH1", "D0CRASH2", "D0CRASH3", "D0CRASH4"]


def test_a_replica_killed_while_slack_events_flow_answers_each_exactly_once(
    replicas: Cluster, slack: Slack
) -> None:
    """Slack's part: every message an answer, none twice. A streamed answer the killed
    replica had begun is finished in its message by the replica that resumes it, found by
    its note or, when the note never landed, by its metadata."""
    cluster = replicas
    cluster.openai.chunk_delay = 0.04
    team = cluster.slack.team_id
    said = {dm: [f"{dm} says {i}" for i in range(PER_CHAT)] for dm in SLACK_DMS}
    kill = deliver_and_kill_one(
        cluster,
        random.Random(SEED + 1),
        slack_events(team, said),
        lambda item, replica: slack.deliver(*item, replica),
    )

    (restarted,) = cluster.start(1)
    for dm in SLACK_DMS:
        text = f"{dm} is back"
        said[dm].append(text)
        slack.deliver(message_event(channel=dm, text=text, team_id=team), f"Ev{dm}back", restarted)
    total = len(SLACK_DMS) * (PER_CHAT + 1)
    cluster.wait_all_done([f"slack:{team}:{dm}" for dm in SLACK_DMS], total, within=60)

    # Exactly one answer per message in each conversation, in order; the model always asked
    # with that conversation's complete history; every event done, every history complete.
    try:
        asked = check_slack_conversations(cluster, said)
    except AssertionError as err:
        raise AssertionError(f"seed {SEED + 1}: {kill}; deliveries {slack.deliveries}") from err
    assert len(asked) == total
