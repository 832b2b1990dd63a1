"""CPU priority of the engine's threads: the model stage is the pipeline's bottleneck."""

from __future__ import annotations

import logging
import os
import sys
import threading

logger = logging.getLogger(__name__)

SUPPORTING_STAGE_NICE = 10  # about a tenth of the CPU share of a nice-0 thread when both want a core
LOWEST_PRIORITY_NICE = 19


def lower_this_thread_priority(nice: int = SUPPORTING_STAGE_NICE) -> None:
    """Make the calling thread yield the CPU to the process's other threads (Linux; else no-op).

    The throughput of a pipeline is that of its slowest stage; on a CPU shared with the
    other stages, the WebRTC work and (in benchmarks) the clients, the slowest stage spent a
    sixth of its time waiting for a core. The supporting stages run at a lower priority so
    it waits less, and they still get every cycle it leaves. On the 2-core VM with the
    client on the same machine: 19.1 instead of 18.5 fps end to end, for 13 ms more latency
    (BENCHMARKS.md). Raising one's own nice needs no privilege.
    """
    if sys.platform != "linux":
        return
    try:
        lower_priority(threading.get_native_id(), nice)
    except OSError as exc:
        logger.info("could not lower the priority of %s: %s", threading.current_thread().name, exc)


def lower_priority(thread: int, nice: int) -> None:
    """Lower a thread's priority (its Linux thread id) by `nice`, down to the lowest there is."""
    lowered = min(LOWEST_PRIORITY_NICE, os.getpriority(os.PRIO_PROCESS, thread) + nice)
    os.setpriority(os.PRIO_PROCESS, thread, lowered)
