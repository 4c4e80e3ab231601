"""Offline tokenizer files for tests, benchmarks and soaks.

tiktoken downloads its BPE files on first use. Where nothing may reach the internet, point it
at a local copy (the files are hash-checked by tiktoken): the directory `shared/tiktoken-cache`
beside the checkout when there is one, else the copy in the project's test fixtures. A
`TIKTOKEN_CACHE_DIR` the user set always wins.
"""

from __future__ import annotations

import os
from pathlib import Path


def use_offline_tokenizer_files(repo: Path) -> str | None:
    """Set TIKTOKEN_CACHE_DIR (unless set) for the checkout at `repo`; returns what is used."""
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        for candidate in (
            repo.parent / "shared" / "tiktoken-cache",
            repo / "tests" / "fixtures" / "tiktoken-cache",
        ):
            if candidate.is_dir():
                os.environ["TIKTOKEN_CACHE_DIR"] = str(candidate)
                break
    return os.environ.get("TIKTOKEN_CACHE_DIR")
