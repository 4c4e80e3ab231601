"""Markdown (what models write) to Slack mrkdwn, via markdown-it-py's token stream."""

from __future__ import annotations

from collections.abc import Sequence

from markdown_it import MarkdownIt
from markdown_it.token import Token

_PARSER = MarkdownIt("commonmark").enable("strikethrough")


def escape(text: str) -> str:
    """Slack's three control characters, escaped as its docs require."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _inline(children: Sequence[Token], *, bold: bool = False) -> str:
    """mrkdwn for a paragraph's inline tokens; `bold`: all of it is made bold (a heading),
    so its own bold marks are left out ("## **Summary**" is `*Summary*`, not `**Summary**`)."""
    out: list[str] = []
    link: list[str] | None = None
    href = ""
    marks = {"strong": "*", "em": "_", "s": "~"}
    for tok in children:
        target = link if link is not None else out
        kind = tok.type
        if kind == "text":
            target.append(escape(tok.content))
        elif kind in ("softbreak", "hardbreak"):
            target.append("\n")
        elif kind == "code_inline":
            target.append(f"`{escape(tok.content)}`")
        elif bold and kind in ("strong_open", "strong_close"):
            continue
        elif kind.endswith(("_open", "_close")) and kind.rsplit("_", 1)[0] in marks:
            target.append(marks[kind.rsplit("_", 1)[0]])
        elif kind == "link_open":
            href = str(tok.attrGet("href") or "")
            link = []
        elif kind == "link_close" and link is not None:
            label = "".join(link)
            out.append(f"<{href}|{label}>" if label and label != escape(href) else f"<{href}>")
            link = None
        elif kind == "image":
            src = str(tok.attrGet("src") or "")
            out.append(f"<{src}|{escape(tok.content) or 'image'}>")
        elif kind in ("html_inline",):
            target.append(escape(tok.content))
    return "".join(out)


def to_mrkdwn(markdown: str) -> str:
    """Slack mrkdwn for a Markdown text: bold, italics, strike, code, links, lists, quotes."""
    lines: list[str] = []
    lists: list[list[int]] = []  # per open list: [is_ordered, next number]
    quote = 0
    heading = False
    item_prefix: str | None = None

    def emit(text: str) -> None:
        nonlocal item_prefix
        indent = "    " * max(len(lists) - 1, 0)
        for i, line in enumerate(text.split("\n")):
            if item_prefix is not None and i == 0:
                line = f"{indent}{item_prefix}{line}"
                item_prefix = None
            elif lists:
                line = f"{indent}   {line}"
            lines.append("> " * quote + line)

    for tok in _PARSER.parse(markdown):
        kind = tok.type
        if kind == "heading_open":
            heading = True
        elif kind == "heading_close":
            heading = False
            lines.append("")
        elif kind == "inline":
            text = _inline(tok.children or [], bold=heading)
            emit(f"*{text}*" if heading and text else text)
        elif kind == "paragraph_close" and not lists:
            lines.append("> " * quote if quote else "")
        elif kind in ("bullet_list_open", "ordered_list_open"):
            start = int(tok.attrGet("start") or 1)
            lists.append([int(kind == "ordered_list_open"), start])
        elif kind in ("bullet_list_close", "ordered_list_close"):
            lists.pop()
            if not lists:
                lines.append("")
        elif kind == "list_item_open" and lists:
            ordered, number = lists[-1]
            item_prefix = f"{number}. " if ordered else "• "
            lists[-1][1] = number + 1
        elif kind == "blockquote_open":
            quote += 1
        elif kind == "blockquote_close":
            quote -= 1
        elif kind in ("fence", "code_block"):
            body = escape(tok.content.rstrip("\n"))
            emit(f"```\n{body}\n```")
            lines.append("")
        elif kind == "hr":
            lines.append("──────────")
        elif kind == "html_block":
            emit(escape(tok.content.rstrip("\n")))
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines)
