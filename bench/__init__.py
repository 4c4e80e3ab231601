"""relaybot's benchmark suite: `python -m bench` (see bench/README.md)."""

from __future__ import annotations

import os
from pathlib import Path

# tiktoken downloads its BPE files; offline we point it at the shared copy (as the tests do).
# Set on import so every spawned worker process gets it before tiktoken loads an encoding.
_shared_cache = Path(__file__).resolve().parents[2] / "shared" / "tiktoken-cache"
if "TIKTOKEN_CACHE_DIR" not in os.environ and _shared_cache.is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_shared_cache)
