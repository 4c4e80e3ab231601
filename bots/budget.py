"""Platform rate budgets where finished messages go first and previews take what is spare.

Telegram (sends and edits per group and overall) and Slack (chat.update per workspace) both
cap how often a bot may write. A streamed answer's previews are optional; its finished
messages are not. Each budget is an aiolimiter leaky bucket: finished messages wait for
room in it, a preview goes only while `reserve` of it would stay free.
"""

from __future__ import annotations

from aiolimiter import AsyncLimiter


def preview_wait(limiter: AsyncLimiter, reserve: float) -> float:
    """0 when a preview fits and leaves `reserve` (a share) of `limiter` free, else how long
    to wait before asking again: the time one message takes to drain from it."""
    spare = limiter.max_rate * (1 - reserve)
    if limiter.has_capacity(limiter.max_rate - spare + 1):
        return 0.0
    return limiter.time_period / limiter.max_rate
