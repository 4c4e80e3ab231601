"""The fake OpenAI endpoint with faults drawn at random, per chat request."""

from __future__ import annotations

import random
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass

from aiohttp import web

from core.testing.fake_openai import FakeOpenAI

# Where to cut the stream of the request being served (each request runs in its own task).
_CUT_AFTER: ContextVar[int | None] = ContextVar("soak_cut_after", default=None)


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Probabilities, per chat request, of each fault (the rest are answered normally)."""

    rate_limit: float = 0.04  # 429 rate_limit_exceeded with a short Retry-After
    server_error: float = 0.04  # 500 / 502 / 503
    cut_stream: float = 0.02  # the connection dropped after 0-3 pieces of the answer

    def scaled(self, total: float) -> FaultRates:
        """The same mix, adding up to `total`."""
        now = self.rate_limit + self.server_error + self.cut_stream
        k = total / now if now else 0.0
        return FaultRates(self.rate_limit * k, self.server_error * k, self.cut_stream * k)


class FaultyOpenAI(FakeOpenAI):
    """FakeOpenAI whose chat requests fail at random; `injected` counts what it did."""

    def __init__(self, rates: FaultRates, seed: int) -> None:
        super().__init__()
        self.rates = rates
        self.rng = random.Random(seed)
        self.injected: Counter[str] = Counter()

    @property  # type: ignore[override]
    def cut_stream_after(self) -> int | None:
        """Per request (see `_chat`), instead of one setting for every request."""
        return _CUT_AFTER.get()

    @cut_stream_after.setter
    def cut_stream_after(self, value: int | None) -> None:
        pass  # FakeOpenAI.__init__ sets it; the per-request value is drawn in `_chat`

    def _take_failure(self, path: str):  # type: ignore[no-untyped-def]
        if path.endswith("/chat/completions"):
            roll = self.rng.random()
            if roll < self.rates.rate_limit:
                self.injected["429 rate_limit_exceeded"] += 1
                self.fail_next(
                    429,
                    code="rate_limit_exceeded",
                    message="Rate limit reached for requests per min. Please try again.",
                    retry_after=round(self.rng.uniform(0.02, 0.2), 3),
                )
            elif roll < self.rates.rate_limit + self.rates.server_error:
                status = self.rng.choice([500, 502, 503])
                self.injected[f"{status}"] += 1
                self.fail_next(status, message="The server had an error processing the request.")
        return super()._take_failure(path)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        cut = None
        if self.rng.random() < self.rates.cut_stream:
            cut = self.rng.randint(0, 3)
            self.injected["cut stream"] += 1
        token = _CUT_AFTER.set(cut)
        try:
            return await super()._chat(request)
        finally:
            _CUT_AFTER.reset(token)
