"""Model Markdown to Telegram HTML, and splitting long answers below Telegram's limit."""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Sequence

from markdown_it import MarkdownIt
from markdown_it.token import Token

from bots.links import shows_nothing
from bots.textcut import FENCE, MARKS, cut_point, with_bare_links

MAX_MESSAGE_UTF16 = 4096
MAX_CAPTION_UTF16 = 1024
# Where a streamed answer rolls over into a new message: below 4096 so that closing a code
# fence (and HTML rendering that is a little longer than the source) still fits.
SEGMENT_UTF16 = 3900

# Bare web addresses are links (only those with a scheme: see `with_bare_links`).
_md = with_bare_links(MarkdownIt("commonmark", {"html": False}).enable(["strikethrough", "table"]))
# Links the model may make: to the web (and e-mail). Any other link shows just its words.
# Not tg:// links: they act inside the Telegram app on the bot's word, which the bot cannot
# vouch for, since anyone can make the model write one. tg://user?id=N is a mention of a
# person (a text_mention) that Telegram refuses ("ENTITY_MENTION_USER_INVALID") unless the
# bot has seen them; others open a chat, join a group, set a proxy or fill in a login code.
# The address is not shown beside the words either: it means nothing to a reader (a
# number, a code), and Telegram clients may make a link of it again.
_SAFE_SCHEMES = ("http://", "https://", "mailto:")
_LANGUAGE = re.compile(r"[A-Za-z0-9_+#.-]{1,32}")
_TAGS = re.compile(r"<[^>]*>")


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit of Telegram's limits."""
    return len(text.encode("utf-16-le")) // 2


def _escape(text: str) -> str:
    return html.escape(text, quote=False)


def visible_text(telegram_html: str) -> str:
    """The text a person sees for an HTML message (our own output only: tags then entities)."""
    return html.unescape(_TAGS.sub("", telegram_html))


def display_width(text: str) -> int:
    """How many monospace columns `text` takes: wide (East Asian, most emoji) characters
    two, combining marks and invisible format characters none."""
    width = 0
    for char in text:
        category = unicodedata.category(char)
        if category in MARKS or category == "Cf":
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def _pad(text: str, width: int, align: str) -> str:
    room = max(0, width - display_width(text))
    if align == "right":
        return " " * room + text
    if align == "center":
        return " " * (room // 2) + text + " " * (room - room // 2)
    return text + " " * room


def _render_table(rows: list[list[tuple[str, str]]], header: int, pad: bool) -> str:
    """A table as a <pre> block: columns aligned by display width (`pad`), or else just
    separated (never longer than its Markdown source)."""
    columns = max((len(row) for row in rows), default=0)
    widths = [0] * columns
    if pad:
        for row in rows:
            for index, (text, _) in enumerate(row):
                widths[index] = max(widths[index], display_width(text))
    lines = []
    for number, row in enumerate(rows):
        cells = [_pad(text, widths[index], align) for index, (text, align) in enumerate(row)]
        lines.append(" | ".join(cells).rstrip())
        if number == header - 1:
            lines.append("-+-".join("-" * max(w, 1) for w in widths) if pad else "---")
    return "<pre>" + (_escape("\n".join(lines)) or " ") + "</pre>"


def markdown_to_html(markdown: str, *, pad_tables: bool = True) -> str:
    """Render the model's Markdown as the HTML subset Telegram accepts.

    Everything from the model is escaped; only tags this function writes reach Telegram.
    Tables become monospace blocks, their columns aligned unless `pad_tables` is False
    (padding can make a table longer than its source: too long for one message).
    """
    out: list[str] = []
    # The table being read: its rows of (cell text, alignment), and how many head rows.
    table: list[list[tuple[str, str]]] | None = None
    header_rows = 0
    align = "left"
    lists: list[list[int | None]] = []  # per open list: [next number] or [None] for bullets
    quotes = 0  # Telegram has no nested blockquotes: only the outermost one is tagged

    def trim() -> None:
        while out and out[-1].endswith("\n"):
            out[-1] = out[-1].rstrip("\n")
            if not out[-1]:
                out.pop()

    def block_end(newlines: str = "\n\n") -> None:
        trim()
        out.append(newlines)

    for token in _md.parse(markdown):
        kind = token.type
        if table is not None:
            if kind == "tr_open":
                table.append([])
            elif kind in ("th_open", "td_open"):
                style = str(token.attrGet("style") or "")
                align = style.removeprefix("text-align:") if style else "left"
            elif kind == "inline" and table:
                cell = visible_text(_render_inline(token.children or []))
                table[-1].append((" ".join(cell.split()), align))
            elif kind == "thead_close":
                header_rows = len(table)
            elif kind == "table_close":
                out.append(_render_table(table, header_rows, pad_tables))
                out.append("\n\n")
                table = None
            continue
        if kind == "table_open":
            table, header_rows = [], 0
        elif kind == "inline":
            out.append(_render_inline(token.children or []))
        elif kind == "paragraph_close":
            block_end("\n" if token.hidden else "\n\n")
        elif kind == "heading_open":
            out.append("<b>")
        elif kind == "heading_close":
            trim()
            out.append("</b>\n\n")
        elif kind == "bullet_list_open":
            lists.append([None])
        elif kind == "ordered_list_open":
            start = token.attrGet("start")
            lists.append([int(start) if isinstance(start, int | str) else 1])
        elif kind in ("bullet_list_close", "ordered_list_close"):
            lists.pop()
            if not lists:
                block_end()
        elif kind == "list_item_open":
            if out and not out[-1].endswith("\n"):
                out.append("\n")
            current: list[int | None] = lists[-1] if lists else [None]
            number = current[0]
            if number is None:
                marker = "•"
            else:
                marker = f"{number}."
                current[0] = number + 1
            out.append("  " * (len(lists) - 1) + marker + " ")
        elif kind == "list_item_close":
            block_end("\n")
        elif kind == "blockquote_open":
            quotes += 1
            if quotes == 1:
                out.append("<blockquote>")
        elif kind == "blockquote_close":
            quotes -= 1
            if quotes == 0:
                trim()
                out.append("</blockquote>\n\n")
        elif kind in ("fence", "code_block"):
            language = token.info.split()[0] if token.info.strip() else ""
            code = _escape(token.content.rstrip("\n")) or " "
            if language and _LANGUAGE.fullmatch(language):
                out.append(f'<pre><code class="language-{language}">{code}</code></pre>')
            else:
                out.append(f"<pre>{code}</pre>")
            out.append("\n\n")
        elif kind == "hr":
            out.append("——————\n\n")
        elif kind == "html_block":
            out.append(_escape(token.content))
    return "".join(out).strip()


def _label(children: Sequence[Token], start: int) -> str:
    """The words of the link opened at `children[start]`, as a person reads them."""
    words = []
    for child in children[start + 1 :]:
        if child.type == "link_close":
            break
        if child.type == "image":
            words.append(child.content or str(child.attrGet("alt") or ""))
        else:
            words.append(child.content)
    return "".join(words)


def _render_inline(children: Sequence[Token]) -> str:
    parts: list[str] = []
    links: list[bool] = []  # per open link: whether an <a> was written
    hidden = False  # inside a link with blank words: its address is shown instead
    for index, child in enumerate(children):
        kind = child.type
        if hidden:
            hidden = kind != "link_close"
            continue
        if kind == "text":
            parts.append(_escape(child.content))
        elif kind in ("softbreak", "hardbreak"):
            parts.append("\n")
        elif kind == "code_inline":
            parts.append(f"<code>{_escape(child.content)}</code>")
        elif kind == "strong_open":
            parts.append("<b>")
        elif kind == "strong_close":
            parts.append("</b>")
        elif kind == "em_open":
            parts.append("<i>")
        elif kind == "em_close":
            parts.append("</i>")
        elif kind == "s_open":
            parts.append("<s>")
        elif kind == "s_close":
            parts.append("</s>")
        elif kind == "link_open":
            if child.markup == "linkify":
                # A bare address: shown as written, and Telegram makes a link of it itself.
                parts.append(_escape(_label(children, index)))
                hidden = True
                continue
            href = str(child.attrGet("href") or "")
            safe = href.lower().startswith(_SAFE_SCHEMES)
            if safe and shows_nothing(_label(children, index)):
                parts.append(_escape(href))  # nothing hidden: the address, as text
                hidden = True
                continue
            links.append(safe)
            if safe:
                parts.append(f'<a href="{html.escape(href, quote=True)}">')
        elif kind == "link_close":
            if links and links.pop():
                parts.append("</a>")
        elif kind == "image":
            parts.append(_escape(child.content or str(child.attrGet("alt") or "")))
        elif kind == "html_inline":
            parts.append(_escape(child.content))
        else:
            parts.append(_escape(child.content))
    return "".join(parts)


# -- splitting -----------------------------------------------------------------------------
def open_fence(markdown: str) -> str | None:
    """The opening fence line of a code block left open at the end of `markdown`, if any."""
    opener: str | None = None
    marker = ""
    for line in markdown.split("\n"):
        m = FENCE.match(line)
        if m is None:
            continue
        fence, info = m.group(1), m.group(2)
        if opener is None:
            if fence[0] == "`" and "`" in info:
                continue  # not a fence: backticks in the info string
            opener, marker = line.strip(), fence
        elif fence[0] == marker[0] and len(fence) >= len(marker) and not info.strip():
            opener, marker = None, ""
    return opener


def _prefix_within(text: str, limit: int) -> int:
    """The largest index i such that text[:i] is at most `limit` UTF-16 units."""
    if utf16_len(text) <= limit:
        return len(text)
    lo, hi = 0, min(len(text), limit)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if utf16_len(text[:mid]) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


_TABLE_DELIMITER = re.compile(r"^ {0,3}\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")


def _table_header(head: str, tail: str) -> str | None:
    """The head and delimiter rows (with their newlines) of a table that `head` ends inside
    of and `tail` goes on with, else None."""
    if not head.endswith("\n") or head.endswith("\n\n") or open_fence(head) is not None:
        return None
    following = tail.split("\n", 1)[0]
    if "|" not in following or not following.strip():
        return None
    lines = head[:-1].split("\n")
    start = len(lines)
    while start > 0 and "|" in lines[start - 1] and lines[start - 1].strip():
        start -= 1
    block = lines[start:]
    for index in range(len(block) - 1):
        if _TABLE_DELIMITER.match(block[index + 1]) and "|" in block[index + 1] + block[index]:
            if index != 0:
                return None  # lines above the table: not a table that starts here
            return block[0] + "\n" + block[1] + "\n"
    return None


_ITEM_START = re.compile(r"[ \t]*(?:[-+*]|\d{1,9}[.)])(?:[ \t]+|$)")


def _indent(line: str) -> int:
    expanded = line.expandtabs(4)
    return len(expanded) - len(expanded.lstrip(" "))


def _indented_continuation(head: str, tail: str) -> str | None:
    """`tail` made to read as what it continues, when it starts with a line indented four
    spaces or more that is no code: a nested list's items ("    - detail") or a list item's
    further lines, which on their own would show as a code block. They go back under their
    items, each as its marker and "…" ("1. …"): the further lines Telegram streams in
    (indented alike) then fall in place under them. A paragraph's line that was indented
    just loses the indentation. None when `tail` needs nothing (or is code indeed)."""
    rest = tail.lstrip("\n")
    first = rest.split("\n", 1)[0]
    if not first.strip() or _indent(first) < 4:
        return None
    source = head + tail[: len(tail) - len(rest)] + first
    line = source.count("\n")
    lines = source.split("\n")
    items: list[Token] = []
    in_paragraph = False
    for token in _md.parse(source):
        if token.map is None or not token.map[0] <= line < token.map[1]:
            continue
        if token.type in ("code_block", "fence", "html_block", "blockquote_open", "table_open"):
            return None  # code, or a place an item's marker alone cannot take it back to
        if token.type == "list_item_open" and token.map[0] < line:
            items.append(token)
        elif token.type == "paragraph_open" and token.map[0] < line:
            in_paragraph = True
    if not items:
        return tail[: len(tail) - len(rest)] + rest.lstrip(" \t") if in_paragraph else None
    context = []
    for item in items:
        opening = lines[item.map[0]] if item.map is not None else ""
        marker = item.info + item.markup
        found = _ITEM_START.match(opening)
        if found is None or opening[: found.end()].strip() != marker:
            return None  # an item on another's line ("1. - a"), or inside a quote
        context.append(found.group(0).rstrip(" \t") + " …")
    return "\n".join(context) + "\n" + rest


def split_once(markdown: str, limit: int = SEGMENT_UTF16) -> tuple[str, str]:
    """Split off a head that fits `limit` (UTF-16 units); a code block open at the cut is
    closed in the head and reopened in the tail."""
    budget = limit - 4  # room for "\n```" closing an open fence
    # Not inside a character, nor (when it can) inside bold, a link or code: `cut_point`.
    cut = cut_point(markdown, _prefix_within(markdown, budget))
    head, tail = markdown[:cut], markdown[cut:]
    header = _table_header(head, tail)
    if header is not None and utf16_len(header) < cut // 2:
        # Cut between a table's rows: the rest is a table too (its head row repeated).
        return head.rstrip(), header + tail
    fence = open_fence(head)
    if fence is not None:
        closing = re.match(r"`+|~+", fence)
        marker = closing.group(0) if closing else "```"
        if utf16_len(fence) > 64:
            fence = marker
        head = head.rstrip("\n") + "\n" + marker
        tail = fence + "\n" + tail
    else:
        continued = _indented_continuation(head, tail)
        if continued is not None and utf16_len(continued) - utf16_len(tail) < cut // 2:
            tail = continued
        head = head.rstrip()
    return head, tail


def split_markdown(markdown: str, limit: int = SEGMENT_UTF16) -> list[str]:
    """Split a whole answer into parts that each fit `limit` UTF-16 units."""
    parts: list[str] = []
    rest = markdown
    while utf16_len(rest) > limit:
        head, rest = split_once(rest, limit)
        if head.strip():
            parts.append(head)
    if rest.strip():
        parts.append(rest)
    return parts
