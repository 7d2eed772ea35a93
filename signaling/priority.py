"""Thread priorities: work that can be shed yields the CPU to work that cannot.

On a CPU-bound server every received packet must be handled and every received frame decoded
(a video decoder cannot skip frames), but encoding is latest-wins: a frame the encoder has no
time for is dropped. When the CPU runs short, the encoder threads run at a slightly lower
priority, so the event loop and the decoders keep up and frames are shed instead of queued
(benchmarks/transport.py: p95 in seconds without it, ~150-200 ms with it at 16 sessions on one
shared core). The pipeline worker keeps its priority: on a machine busy with other programs it
must not starve. Linux only: elsewhere a thread id is not a valid target for setpriority.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

SHEDDABLE_NICENESS = 5
"""How much lower sheddable threads run (nice +5: about a third of a normal thread's share when
both want the CPU; with spare CPU it changes nothing)."""

_lowered = threading.local()


def lower_this_thread(step: int = SHEDDABLE_NICENESS) -> bool:
    """Lower the calling thread's priority once (later calls from it do nothing). Returns True
    when the thread runs at the lowered priority."""
    if getattr(_lowered, "done", False):
        return True
    if sys.platform != "linux":
        return False
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + step))
        _lowered.done = True
    return getattr(_lowered, "done", False)
