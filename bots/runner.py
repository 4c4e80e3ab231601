"""Runs the configured platform adapters beside the app's HTTP server."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from bots.http_server import HttpServer
from core.app import Core, tune_collector
from core.db import migrate
from core.ports import Restorer
from core.tokens import counter_for

log = logging.getLogger("relaybot.runner")

# Closing the platforms' connections, after the answers in progress are done or released:
# moments, normally (a socket closed, a client pool shut). Not part of the shutdown grace.
CLOSING_SECONDS = 5.0


class PlatformAdapter(Restorer, Protocol):
    """What every platform adapter offers the runner (and `restore` for resumed work)."""

    async def setup(self) -> None:
        """Register HTTP routes (before the server starts) and prepare clients."""

    async def start(self) -> None:
        """Begin receiving events (polling, socket mode, or webhooks already routed)."""

    async def stop_receiving(self) -> None:
        """Take no more events (polling ends, Socket Mode disconnects, a webhook answers
        503); answers in progress go on, and the clients they send with stay open."""

    async def stop(self) -> None:
        """Stop receiving, then finish the work already received and close the clients."""


def configured_adapters(core: Core, server: HttpServer) -> dict[str, PlatformAdapter]:
    """One adapter per platform whose token is set, by platform name."""
    adapters: dict[str, PlatformAdapter] = {}
    if core.settings.telegram_bot_token is not None:
        from bots.telegram import TelegramAdapter

        adapters["telegram"] = TelegramAdapter(core, server)
    if core.settings.slack_bot_token is not None:
        from bots.slack import SlackAdapter

        adapters["slack"] = SlackAdapter(core, server)
    return adapters


async def sweep(core: Core, restorers: Mapping[str, Restorer]) -> None:
    """Periodically take over work whose process died (its lease ran out)."""
    interval = max(core.settings.lease_seconds / 2, 1.0)
    while True:
        await asyncio.sleep(interval)
        try:
            await core.service.resume(restorers)
        except Exception:
            log.exception("sweeping abandoned work failed")


async def _start_each(
    core: Core, adapters: Mapping[str, PlatformAdapter], starting: set[str]
) -> None:
    """Start each adapter in turn, taking its name out of `starting` once it has started,
    and resume its platform's unfinished work at once: before what it now receives waits
    for its chats' turns (a newer message must not overtake an older one left over), and
    whether or not the adapters after it ever start (Socket Mode may retry for ever)."""
    # A single SQLite process knows every open event is left over from its last run.
    alone = core.engine.dialect.name == "sqlite"
    for name, adapter in adapters.items():
        await adapter.start()
        starting.discard(name)
        await core.service.resume({name: adapter}, everything=alone)


async def run_platforms(
    core: Core, stop: asyncio.Event, hurry: asyncio.Event | None = None
) -> None:
    """Start the HTTP server and every configured adapter; run until `stop` is set.

    A database never migrated stops the start with a ConfigError saying what to run. An
    adapter may take long to start, or never finish (slack_sdk retries a Socket Mode
    connection Slack refuses or cannot be reached for, for ever): `stop` ends the start too,
    and /readyz reports ready only once every adapter has started.

    On stop: nothing new is taken (a new event gets no 2xx, so its platform delivers it
    again, to another replica or the next start), and every answer in progress, whether
    received or resumed (left over at start, or taken over from a dead replica), has what
    is left of the shutdown grace to finish; whatever is unfinished then is released for
    another process to resume. `hurry` (a second signal) releases it at once.
    """
    # Before taking any work: with --no-migrate (or RELAYBOT_AUTO_MIGRATE=false) on an empty
    # database every query would fail on a missing table.
    await migrate.require_migrated(core.engine)
    starting: set[str] = set()  # adapters not started yet

    async def readiness_problem() -> str | None:
        if stop.is_set():
            return "stopping"
        if starting:
            return f"{', '.join(sorted(starting))} not started yet"
        return await core.readiness_problem()

    server = HttpServer(
        core.settings.http_host,
        core.settings.http_port,
        ready_check=readiness_problem,
        metrics=core.service.metrics,
    )
    adapters = configured_adapters(core, server)
    starting.update(adapters)
    for adapter in adapters.values():
        await adapter.setup()
    # Loading the tokenizer blocks for most of a second: do it before taking work, not on the
    # first message, where it would stall every answer and lease renewal of this process.
    await asyncio.to_thread(counter_for, core.settings.chat_model)
    await server.start()
    log.info("HTTP server on %s:%s", server.host, server.port)
    sweeper: asyncio.Task[None] | None = None
    frozen = False
    try:
        if not await _started(core, adapters, starting, stop):
            pending = ", ".join(sorted(starting))
            log.info("stopping before start-up finished (not started: %s)", pending)
            return
        # Start-up is done. What is alive now (modules, the tokenizer, clients, compiled
        # regexes: ~150k objects) lives as long as the process, yet every full collection
        # would scan it again, stalling all answers for 60-105 ms. Freeze it out of the
        # collector's view (after collecting start-up's garbage, which would never go).
        gc.collect()
        gc.freeze()
        thresholds = gc.get_threshold()
        tune_collector()
        frozen = True
        # (Each platform's leftovers were resumed as its adapter started.)
        sweeper = asyncio.create_task(sweep(core, adapters), name="relaybot:sweeper")
        await stop.wait()
        log.info("stopping")
    finally:
        await _shut_down(core, adapters, server, sweeper, hurry)
        if frozen:
            # For a caller that goes on (tests, an embedding program).
            gc.unfreeze()
            gc.set_threshold(*thresholds)


async def _shut_down(
    core: Core,
    adapters: Mapping[str, PlatformAdapter],
    server: HttpServer,
    sweeper: asyncio.Task[None] | None,
    hurry: asyncio.Event | None,
) -> None:
    """Stop taking work, give the answers in progress the shutdown grace (counted from
    now), release what is unfinished, then close the platforms and the HTTP server."""
    loop = asyncio.get_running_loop()
    grace = core.settings.shutdown_grace
    deadline = loop.time() + grace
    # From here on a new event is not stored: the webhook or Events API request gets no 2xx
    # and the platform delivers it again (to another replica, or to the next start).
    core.service.accepting = False
    if sweeper is not None:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
    await _each_adapter(adapters, "stop receiving", lambda adapter: adapter.stop_receiving())
    # Every answer this process works on waits here, received or resumed alike; the
    # platforms' clients stay open meanwhile, so the answers can still be sent.
    released = await core.service.shutdown(grace=max(deadline - loop.time(), 0), hurry=hurry)
    if released and hurry is not None and hurry.is_set():
        log.warning(
            "stopped at once: %d unfinished message(s) released for another replica or "
            "the next start",
            released,
        )
    elif released:
        log.warning(
            "shutdown grace period (%g s) over: %d unfinished message(s) released for "
            "another replica or the next start",
            grace,
            released,
        )
    await _each_adapter(adapters, "stop", lambda adapter: adapter.stop())
    await server.stop()


async def _each_adapter(
    adapters: Mapping[str, PlatformAdapter],
    what: str,
    step: Callable[[PlatformAdapter], Awaitable[None]],
) -> None:
    """`step` for each adapter, last started first, each within CLOSING_SECONDS; a failure
    is logged and the others go on."""
    for name, adapter in reversed(list(adapters.items())):
        try:
            async with asyncio.timeout(CLOSING_SECONDS):
                await step(adapter)
        except TimeoutError:
            log.warning("%s: %s took over %g s; going on", name, what, CLOSING_SECONDS)
        except Exception:
            log.exception("error stopping %s", type(adapter).__name__)


async def _started(
    core: Core, adapters: Mapping[str, PlatformAdapter], starting: set[str], stop: asyncio.Event
) -> bool:
    """Start the adapters unless `stop` comes first: True when all started, False when
    stopped before (the start in progress is cancelled). A failed start raises."""
    start = asyncio.create_task(_start_each(core, adapters, starting), name="relaybot:start")
    stopped = asyncio.create_task(stop.wait(), name="relaybot:start-or-stop")
    try:
        await asyncio.wait((start, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not start.done():
            start.cancel()
        # Wait for the cancelled start to unwind (its adapter is stopped after this).
        await asyncio.gather(start, stopped, return_exceptions=True)
    if start.cancelled():
        return False
    start.result()  # a start that failed raises here
    return True
