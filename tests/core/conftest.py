"""Shared set-up for core tests: tiktoken reads its BPE files from the offline cache."""

from __future__ import annotations

import os
from pathlib import Path

# Set at import time, before any test imports tiktoken encodings; a user's own setting wins.
_TIKTOKEN_CACHE = Path(__file__).parents[3] / "shared" / "tiktoken-cache"
if "TIKTOKEN_CACHE_DIR" not in os.environ and _TIKTOKEN_CACHE.is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_TIKTOKEN_CACHE)
