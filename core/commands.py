"""Chat commands every platform shares: parsing and the help text."""

from __future__ import annotations

import re

COMMANDS: dict[str, str] = {
    "help": "show this help",
    "reset": "forget this chat's history",
    "system": "show or set this chat's system prompt: /system TEXT, /system default",
    "model": "list the chat models, or pick one for this chat: /model NAME",
    "image": "generate an image: /image PROMPT",
    "edit": "edit a photo: send or reply to a photo with /edit INSTRUCTION",
    "translate": "translate a voice note or audio file to English text",
    "retry": "regenerate the last answer",
    "voicemode": "in groups: answer voice notes, or only post their transcript: "
    "/voicemode transcript, /voicemode answer",
    "usage": "what you spent today, this month and in all (admins: everyone's)",
    "budget": "your budgets and what is left (admins: /budget user|chat|global ...)",
    "forget": "delete everything stored about this chat",
}

# Commands for groups only (a private chat has one voice to transcribe: its own).
GROUP_ONLY = frozenset({"voicemode"})
# What changes a group's conversation for everyone, so only its admins may (`Policy.admit`):
# these always, and these others when given an argument (without one they only show it).
CHANGES_THE_CHAT = frozenset({"reset", "forget"})
CHANGES_THE_CHAT_WITH_ARGS = frozenset({"system", "voicemode", "model"})


def changes_the_chat(name: str, args: str) -> bool:
    """Whether the command changes the conversation for everyone in it (rather than showing
    something): its history, system prompt, voice mode or model."""
    return name in CHANGES_THE_CHAT or (name in CHANGES_THE_CHAT_WITH_ARGS and bool(args))


# A platform that can show members and admins different command menus leaves these out of
# the members'. (`/model` stays: anyone may list the models.)
GROUP_ADMIN_ONLY = (CHANGES_THE_CHAT | CHANGES_THE_CHAT_WITH_ARGS) - {"model"}


def command_menu(*, group: bool, admin: bool = False) -> dict[str, str]:
    """The commands (name: description) worth offering in a private chat, or in a group to
    its admins or to its other members."""
    return {
        name: text
        for name, text in COMMANDS.items()
        if (group or name not in GROUP_ONLY)
        and (not group or admin or name not in GROUP_ADMIN_ONLY)
    }


# How the help marks, for a group's member, what only the group's admins may do.
_SETTING_WORDS = {"system": "setting it: ", "model": "picking one: "}
_FOR_GROUP_ADMINS = {
    name: f" ({_SETTING_WORDS.get(name, '')}group admins only)"
    for name in CHANGES_THE_CHAT | CHANGES_THE_CHAT_WITH_ARGS
}
_HELP_HEAD = "I'm relaybot. Send me a message, a voice note or audio file and I'll answer.\n\n"


_FOR_BOT_ADMINS = {"model": " (picking one: the bot's admins only)"}


def help_text(*, group: bool, member: bool = False, not_bot_admin: bool = False) -> str:
    """The help for a private chat (no group-only commands) or a group; `member`: the asker
    is one of the group's members whom the platform does not name an admin, so what needs
    its admins says so; `not_bot_admin`: the bot has admins (RELAYBOT_ADMINS) and the asker
    is not one, so what needs them says so."""
    marks = {
        **(_FOR_GROUP_ADMINS if member else {}),
        **(_FOR_BOT_ADMINS if not_bot_admin else {}),
    }
    lines = [
        f"/{name} - {text}{marks.get(name, '')}"
        for name, text in COMMANDS.items()
        if group or name not in GROUP_ONLY
    ]
    return _HELP_HEAD + "\n".join(lines)


HELP_TEXT = help_text(group=False)  # a private chat's (and the console's)

KNOWN = frozenset([*COMMANDS, "start"])
_COMMAND = re.compile(r"/([A-Za-z][A-Za-z_]{0,31})(?:\s+(.*))?$", re.DOTALL)


def parse_command(text: str) -> tuple[str, str] | None:
    """("name", "args") for "/name args"; None for ordinary text.

    Adapters strip platform decorations first (Telegram's "/cmd@botname").
    Text like a path ("/usr/bin is ...") is ordinary text, not a command.
    """
    match = _COMMAND.match(text.strip())
    if match is None:
        return None
    return match.group(1).lower(), (match.group(2) or "").strip()
