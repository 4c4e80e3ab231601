"""The platform messages one streamed answer is written in (shared by the adapters' sinks).

An answer may roll over into several messages. Each is reported, in order, whenever the list
changes, so a successor can continue in them should this process die before the answer is
stored. A resumed answer starts with the messages an earlier run of it left: it writes into
those, in order, before creating any new one, and the ones it does not need are deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

log = logging.getLogger("relaybot.bots")

Ref = TypeVar("Ref")  # a platform's message id: Telegram's int, Slack's ts


class AnswerMessages(Generic[Ref]):
    """The answer's messages in order, and those an earlier run left, not used yet."""

    def __init__(
        self, earlier: Iterable[Ref], report: Callable[[tuple[Ref, ...]], None] | None
    ) -> None:
        self.written: list[Ref] = []
        self.earlier: list[Ref] = list(earlier)
        self._report = report

    def next_earlier(self) -> Ref | None:
        """The next message an earlier run left, now written in (None: there is none)."""
        if not self.earlier:
            return None
        ref = self.earlier.pop(0)
        self.written.append(ref)
        return ref

    def created(self, ref: Ref) -> None:
        """A new message of the answer exists."""
        self.written.append(ref)
        self.report()

    def lost(self, ref: Ref) -> list[Ref]:
        """`ref` can no longer be written in; a new message takes its place. The earlier
        run's messages not used yet would stand above that one, out of order: they are
        returned, to be deleted."""
        if ref in self.written:
            self.written.remove(ref)
        return self.unused()

    def unused(self) -> list[Ref]:
        """The earlier run's messages not used (forgotten here: the caller deletes them)."""
        unused, self.earlier = self.earlier, []
        return unused

    def keep_only(self, ref: Ref | None) -> list[Ref]:
        """Keep `ref` alone (None: none); the others, earlier ones included, to delete."""
        others = [r for r in (*self.written, *self.earlier) if r != ref]
        self.written = [] if ref is None else [ref]
        self.earlier = []
        return others

    def report(self) -> None:
        """Tell whoever asked which messages the answer is in now (with those to reuse)."""
        if self._report is None:
            return
        try:
            self._report((*self.written, *self.earlier))
        except Exception:
            log.warning("could not note the messages showing an answer", exc_info=True)
