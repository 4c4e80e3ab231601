"""A text the platform may have cut (IncomingMessage.continuation_id): how the core keeps the
mark across a restart, and how it joins the parts."""

from __future__ import annotations

import json

from core.inbox import decode_message, encode_message, storable
from core.service import _join_texts
from core.types import ChatRef, IncomingMessage, Sender


def _cut(**fields: object) -> IncomingMessage:
    return IncomingMessage(
        chat=ChatRef("telegram", "42"),
        sender=Sender("42", "ada"),
        event_key="telegram:42:7",
        text="x" * 4000,
        platform_message_id="7",
        **fields,  # type: ignore[arg-type]
    )


def test_the_mark_is_stored_with_the_event() -> None:
    msg = _cut(continuation_id="8")
    assert decode_message(msg.event_key, encode_message(msg)).continuation_id == "8"
    assert storable(_cut(continuation_id="\ud83d")).continuation_id == "\ufffd"


def test_an_event_stored_before_the_mark_existed_has_none() -> None:
    payload = json.loads(encode_message(_cut(continuation_id="8")))
    del payload["continuation_id"]
    assert decode_message("telegram:42:7", json.dumps(payload)).continuation_id is None


def test_parts_are_joined_on_a_new_line_unless_whitespace_already_parts_them() -> None:
    # The platform dropped what stood at the cut (a newline, mostly; a space at worst).
    assert _join_texts(["line 1", "line 2", "line 3"]) == "line 1\nline 2\nline 3"
    # Nothing was dropped: nothing is added.
    assert _join_texts(["line 1\n", "line 2"]) == "line 1\nline 2"
    assert (
        _join_texts(["cut after a space ", "of a sentence"]) == "cut after a space of a sentence"
    )
    assert _join_texts(["line 1", " line 2"]) == "line 1 line 2"
