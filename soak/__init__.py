"""Soak test: thousands of messages through the real core with random upstream faults.

`python -m soak --messages 10000` (see `python -m soak --help`); prints lost / duplicated /
out of order / latency and exits 1 when any message was lost, doubled or answered out of
its chat's order.
"""
