"""Pinning a benchmark's server and its clients apart (`--server-cpus 0 --client-cpus 1`), so
that each one's CPU cost and latency are its own."""

from __future__ import annotations


def cpu_set(text: str | None) -> set[int] | None:
    """`"0,1"` → {0, 1}; None or empty → None (not pinned)."""
    return None if not text else {int(x) for x in text.split(",")}
