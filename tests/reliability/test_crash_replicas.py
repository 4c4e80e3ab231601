"""kill -9 one of three replicas while messages flow: nothing lost, nothing doubled, in order.

The victim and the moment are drawn from a seeded random generator (RELAYBOT_TEST_SEED to
replay a run). Telegram's part is played as Telegram plays it: an update the killed process
never acknowledged is delivered again to another replica.
"""

from __future__ import annotations

import os
import random
import threading
from collections import Counter
from typing import Any

from core.testing.fake_slack import message_event
from tests.reliability.cluster import (
    Cluster,
    Replica,
    Slack,
    Telegram,
    answers,
    check_prompts_in_order,
    check_texts_asked_in_order,
    expected_history,
    spread,
    updates_for,
)

CHATS = [3001, 3002, 3003, 3004, 3005]
PER_CHAT = 6
SEED = int(os.environ.get("RELAYBOT_TEST_SEED", "20261125"))


def test_a_replica_killed_mid_flow_loses_nothing_and_keeps_each_chats_order(
    replicas: Cluster, telegram: Telegram
) -> None:
    cluster = replicas
    rng = random.Random(SEED)
    # Answers stream for a while, so the kill can land before, during or after a model call.
    cluster.openai.chunk_delay = 0.04
    plan = updates_for(cluster.telegram, CHATS, PER_CHAT)
    total = len(CHATS) * PER_CHAT
    live = cluster.live()
    victim = rng.choice(live)
    kill_after = rng.randint(total // 5, total // 2)  # acknowledged deliveries before the kill
    kill_delay = rng.uniform(0.0, 0.4)
    acked = threading.Condition()
    acked_count = 0

    def killer() -> None:
        with acked:
            acked.wait_for(lambda: acked_count >= kill_after, timeout=60)
        threading.Event().wait(kill_delay)
        victim.kill()

    def deliver_chat(chat: int, ups: list[dict[str, Any]]) -> None:
        nonlocal acked_count
        for i, update in enumerate(ups):
            target: Replica = live[(chat + i) % len(live)]
            telegram.deliver(update, target)
            with acked:
                acked_count += 1
                acked.notify_all()

    kill_thread = threading.Thread(target=killer, name="killer")
    kill_thread.start()
    spread(plan, deliver_chat)
    kill_thread.join(60)
    assert not victim.alive

    # The killed replica comes back (as an orchestrator restarts it) and takes work again.
    (restarted,) = cluster.start(1)
    extra = {chat: [cluster.telegram.text_update(chat, f"chat {chat} is back")] for chat in CHATS}
    for chat, (update,) in extra.items():
        telegram.deliver(update, restarted)
        plan[chat].extend([update])

    total += len(CHATS)
    cluster.wait_all_done(CHATS, total, within=60)
    context = (
        f"seed {SEED}: killed {victim.name} after {kill_after} acks + {kill_delay:.2f} s; "
        f"deliveries {telegram.deliveries}"
    )

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
    rng = random.Random(SEED + 1)
    cluster.openai.chunk_delay = 0.04
    team = cluster.slack.team_id
    said = {dm: [f"{dm} says {i}" for i in range(PER_CHAT)] for dm in SLACK_DMS}
    plan = {
        dm: [
            (message_event(channel=dm, text=text, team_id=team), f"Ev{dm}{i}")
            for i, text in enumerate(texts)
        ]
        for dm, texts in said.items()
    }
    total = len(SLACK_DMS) * PER_CHAT
    live = cluster.live()
    victim = rng.choice(live)
    kill_after = rng.randint(total // 5, total // 2)
    kill_delay = rng.uniform(0.0, 0.4)
    acked = threading.Condition()
    acked_count = 0

    def killer() -> None:
        with acked:
            acked.wait_for(lambda: acked_count >= kill_after, timeout=60)
        threading.Event().wait(kill_delay)
        victim.kill()

    def deliver_dm(dm: str, events: list[tuple[dict[str, Any], str]]) -> None:
        nonlocal acked_count
        n = SLACK_DMS.index(dm)
        for i, (event, event_id) in enumerate(events):
            slack.deliver(event, event_id, live[(n + i) % len(live)])
            with acked:
                acked_count += 1
                acked.notify_all()

    kill_thread = threading.Thread(target=killer, name="killer")
    kill_thread.start()
    spread(plan, deliver_dm)
    kill_thread.join(60)
    assert not victim.alive

    (restarted,) = cluster.start(1)
    for dm in SLACK_DMS:
        text = f"{dm} is back"
        said[dm].append(text)
        event = message_event(channel=dm, text=text, team_id=team)
        slack.deliver(event, f"Ev{dm}back", restarted)
    total += len(SLACK_DMS)
    keys = [f"slack:{team}:{dm}" for dm in SLACK_DMS]
    cluster.wait_all_done(keys, total, within=60)
    context = (
        f"seed {SEED + 1}: killed {victim.name} after {kill_after} acks + {kill_delay:.2f} s; "
        f"deliveries {slack.deliveries}"
    )

    # What each person sees: exactly one answer per message, in the conversation's order.
    for dm, texts in said.items():
        shown = [m.visible_text for m in cluster.slack.visible(dm)]
        assert shown == [f"echo: {text}" for text in texts], context
    # What the model was asked, and what is stored: complete, ordered, nothing partial.
    asked = check_texts_asked_in_order(cluster.openai, {dm: t for dm, t in said.items()})
    assert len(asked) == total
    assert sorted(s for _, s in cluster.events(keys)) == ["done"] * total, context
    for dm, texts in said.items():
        rows = [r for t in texts for r in (("user", t, "ok"), ("assistant", f"echo: {t}", "ok"))]
        assert cluster.history(f"slack:{team}:{dm}") == rows, context
