"""Frames in shared memory between two processes (pipeline/serving/ray_backend/shared_frames.py):
packing, growth, and a block mapped by another process (a real one, started with
multiprocessing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.serving.ray_backend import shared_frames
from pipeline.serving.ray_backend.shared_frames import (
    MIN_BLOCK,
    NoRoom,
    SharedBlock,
    Slot,
    can_map,
    pack,
    probe_token,
    unpack,
)

ROOT = Path(__file__).resolve().parents[3]


def test_arrays_round_trip_and_what_does_not_fit_is_left_out() -> None:
    block = SharedBlock()
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (2, 16, 16, 3), np.uint8)
    large = rng.integers(0, 256, (MIN_BLOCK,), np.uint8)  # does not fit after `small`
    slots, needed = pack(block.buf, [small, None, large])
    assert slots[1] is None and slots[2] is None and slots[0] is not None
    assert needed == small.nbytes + large.nbytes
    copy = unpack(block.buf, slots[0])
    assert np.array_equal(copy, small)
    pack(block.buf, [np.zeros_like(small)])  # the next round reuses the block
    assert np.array_equal(copy, small)  # what was read is a copy
    block.ensure(needed)
    slots, _ = pack(block.buf, [small, None, large])
    assert np.array_equal(unpack(block.buf, slots[2]), large)
    block.close()


def test_a_grown_block_has_a_new_name_and_the_old_one_is_gone() -> None:
    block = SharedBlock()
    old = block.name
    block.ensure(block.size)  # fits: unchanged
    assert block.name == old
    block.ensure(block.size + 1)
    assert block.name != old and block.size > MIN_BLOCK
    assert not can_map(old, b"")
    block.close()
    assert not can_map(block.name, b"")


CHILD = """
import sys
import numpy as np
from pipeline.serving.ray_backend.shared_frames import Mapped, can_map, pack
name, token = sys.argv[1], bytes.fromhex(sys.argv[2])
print(can_map(name, token), flush=True)
mapped = Mapped()
(buffer,) = mapped.buffers("front", [name])
pack(buffer, [np.full((4, 4, 3), 7, np.uint8)])
del buffer
mapped.close()
"""


def test_another_process_maps_the_block_and_leaves_it_to_its_owner() -> None:
    """Another process (as a Ray actor is: not a multiprocessing child) maps the block, checks
    the token, writes into it, and exits without unlinking it."""
    block = SharedBlock()
    token = probe_token()
    block.buf[:len(token)] = token
    done = subprocess.run([sys.executable, "-c", CHILD, block.name, token.hex()],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
    assert "leaked" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert can_map(block.name, b"")  # still there: the child's exit did not unlink it
    assert np.array_equal(unpack(block.buf, Slot(0, (4, 4, 3))), np.full((4, 4, 3), 7, np.uint8))
    assert not can_map(block.name, token)  # the child wrote over the token
    block.close()


def test_no_block_is_made_when_shared_memory_has_no_room(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A write past what /dev/shm holds would be a SIGBUS: refuse the block instead."""
    monkeypatch.setattr(shared_frames, "HEADROOM", 1 << 60)
    with pytest.raises(NoRoom, match="shm-size"):
        SharedBlock()
