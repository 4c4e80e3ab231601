"""Profile the per-message path with pyinstrument: `python -m bench.profile [sqlite|postgres]`."""

from __future__ import annotations

import asyncio
import sys
import time

from bench import harness
from bench.fake_proc import FakeProcess
from bench.harness import NullSink, bench_settings, message, metered_core


async def _run(base_url: str, url: str, count: int, history: int) -> None:
    from pyinstrument import Profiler

    from bench.scenarios import _prefill, _warm

    async with metered_core(bench_settings(base_url, url)) as core:
        await _warm(core, "warm")
        if history:
            await _prefill(core, "bench:long", history)
        sink = NullSink()
        profiler = Profiler(async_mode="enabled", interval=0.0005)
        started = time.perf_counter()
        with profiler:
            for i in range(count):
                chat = "long" if history else f"p{i // 10}"
                await core.service.handle(message(chat, i), sink)
        elapsed = time.perf_counter() - started
        print(f"{count} messages, {elapsed / count * 1000:.2f} ms each")
        print(profiler.output_text(unicode=True, color=False, show_all=False))


def main() -> None:
    """Profile `count` messages on the given backend."""
    backend = sys.argv[1] if len(sys.argv) > 1 else "sqlite"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    history = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    url = asyncio.run(harness.fresh_database(backend, "profile"))
    try:
        with FakeProcess() as fake:
            asyncio.run(_run(fake.base_url, url, count, history))
    finally:
        asyncio.run(harness.drop_databases())


if __name__ == "__main__":
    main()
