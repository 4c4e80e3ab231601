"""Runs the configured platform adapters beside the app's HTTP server."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Mapping
from typing import Protocol

from bots.http_server import HttpServer
from core.app import Core, tune_collector
from core.db import migrate
from core.ports import Restorer
from core.tokens import counter_for

log = logging.getLogger("relaybot.runner")


class PlatformAdapter(Restorer, Protocol):
    """What every platform adapter offers the runner (and `restore` for resumed work)."""

    async def setup(self) -> None:
        """Register HTTP routes (before the server starts) and prepare clients."""

    async def start(self) -> None:
        """Begin receiving events (polling, socket mode, or webhooks already routed)."""

    async def stop(self) -> None:
        """Stop receiving, then finish the work already received."""


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


async def run_platforms(core: Core, stop: asyncio.Event) -> None:
    """Start the HTTP server and every configured adapter; run until `stop` is set.

    A database never migrated stops the start with a ConfigError saying what to run. An
    adapter may take long to start, or never finish (slack_sdk retries a Socket Mode
    connection Slack refuses or cannot be reached for, for ever): `stop` ends the start too,
    and /readyz reports ready only once every adapter has started.

    On stop: adapters stop receiving and finish what they took, within the shutdown grace;
    whatever is still unfinished then is released for the next process to resume.
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
        if sweeper is not None:
            sweeper.cancel()
        try:
            async with asyncio.timeout(core.settings.shutdown_grace):
                for adapter in reversed(list(adapters.values())):
                    try:
                        await adapter.stop()
                    except Exception:
                        log.exception("error stopping %s", type(adapter).__name__)
        except TimeoutError:
            log.warning("shutdown grace period over; unfinished messages are released")
        await core.service.shutdown(grace=0)
        await server.stop()
        if frozen:
            # For a caller that goes on (tests, an embedding program).
            gc.unfreeze()
            gc.set_threshold(*thresholds)


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
