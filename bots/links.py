"""What the adapters' renderers share about links in an answer."""

from __future__ import annotations

import unicodedata

# Characters that show nothing though they are not spaces: Hangul and Braille blanks.
_FILLERS = frozenset("\u115f\u1160\u2800\u3164\uffa0")


def shows_nothing(text: str) -> bool:
    """Whether `text` shows nothing: only spaces, invisible format characters (zero-width
    spaces and joiners, U+2060, U+FEFF) and marks or fillers with nothing to show.

    A link whose words show nothing (`[\u200b](https://...)`, which a page the model read
    may lead it to write) would be one nobody sees: the renderers show its address instead.
    """
    return all(
        char.isspace()
        or char in _FILLERS
        or unicodedata.category(char) in ("Cc", "Cf", "Mn", "Me")
        for char in text
    )
