"""Markdown to Telegram HTML, and splitting long answers: checked against the fake's parser."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bots.telegram.formatting import (
    markdown_to_html,
    open_fence,
    split_markdown,
    utf16_len,
)
from core.testing.fake_telegram import parse_html

MARKDOWN_BITS = st.sampled_from(
    [
        "**",
        "*",
        "_",
        "`",
        "```",
        "```python\n",
        "~~",
        "<",
        ">",
        "&",
        "&amp;",
        "[",
        "](http://x.y/?a=1&b=2)",
        "](javascript:x)",
        "# ",
        "> ",
        "- ",
        "1. ",
        "\n",
        "\n\n",
        "    ",
        "<b>",
        "</i>",
        "😀",
        "word ",
        "\\",
        "|",
    ]
)


@given(st.lists(MARKDOWN_BITS | st.text(max_size=8), max_size=40).map("".join))
@settings(max_examples=300, deadline=None)
def test_any_model_markdown_becomes_html_telegram_accepts(markdown: str) -> None:
    rendered = markdown_to_html(markdown)
    parse_html(rendered)  # raises ApiError (Telegram's "can't parse entities") if invalid


def test_markdown_renders_as_telegram_entities() -> None:
    text, entities = parse_html(
        markdown_to_html("# Title\n\n**bold** _it_ `code` [site](https://example.org)")
    )
    assert text == "Title\n\nbold it code site"
    kinds = [e["type"] for e in entities]
    assert kinds == ["bold", "bold", "italic", "code", "text_link"]


@given(
    st.lists(
        st.sampled_from(["word ", "longer_word ", "\n", "\n\n", "```\n", "```js\n", "é", "😀"]),
        max_size=3000,
    ).map("".join)
)
@settings(max_examples=60, deadline=None)
def test_split_parts_fit_and_never_leave_a_code_block_open(markdown: str) -> None:
    parts = split_markdown(markdown, 500)
    for i, part in enumerate(parts):
        assert utf16_len(part) <= 500
        if i < len(parts) - 1:
            assert open_fence(part) is None


def test_splitting_inside_a_code_block_closes_and_reopens_it() -> None:
    code = "```python\n" + "x = 1\n" * 200 + "```"
    parts = split_markdown(code, 300)
    assert len(parts) > 1
    assert all(p.startswith("```python\n") for p in parts)
    assert all(p.rstrip().endswith("```") for p in parts)
    assert (
        "".join(p.removeprefix("```python\n").removesuffix("```") for p in parts).count("x = 1")
        == 200
    )
