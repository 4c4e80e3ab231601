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

HELP_TEXT = (
    "I'm relaybot. Send me a message, a voice note or audio file and I'll answer.\n\n"
    + "\n".join(f"/{name} - {text}" for name, text in COMMANDS.items())
)

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
