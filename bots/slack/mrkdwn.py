"""Markdown (what models write) to Slack mrkdwn, via markdown-it-py's token stream."""

from __future__ import annotations

import re
from collections.abc import Sequence

from markdown_it import MarkdownIt
from markdown_it.token import Token

from bots.links import shows_nothing
from bots.textcut import with_bare_links

# Bare web addresses are links (only those with a scheme: see `with_bare_links`).
_PARSER = with_bare_links(MarkdownIt("commonmark").enable("strikethrough"))
# Link targets Slack's `<url|label>` may carry: anything else there is markup of Slack's own
# (`<!channel|look>`, `<@U123|boss>` ping people), so a link to it is shown as its label.
_LINKABLE = re.compile(r"^(?:https?://|mailto:)", re.IGNORECASE)
# Where Slack may read a ping in text it formats itself (a markdown block, a stream's
# markdown_text): a person by id (`<@U123>`, `<@W123>`: an uppercase id), @here, @channel,
# @everyone (`<!group>` is the old @channel) and a user group (`<!subteam^S1>`). Not
# `<!--`, `<!DOCTYPE`, nor code such as Java's `List<@NonNull String>`, which stay as written.
_SPECIAL_STARTS = ("!here", "!channel", "!everyone", "!group", "!subteam")
_PING = re.compile(r"<(?=@[UW][A-Z0-9]|(?i:!(?:here|channel|everyone|group|subteam))\b)")
_LONGEST_START = max(len(start) for start in _SPECIAL_STARTS) + 1
# Between the "<" and the rest of a ping: what people read stays the same, and Slack no
# longer sees markup there.
ZERO_WIDTH_SPACE = "\u200b"


def escape(text: str) -> str:
    """Slack's three control characters, escaped as its docs require."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def defuse_pings(markdown: str) -> str:
    """`markdown` with no ping in it that Slack would act on: model output (or a prompt sent
    back) must not notify @channel, @here or a person by id. A zero-width space goes after
    the "<" of each; text that pings nobody is left as it was."""
    return _PING.sub("<" + ZERO_WIDTH_SPACE, markdown)


def unfinished_ping(text: str) -> int:
    """How many characters at the end of `text` may yet become a ping when more text
    follows (a streamed answer's "<", "<@", "<!chan"): those wait for the rest."""
    at = text.rfind("<", max(len(text) - _LONGEST_START, 0))
    if at < 0:
        return 0
    rest = text[at + 1 :]
    if rest in ("@", "@U", "@W") or any(s.startswith(rest.lower()) for s in _SPECIAL_STARTS):
        return len(text) - at
    return 0


def _linkable(target: str) -> bool:
    """Whether a link's target is a web or mail address (not Slack markup, not a path)."""
    return _LINKABLE.match(target) is not None and not any(c in target for c in "<>|")


# -- links that show nothing (see `bots.links.shows_nothing`) -----------------------------
_LINK_SYNTAX = re.compile(r"(\\.)|([\[\]()])")  # an escaped character, or a bracket or parenthesis


def _label(children: Sequence[Token], start: int) -> str:
    """The words of the link opened at `children[start]`, as a person reads them."""
    words = []
    for tok in children[start + 1 :]:
        if tok.type == "link_close":
            break
        words.append(tok.content)
    return "".join(words)


def _hides_link(markdown: str) -> bool:
    """Whether Slack, formatting `markdown` itself, would show a link (or an image's) whose
    words show nothing."""
    if "[" not in markdown:
        return False
    for block in _PARSER.parse(markdown):
        children = block.children or []
        for index, tok in enumerate(children):
            if tok.type == "link_open":
                target, words = str(tok.attrGet("href") or ""), _label(children, index)
            elif tok.type == "image":
                target, words = str(tok.attrGet("src") or ""), tok.content
            else:
                continue
            if _linkable(target) and shows_nothing(words):
                return True
    return False


def without_hidden_links(markdown: str, since: int = 0) -> str:
    """`markdown` for Slack to format itself (a markdown block, a stream's markdown_text)
    with no link in it that shows nothing: where it has one, the brackets and parentheses
    of its text from `since` on (what comes before was sent already) are escaped, so that
    it makes no links, and every address shows as written. Code blocks are left as written.

    Escaping all of them (not only the hidden link's) needs no position of a link in the
    source, which markdown-it does not give, and holds for a stream too: no link can end in
    the new text, nor a reference be defined there. Only a hostile answer has such a link."""
    if not _hides_link(markdown):
        return markdown
    starts = [0]
    for line in markdown.split("\n"):
        starts.append(starts[-1] + len(line) + 1)
    code = [
        (starts[block.map[0]], starts[block.map[1]])
        for block in _PARSER.parse(markdown)
        if block.type in ("fence", "code_block", "html_block") and block.map is not None
    ]
    out = [markdown[:since]]
    done = since
    for begin, end in [*code, (len(markdown), len(markdown))]:
        if end <= done:
            continue
        text = markdown[done : max(begin, done)]
        out.append(_LINK_SYNTAX.sub(lambda m: m.group(1) or "\\" + m.group(2), text))
        out.append(markdown[max(begin, done) : end])
        done = end
    return "".join(out)


def _inline(children: Sequence[Token], *, bold: bool = False) -> str:
    """mrkdwn for a paragraph's inline tokens; `bold`: all of it is made bold (a heading),
    so its own bold marks are left out ("## **Summary**" is `*Summary*`, not `**Summary**`)."""
    out: list[str] = []
    link: list[str] | None = None
    href = ""
    words = ""  # the link's words, as a person reads them
    marks = {"strong": "*", "em": "_", "s": "~"}
    for index, tok in enumerate(children):
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
            words = _label(children, index)
            link = []
        elif kind == "link_close" and link is not None:
            label = "".join(link)
            if not _linkable(href):
                out.append(label)  # `[look](!channel)` is "look", never `<!channel|look>`
            elif not shows_nothing(words) and label != escape(href):
                out.append(f"<{href}|{label}>")
            else:
                out.append(f"<{href}>")
            link = None
        elif kind == "image":
            src = str(tok.attrGet("src") or "")
            alt = escape(tok.content)
            label = "image" if shows_nothing(alt) else alt
            out.append(f"<{src}|{label}>" if _linkable(src) else alt)
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
