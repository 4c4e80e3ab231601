"""Who may use the bot: allow-lists of users and chats per platform, and admins."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Collection
from typing import TYPE_CHECKING

from core.errors import ConfigError

if TYPE_CHECKING:
    from core.config import Settings
    from core.types import IncomingMessage

CONSOLE = "console"
# Platforms whose chat ids are qualified by the workspace: "TEAM:CHANNEL" (see `names_chat`).
WORKSPACE_PLATFORMS = frozenset({"slack"})
_SPLIT = re.compile(r"[,\s]+")


def parse_ids(
    setting: str, value: str, platforms: Collection[str] | None = None
) -> dict[str, frozenset[str]]:
    """ "telegram:123, slack:U456" -> {"telegram": {"123"}, "slack": {"U456"}}.

    Raises ConfigError naming `setting` for an entry that is not PLATFORM:ID or, given the
    `platforms` the bot runs on, names another one (the platform is taken in any case): a
    typo (`tg:123`, `telegarm:123`) would leave the platform it meant open to everyone."""
    found: dict[str, set[str]] = defaultdict(set)
    for item in _SPLIT.split(value.strip()):
        if not item:
            continue
        platform, sep, ident = item.partition(":")
        if not sep or not platform or not ident:
            raise ConfigError(
                f"{setting}: {item!r} should be PLATFORM:ID, e.g. telegram:123456 or slack:U0123"
            )
        if platforms is not None and platform.lower() not in platforms:
            known = sorted(platforms)
            raise ConfigError(
                f"{setting}: {item!r} names a platform relaybot does not run on; the "
                f"platforms are {', '.join(known[:-1])} and {known[-1]}"
            )
        found[platform.lower()].add(ident)
    return {platform: frozenset(ids) for platform, ids in found.items()}


class Access:
    """Allow-lists and admins from the settings.

    A platform with no entry in either list is open to everyone. Once a platform has entries,
    a message is let in when its sender is an allowed user or it comes from an allowed chat
    (so allowing a group lets all its members talk to the bot). Admins are always let in.
    With no admins configured, the person at the console is the admin (they run the process);
    `Policy.admit` then also lets anyone change their chat's model, as before admins existed.
    """

    def __init__(self, settings: Settings, platforms: Collection[str] | None = None) -> None:
        """`platforms`: those the bot runs on, for an entry naming another to be refused
        (the `relaybot` command's: core.types.PLATFORMS)."""
        self.users = parse_ids("RELAYBOT_ALLOWED_USERS", settings.allowed_users, platforms)
        self.chats = parse_ids("RELAYBOT_ALLOWED_CHATS", settings.allowed_chats, platforms)
        self.admins = parse_ids("RELAYBOT_ADMINS", settings.admins, platforms)

    def is_admin(self, platform: str, user_id: str) -> bool:
        """Whether this person may use admin commands."""
        if not self.admins:
            return platform == CONSOLE
        return user_id in self.admins.get(platform, frozenset())

    def allows(self, msg: IncomingMessage) -> bool:
        """Whether this message may be handled at all."""
        platform = msg.chat.platform
        users = self.users.get(platform)
        chats = self.chats.get(platform)
        if users is None and chats is None:
            return True
        if self.is_admin(platform, msg.sender.id):
            return True
        if msg.sender.id in (users or ()):
            return True
        return any(names_chat(platform, entry, msg.chat.chat_id) for entry in chats or ())


def names_chat(platform: str, entry: str, chat_id: str) -> bool:
    """Whether a configured chat id (the ID of PLATFORM:ID) names the chat `chat_id`.

    Where the platform qualifies a chat's id by its workspace ("TEAM:CHANNEL" on Slack), the
    channel's own id names it too, as people copy it from the app; the full id still works.
    Elsewhere a ":" is part of the chat's own id (console chat "work:notes" is not "notes").
    """
    if chat_id == entry:
        return True
    if platform not in WORKSPACE_PLATFORMS:
        return False
    _, sep, own = chat_id.partition(":")
    return bool(sep) and own == entry
