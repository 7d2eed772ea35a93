"""Frames between a front and a pipeline worker process on the same machine, in shared memory.

A Ray call that carries a 512² uint8 frame each way costs ~5 ms on loopback, most of it the
object store (a put, a fetch, a second copy back); the same call with a few bytes costs ~1.5 ms.
So when both ends are on one machine, the front lays each round's frames into a shared-memory
block it owns (`SharedBlock`), the call carries only where each frame lies (`Slot`), and the
worker writes its output chunks into a second block the front owns. Each side copies what it
reads, so a block can be reused by the next round (a front has one round in flight per worker).

Whether the worker can map the front's blocks (same machine, same /dev/shm) is probed once per
worker process; a worker elsewhere gets the frames inside the call, as before.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

MIN_BLOCK = 1 << 20
HEADROOM = 64 << 20
"""Free shared memory a new block must leave: a write past what tmpfs can hold is a SIGBUS,
not an error (a container's /dev/shm is often only 64 MB)."""
SHM_DIR = "/dev/shm"


class NoRoom(RuntimeError):
    """Shared memory (/dev/shm) has no room for a block that size."""


@dataclass(frozen=True)
class Slot:
    """Where one uint8 array lies in a block."""

    offset: int
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


_owned: set[str] = set()  # names of the blocks this process created (its tracker unlinks them)


def _attach(name: str) -> shared_memory.SharedMemory:
    """Map a block another process created, without adopting it: on Python < 3.13 the resource
    tracker of every process that maps a block would unlink it when that process exits."""
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)  # type: ignore[call-arg]
    from multiprocessing import resource_tracker

    block = shared_memory.SharedMemory(name=name)
    if block.name not in _owned:
        resource_tracker.unregister(block._name, "shared_memory")  # type: ignore[attr-defined]
    return block


def _release(block: shared_memory.SharedMemory, unlink: bool) -> None:
    with contextlib.suppress(BufferError):  # a view is still alive: the mapping goes with it
        block.close()
    if unlink:
        _owned.discard(block.name)
        with contextlib.suppress(FileNotFoundError):
            block.unlink()


def pack(buffer: memoryview, arrays: Sequence[np.ndarray | None]) -> tuple[list[Slot | None], int]:
    """Lay `arrays` back to back into `buffer` while they fit. Returns each one's slot (None
    for a None array or one that did not fit) and the bytes all of them need."""
    slots: list[Slot | None] = []
    offset = 0
    for array in arrays:
        if array is None:
            slots.append(None)
            continue
        array = np.ascontiguousarray(array, dtype=np.uint8)
        end = offset + array.nbytes
        if end <= len(buffer):
            target = np.frombuffer(buffer, np.uint8, array.nbytes, offset)
            target[:] = array.reshape(-1)
            del target
            slots.append(Slot(offset, tuple(array.shape)))
        else:
            slots.append(None)
        offset = end
    return slots, offset


def unpack(buffer: memoryview, slot: Slot) -> np.ndarray:
    """A copy of the array at `slot` (the block is reused by the next round)."""
    view = np.frombuffer(buffer, np.uint8, slot.nbytes, slot.offset)
    array = view.reshape(slot.shape).copy()
    del view
    return array


def _create(size: int) -> shared_memory.SharedMemory:
    if os.path.isdir(SHM_DIR):
        free = shutil.disk_usage(SHM_DIR).free
        if free < size + HEADROOM:
            raise NoRoom(f"{SHM_DIR} has {free >> 20} MiB free, a {size >> 20} MiB block needs "
                         f"{(size + HEADROOM) >> 20} MiB (docker: --shm-size)")
    block = shared_memory.SharedMemory(create=True, size=size)
    _owned.add(block.name)
    return block


class SharedBlock:
    """A shared-memory block this process owns (creates, grows, unlinks). Raises `NoRoom` when
    shared memory cannot hold it."""

    def __init__(self, size: int = MIN_BLOCK) -> None:
        self._block = _create(max(MIN_BLOCK, size))
        self._finalizer = weakref.finalize(self, _release, self._block, True)

    @property
    def name(self) -> str:
        return self._block.name

    @property
    def size(self) -> int:
        return self._block.size

    @property
    def buf(self) -> memoryview:
        buffer = self._block.buf
        assert buffer is not None
        return buffer

    def ensure(self, size: int) -> None:
        """Room for `size` bytes: a new, larger block (under a new name) when it lacks it.
        Raises `NoRoom` (the block is then closed)."""
        if size <= self.size:
            return
        self.close()
        self._block = _create(max(size * 5 // 4, MIN_BLOCK))
        self._finalizer = weakref.finalize(self, _release, self._block, True)

    def close(self) -> None:
        self._finalizer()


class Mapped:
    """The other side: the blocks of each owner (a front), mapped by name on first use. An
    owner that grows a block sends a new name: the old mapping goes; so do the mappings of an
    owner silent for `idle_s`. Safe to call from several threads."""

    def __init__(self, idle_s: float = 60.0) -> None:
        self.idle_s = idle_s
        self._owners: dict[str, tuple[dict[str, shared_memory.SharedMemory], float]] = {}
        self._lock = threading.Lock()

    def buffers(self, owner: str, names: Sequence[str]) -> list[memoryview]:
        """Raises FileNotFoundError when a block is not on this machine."""
        now = time.monotonic()
        with self._lock:
            blocks, _ = self._owners.get(owner, ({}, now))
            for name in set(blocks) - set(names):
                _release(blocks.pop(name), unlink=False)
            for name in names:
                if name not in blocks:
                    blocks[name] = _attach(name)
            self._owners[owner] = (blocks, now)
            for other, (old, used) in list(self._owners.items()):
                if now - used > self.idle_s:
                    del self._owners[other]
                    for block in old.values():
                        _release(block, unlink=False)
            buffers = [blocks[name].buf for name in names]
        return [b for b in buffers if b is not None]

    def close(self) -> None:
        with self._lock:
            for blocks, _ in self._owners.values():
                for block in blocks.values():
                    _release(block, unlink=False)
            self._owners.clear()


def probe_token() -> bytes:
    return secrets.token_bytes(16)


def can_map(name: str, token: bytes) -> bool:
    """True when this process can map the block `name` and it starts with `token` (the front
    that wrote it is on this machine and shares its /dev/shm)."""
    try:
        block = _attach(name)
    except (FileNotFoundError, OSError, ValueError):
        return False
    try:
        buffer = block.buf
        return buffer is not None and bytes(buffer[:len(token)]) == token
    finally:
        _release(block, unlink=False)
