"""Where the adapters may cut a long answer into messages, and the Markdown parsing they share.

A cut never splits a grapheme cluster (what a person sees as one character: a flag, an
emoji with its skin tone, a letter with its accent) and, when it can, no inline construct
either: each message is rendered on its own, and half a "**bold**" or "[link](url)" shows
its Markdown. Positions are indices into the text; each adapter finds how far its own limit
reaches (Telegram counts UTF-16 units, Slack characters) and asks `cut_point` where to cut.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Callable
from functools import cache

from markdown_it import MarkdownIt
from markdown_it.rules_inline import StateInline
from markdown_it.token import Token

# A Markdown code fence line: up to three spaces, then ``` or ~~~ (or longer), info string.
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
MARKS = frozenset({"Mn", "Mc", "Me"})  # combining marks: accents, vowel signs, keycaps


def with_bare_links(md: MarkdownIt) -> MarkdownIt:
    """`md` making links of the bare addresses the model writes, as GitHub does: only those
    with a scheme (http://, https://, mailto:, ...). Without it an address's underscores
    read as emphasis (".../json/__init__.py" shown as ".../json/init.py", "init" bold).

    Not fuzzy ones: "README.md" or "core/service.py" are file names, though .md and .py are
    country domains; nor bare e-mail addresses, nor "//host/path"."""
    if md.linkify is None:
        raise ModuleNotFoundError("linkify-it-py is missing: install markdown-it-py[linkify]")
    md.options["linkify"] = True
    md.enable("linkify")
    md.linkify.set({"fuzzy_link": False, "fuzzy_email": False, "fuzzy_ip": False})
    md.linkify.add("//", None)
    # Their words (and an <autolink>'s) as written: decoded, "%20" would end the address
    # where a platform finds it in the text, and "%E2%80%AE" turn the text around.
    md.normalizeLinkText = _as_written  # type: ignore[method-assign,assignment]
    return md


def _as_written(url: str) -> str:
    return url


# -- grapheme clusters ----------------------------------------------------------------------
# These extend the character before them. Approximately Unicode's rules (UAX #29), enough
# for emoji sequences, flags, keycaps and accented letters written with combining marks.
_EXTENDERS = re.compile(
    "[\u200c\u200d\ufe00-\ufe0f\u20e3\U0001f3fb-\U0001f3ff"
    "\U000e0020-\U000e007f\U000e0100-\U000e01ef]"
)


def _regional_indicator(char: str) -> bool:
    return "\U0001f1e6" <= char <= "\U0001f1ff"


def inside_cluster(text: str, at: int) -> bool:
    """Whether cutting `text` at `at` would split a grapheme cluster."""
    if at <= 0 or at >= len(text):
        return False
    before, after = text[at - 1], text[at]
    if before == "\u200d" or _EXTENDERS.match(after) or unicodedata.category(after) in MARKS:
        return True
    if before == "\r" and after == "\n":
        return True
    if _regional_indicator(before) and _regional_indicator(after):
        # Flags are pairs of regional indicators: inside one when an odd number precede.
        run = 0
        while at - run > 0 and _regional_indicator(text[at - run - 1]):
            run += 1
        return run % 2 == 1
    return False


# -- inline constructs ----------------------------------------------------------------------
# A second parser finds where emphasis, strikethrough, code, links and bare addresses are in
# the source: its rules for them are wrapped to note the positions they start and end at
# (markdown-it's inline tokens carry none).
_UNFINISHED_LINK = re.compile(r"\[[^\]]*(?:\](?:\([^)]*)?)?")
_INLINE_MARKUP = re.compile(r"[*_~`\[<]|://")
_SPAN_OPENERS = {"strong_open", "em_open", "s_open"}
_SPAN_CLOSERS = {"strong_close", "em_close", "s_close"}

InlineRule = Callable[[StateInline, bool], bool]


def _tracked(name: str, rule: InlineRule) -> InlineRule:
    def track(state: StateInline, silent: bool) -> bool:
        if silent:
            return rule(state, silent)
        start = state.pos
        spans: list[tuple[int, int | None]] = state.env["spans"]
        if name == "linkify":
            # It takes the scheme it found at "://" back from the pending text.
            pending = len(state.pending)
            if rule(state, silent):
                spans.append((start - (pending - len(state.pending)), state.pos))
                return True
            return False
        if state.pending:
            state.pushPending()  # so that what this rule pushes is its own
        tokens, delimiters = len(state.tokens), len(state.delimiters)
        matched = rule(state, silent)
        if name in ("emphasis", "strikethrough"):
            if matched:
                at = start
                for token in state.tokens[tokens:]:  # one per delimiter ("*", "~~")
                    token.meta["at"] = at
                    token.meta["width"] = len(token.content)
                    at += len(token.content)
                for delimiter in state.delimiters[delimiters:]:
                    if delimiter.open:
                        state.tokens[delimiter.token].meta["opens"] = True
        elif name == "backticks":
            if matched:  # a run with no closing run is pushed as text: unfinished code
                spans.append((start, state.pos if len(state.tokens) > tokens else None))
        elif matched:
            spans.append((start, state.pos))
        elif name in ("link", "image"):
            bracket = start + (name == "image")  # "![alt](...": an image
            if _UNFINISHED_LINK.fullmatch(state.src, bracket, state.posMax):
                spans.append((start, None))  # "[text" or "[text](http://exa": arriving
        return matched

    return track


@cache
def _span_parser() -> MarkdownIt:
    md = with_bare_links(MarkdownIt("commonmark", {"html": False}).enable("strikethrough"))
    names = ("linkify", "emphasis", "strikethrough", "backticks", "link", "image", "autolink")
    for name in names:
        rule = next(r.fn for r in md.inline.ruler.__rules__ if r.name == name)
        md.inline.ruler.at(name, _tracked(name, rule))
    # Unmatched delimiters keep their own tokens (and positions): no joining of text.
    md.inline.ruler2.disable("fragments_join")
    md.core.ruler.disable("text_join")
    return md


def _inline_spans(source: str) -> list[tuple[int, int]]:
    """(start, end) of the inline constructs in one paragraph's source, sorted and merged
    where they overlap. One that is not closed (yet: a streamed answer's end) runs to the
    end of the source."""
    env: dict[str, list[tuple[int, int | None]]] = {"spans": []}
    (inline,) = _span_parser().parseInline(source, env)
    found = [(start, len(source) if end is None else end) for start, end in env["spans"]]
    opened: list[Token] = []
    for token in inline.children or []:
        if token.type in _SPAN_OPENERS:
            opened.append(token)
        elif token.type in _SPAN_CLOSERS and opened:
            # The tokens of a "**" pair are its inner delimiters: the "*"s next to the text.
            opener = opened.pop()
            start = opener.meta.get("at", 0) + opener.meta.get("width", 0) - len(opener.markup)
            found.append((start, token.meta.get("at", len(source)) + len(token.markup)))
        elif token.type == "text" and token.content and token.meta.get("opens"):
            found.append((token.meta["at"], len(source)))  # "**" with no closing "**"
    merged: list[tuple[int, int]] = []
    for start, end in sorted(found):
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _paragraphs(text: str) -> list[tuple[int, int]]:
    """(start, end) of each run of non-blank lines outside code blocks: where inline
    constructs live (none crosses a blank line or a fence)."""
    found: list[tuple[int, int]] = []
    start: int | None = None
    end = 0
    marker = ""  # the open code block's fence
    pos = 0
    for line in text.split("\n"):
        m = FENCE.match(line)
        boundary = bool(marker) or m is not None or not line.strip()
        if marker:
            closing = m.group(1) if m is not None and not m.group(2).strip() else ""
            if closing[:1] == marker[0] and len(closing) >= len(marker):
                marker = ""
        elif m is not None and not (m.group(1)[0] == "`" and "`" in m.group(2)):
            marker = m.group(1)
        elif m is not None:
            boundary = False  # backticks in the "info string": not a fence
        if boundary:
            if start is not None:
                found.append((start, end))
            start = None
        else:
            if start is None:
                start = pos
            end = pos + len(line)
        pos += len(line) + 1
    if start is not None:
        found.append((start, end))
    return found


class Cuts:
    """Which cut positions of a text keep its inline formatting and its characters whole."""

    def __init__(self, text: str, horizon: int) -> None:
        self._text = text
        # Only text up to `horizon`, a little past the last possible cut, is looked at: a
        # span still open there crosses the cut just as it would if it closed later.
        self._paragraphs = _paragraphs(text[:horizon])
        self._starts = [start for start, _ in self._paragraphs]
        self._spans: dict[int, list[tuple[int, int]]] = {}

    def whole(self, at: int) -> bool:
        """Cutting at `at` splits no grapheme cluster."""
        return not inside_cluster(self._text, at)

    def clean(self, at: int) -> bool:
        """Cutting at `at` splits neither a grapheme cluster nor an inline construct."""
        if not self.whole(at):
            return False
        index = bisect.bisect_left(self._starts, at) - 1  # the last paragraph before `at`
        if index < 0 or at >= self._paragraphs[index][1]:
            return True  # between paragraphs, or in a code block
        start, end = self._paragraphs[index]
        spans = self._spans.get(start)
        if spans is None:
            source = self._text[start:end]
            plain = _INLINE_MARKUP.search(source) is None
            spans = self._spans[start] = [] if plain else _inline_spans(source)
        offset = at - start
        # The last span starting before `offset` (they are disjoint and sorted).
        found = bisect.bisect_left(spans, (offset, -1)) - 1
        return found < 0 or spans[found][1] <= offset


def cut_point(text: str, end: int, *, start: int = 0, defer: bool = False) -> int:
    """Where to cut `text` so that the head is `text[:cut]`, with `start` ≤ cut ≤ `end`
    (`end`: as far as the adapter's limit reaches; text before `start` was sent already,
    and is read only for the constructs open in it).

    Tried in turn: a paragraph, line or word boundary in the second half of the room
    (`start` to `end`), outside bold, italic, code, links and addresses; such a boundary in
    its second quarter; any place in its second half outside them (text with no spaces, as
    Chinese or Japanese is written); the best boundary in its second half; any place there.
    Never inside a grapheme cluster (unless one fills half the room).

    `defer`: the head tops up a message that holds text already: rather than cut a word or
    a construct in two, the head may be shorter, down to nothing (`start`: everything goes
    to the next message). Cuts stay in the room's second half or quarter otherwise, so that
    each part makes progress, even when a code block open at the cut is reopened in the rest.
    """
    end = max(min(end, len(text)), start)
    room = end - start
    cuts = Cuts(text, end + 64)
    separators = ("\n\n", "\n", " ")

    def boundaries(low: int, high: int) -> list[int]:
        found = []
        for separator in separators:
            at = text.rfind(separator, 0, high)
            while at > low:
                found.append(at + len(separator))
                at = text.rfind(separator, 0, at)
        return found

    half = start + room // 2
    late = boundaries(half, end)
    for at in late:
        if cuts.clean(at):
            return at
    for at in boundaries(start + room // 4, half + 1):
        if cuts.clean(at):
            return at
    if defer:
        for at in boundaries(start, start + room // 4 + 1):
            if cuts.clean(at):
                return at
        return start
    for at in range(end, half, -1):
        if cuts.clean(at):
            return at
    for at in late:
        if cuts.whole(at):
            return at
    at = end
    while at > half and not cuts.whole(at):
        at -= 1
    return at if cuts.whole(at) else max(end, start + 1)
