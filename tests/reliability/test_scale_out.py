"""Three `relaybot run` replicas on one PostgreSQL: every message answered once, in order."""

from __future__ import annotations

import threading
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.reliability.cluster import (
    Cluster,
    Slack,
    Telegram,
    answers,
    check_prompts_in_order,
    check_slack_conversations,
    expected_answers,
    expected_history,
    slack_events,
    spread,
    updates_for,
)

CHATS = [2001, 2002, 2003, 2004, 2005, 2006]
PER_CHAT = 5


def handled(replica_log: str, chats: list[int]) -> int:
    return sum(
        f'"handled message", "chat": "telegram:{chat}"' in line
        for line in replica_log.splitlines()
        for chat in chats
    )


def test_replicas_answer_every_message_once_in_each_chats_order(
    replicas: Cluster, telegram: Telegram
) -> None:
    cluster = replicas
    # A little streaming time per answer, so chats really wait for each other's turns.
    cluster.openai.chunk_delay = 0.01
    plan = updates_for(cluster.telegram, CHATS, PER_CHAT)
    live = cluster.live()

    def deliver_chat(chat: int, ups: list[dict[str, Any]]) -> None:
        for i, update in enumerate(ups):
            # The load balancer spreads one chat's updates over every replica.
            first = live[(chat + i) % len(live)]
            other = live[(chat + i + 1) % len(live)]
            if i % 3 == 0:
                # Telegram redelivers an update it saw no answer to: the same update lands
                # on two replicas at once.
                twin = threading.Thread(target=telegram.post, args=(other, update))
                twin.start()
                telegram.deliver(update, first)
                twin.join()
            else:
                telegram.deliver(update, first)
                if i % 3 == 1:
                    telegram.post(other, update)  # and a late duplicate after the 200

    spread(plan, deliver_chat)
    total = len(CHATS) * PER_CHAT
    cluster.wait_all_done(CHATS, total)

    # What each person sees: one answer per message, replying to it, in the chat's order.
    for chat, ups in plan.items():
        assert answers(cluster.telegram, chat) == expected_answers(ups)
    # What the model was asked: each request holds exactly that chat's earlier turns.
    asked = check_prompts_in_order(cluster.openai, plan)
    assert sorted(asked.values()) == [1] * total
    # What is stored: every event done, each chat's history complete and in order.
    assert sorted(s for _, s in cluster.events(CHATS)) == ["done"] * total
    for chat, ups in plan.items():
        assert cluster.history(f"telegram:{chat}") == expected_history(ups)
    # Every replica took a share of the work, and duplicates really were delivered.
    shares = {r.name: handled(r.log(), CHATS) for r in live}
    assert all(shares.values()), shares
    assert sum(shares.values()) == total
    assert len(telegram.deliveries) > total
    # Each replica's /metrics (on the same HTTP server as the webhook) counted its share.
    for replica in live:
        scrape = httpx.get(f"{replica.url}/metrics", timeout=10)
        assert scrape.status_code == 200
        counted = sum(
            sample.value
            for family in text_string_to_metric_families(scrape.text)
            for sample in family.samples
            if sample.name == "relaybot_messages_handled_total"
            and sample.labels == {"platform": "telegram", "outcome": "done"}
        )
        assert counted >= shares[replica.name] > 0


DMS = ["D0SCALE1", "D0SCALE2", "D0SCALE3", "D0SCALE4"]


def test_slack_events_spread_over_replicas_are_answered_once_in_each_conversations_order(
    replicas: Cluster, slack: Slack
) -> None:
    """Slack in HTTP mode behind one address: a conversation's events land on any replica,
    and Slack's retries of an event (same event id) on another one, even at once."""
    cluster = replicas
    cluster.openai.chunk_delay = 0.01
    team = cluster.slack.team_id
    said = {dm: [f"{dm} says {i}" for i in range(PER_CHAT)] for dm in DMS}
    events = slack_events(team, said)
    live = cluster.live()

    def deliver_dm(dm: str, plan: list[tuple[dict[str, Any], str]]) -> None:
        n = DMS.index(dm)
        for i, (event, event_id) in enumerate(plan):
            first = live[(n + i) % len(live)]
            other = live[(n + i + 1) % len(live)]
            if i % 3 == 0:
                # Slack gave up waiting and retries while the first delivery still runs.
                retry = threading.Thread(target=slack.post, args=(other, event, event_id, 1))
                retry.start()
                slack.deliver(event, event_id, first)
                retry.join()
            else:
                slack.deliver(event, event_id, first)
                if i % 3 == 1:
                    slack.post(other, event, event_id, retry_num=2)  # a late retry after the 200

    spread(events, deliver_dm)
    keys = [f"slack:{team}:{dm}" for dm in DMS]
    total = len(DMS) * PER_CHAT
    cluster.wait_all_done(keys, total)

    # One answer per message in each conversation, in order; each request holds exactly
    # that conversation's earlier turns; every event done, every history complete.
    asked = check_slack_conversations(cluster, said)
    assert sorted(asked.values()) == [1] * total
    # Every replica answered some, and the retries really were delivered.
    shares = {
        r.name: sum(
            f'"chat": "slack:{team}:{dm}"' in line and '"handled message"' in line
            for line in r.log().splitlines()
            for dm in DMS
        )
        for r in live
    }
    assert all(shares.values()), shares
    assert sum(shares.values()) == total
    assert len(slack.deliveries) > total
