"""Waiting on what a stream shows: a steady picture, and a picture that changed (tests compare
looks, not single frames: frames rendered before a change may still be on their way)."""

from __future__ import annotations

from typing import Any

import numpy as np


def differs(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 pictures (0–255)."""
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


async def settled(client: Any, tries: int = 60) -> np.ndarray:
    """A frame once the stream shows a steady picture (the same as the one before)."""
    last = None
    for _ in range(tries):
        image = (await client.recv(timeout_s=30)).to_ndarray(format="rgb24")
        if last is not None and differs(image, last) < 1.0:
            return image
        last = image
    raise AssertionError("the picture never settled")


async def away_from(client: Any, look: np.ndarray, tries: int = 60) -> np.ndarray:
    """The steady picture once frames stop looking like `look`."""
    for _ in range(tries):
        image = (await client.recv(timeout_s=30)).to_ndarray(format="rgb24")
        if differs(image, look) > 3.0:
            return await settled(client)
    raise AssertionError("the picture did not change")
