"""relaybot's benchmark suite: `python -m bench` (see bench/README.md)."""

from __future__ import annotations

from pathlib import Path

from core.testing.tokenizer import use_offline_tokenizer_files

# tiktoken downloads its BPE files; offline we point it at a local copy (as the tests do).
# Set on import so every spawned worker process gets it before tiktoken loads an encoding.
use_offline_tokenizer_files(Path(__file__).resolve().parents[1])
