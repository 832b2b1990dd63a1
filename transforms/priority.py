"""CPU priority of the engine's threads: the model stage is the pipeline's bottleneck."""

from __future__ import annotations

import logging
import os
import sys
import threading

logger = logging.getLogger(__name__)

SUPPORTING_STAGE_NICE = 10  # about a tenth of the CPU share of a nice-0 thread when both want a core


def lower_this_thread_priority(nice: int = SUPPORTING_STAGE_NICE) -> bool:
    """Make the calling thread yield the CPU to normal-priority threads (Linux; others: no-op).

    The throughput of a pipeline is that of its slowest stage; on a CPU shared with the
    other stages, the WebRTC work and (in benchmarks) the clients, the slowest stage loses a
    sixth of its time waiting for a core. The supporting stages run at a lower priority so
    it never waits, and still get every cycle it leaves (2 cores, tiny model: 19.4 instead
    of 16.5 fps end to end, BENCHMARKS.md). Raising one's own nice needs no privilege.
    """
    if sys.platform != "linux":
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as exc:
        logger.info("could not lower the priority of %s: %s", threading.current_thread().name, exc)
        return False
    return True
