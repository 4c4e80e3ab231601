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

from tests.reliability.cluster import (
    Cluster,
    Replica,
    Telegram,
    answers,
    check_prompts_in_order,
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
