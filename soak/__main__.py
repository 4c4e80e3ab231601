"""`python -m soak`: the soak test's command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from core.testing.tokenizer import use_offline_tokenizer_files
from soak.run import SoakConfig, soak


def parse(argv: list[str] | None) -> SoakConfig:
    parser = argparse.ArgumentParser(
        prog="python -m soak",
        description="Push messages through the real core (in-process) while the fake model "
        "endpoint injects random faults; print lost / duplicated / p99. Exit 1 when a "
        "message was lost, doubled or answered out of its chat's order.",
    )
    parser.add_argument("--messages", type=int, default=10_000, help="messages (10000)")
    parser.add_argument("--chats", type=int, default=500, help="chats they spread over (500)")
    parser.add_argument("--concurrency", type=int, default=64, help="in flight at once (64)")
    parser.add_argument(
        "--fault-rate", type=float, default=0.1, help="share of chat requests that fail (0.1)"
    )
    parser.add_argument(
        "--duplicate-rate", type=float, default=0.05, help="share delivered twice (0.05)"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    parser.add_argument(
        "--database-url",
        help="e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/soak (an existing database; "
        "migrated on start). Default: a temporary SQLite file.",
    )
    args = parser.parse_args(argv)
    return SoakConfig(
        messages=args.messages,
        chats=max(1, min(args.chats, args.messages)),
        concurrency=args.concurrency,
        fault_rate=args.fault_rate,
        duplicate_rate=args.duplicate_rate,
        seed=args.seed,
        database_url=args.database_url,
    )


def main(argv: list[str] | None = None) -> int:
    config = parse(argv)
    use_offline_tokenizer_files(Path(__file__).resolve().parents[1])
    # Injected faults make the core log retries and failures; only a real surprise is shown.
    logging.basicConfig(level=logging.CRITICAL)
    report = asyncio.run(soak(config))
    print(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
