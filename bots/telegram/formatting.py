"""Model Markdown to Telegram HTML, and splitting long answers below Telegram's limit."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

from markdown_it import MarkdownIt
from markdown_it.token import Token

MAX_MESSAGE_UTF16 = 4096
MAX_CAPTION_UTF16 = 1024
# Where a streamed answer rolls over into a new message: below 4096 so that closing a code
# fence (and HTML rendering that is a little longer than the source) still fits.
SEGMENT_UTF16 = 3900

_md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("strikethrough")
_SAFE_SCHEMES = ("http://", "https://", "tg://", "mailto:")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
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


def markdown_to_html(markdown: str) -> str:
    """Render the model's Markdown as the HTML subset Telegram accepts.

    Everything from the model is escaped; only tags this function writes reach Telegram.
    """
    out: list[str] = []
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
        if kind == "inline":
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


def _render_inline(children: Sequence[Token]) -> str:
    parts: list[str] = []
    links: list[bool] = []  # per open link: whether an <a> was written
    for child in children:
        kind = child.type
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
            href = str(child.attrGet("href") or "")
            safe = href.lower().startswith(_SAFE_SCHEMES)
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
        m = _FENCE.match(line)
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


def _cut_point(text: str, limit: int) -> int:
    """Where to cut `text` so the head fits `limit`: a paragraph, line or word boundary."""
    end = _prefix_within(text, limit)
    window = text[:end]
    for separator in ("\n\n", "\n", " "):
        at = window.rfind(separator)
        if at > end // 2:
            return at + len(separator)
    return max(end, 1)


def split_once(markdown: str, limit: int = SEGMENT_UTF16) -> tuple[str, str]:
    """Split off a head that fits `limit` (UTF-16 units); a code block open at the cut is
    closed in the head and reopened in the tail."""
    budget = limit - 4  # room for "\n```" closing an open fence
    cut = _cut_point(markdown, budget)
    head, tail = markdown[:cut], markdown[cut:]
    fence = open_fence(head)
    if fence is not None:
        closing = re.match(r"`+|~+", fence)
        marker = closing.group(0) if closing else "```"
        if utf16_len(fence) > 64:
            fence = marker
        head = head.rstrip("\n") + "\n" + marker
        tail = fence + "\n" + tail
    else:
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
