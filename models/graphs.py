"""CUDA graphs: a stage's hundreds of kernel launches replayed as one.

At batch 1 an SD 1.5 UNet step is mostly launch overhead: the GPU waits on Python. A graph
is captured once per input shape (and schedule) and replayed after copying new inputs into
its static buffers.

Memory stays bounded: each stage has one cache, its graphs share one memory pool (a capture
keeps its activations' memory; graphs of one stage never run at once and each output is
copied out at once, so they can share), and the cache keeps at most `capacity` graphs,
least recently used out. The pool keeps the high-water mark of the stage's captures (it
never shrinks, it stops growing). Per-frame values (guidance scales, noise, prompts, the
schedule's coefficients) are inputs, not part of a key, so moving a slider replays the same
graph; a key's first call runs eagerly and its second captures, so a shape seen once (an odd
batch while sessions come and go) costs no capture.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Protocol

import torch

logger = logging.getLogger(__name__)

WARMUP_RUNS = 2  # cuDNN and the caching allocator settle before capture
GRAPHS_PER_STAGE = 32  # batch sizes x UNet evaluations x modes in use at once; more are recaptured on demand
CAPTURE_ON_USE = 2  # the call of a key that captures it; the ones before run eagerly
# PyTorch allows one capture underway at a time in a process (torch.cuda.graph's docs): stage
# threads that meet a new shape at once take turns. Other threads keep launching meanwhile.
_CAPTURE_LOCK = threading.Lock()


class Replay(Protocol):
    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor: ...


Capture = Callable[[Callable[..., torch.Tensor], tuple[torch.Tensor, ...], "CapturePlace"], Replay]


class CapturePlace:
    """Where a stage's graphs are captured: its own memory pool and capture stream, made on
    first use (they need a CUDA device) on the device current in the capturing thread."""

    def __init__(self) -> None:
        self._pool: Any = None
        self._stream: torch.cuda.Stream | None = None

    @property
    def pool(self) -> Any:
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        return self._pool

    @property
    def stream(self) -> torch.cuda.Stream:
        if self._stream is None:
            # torch hands out 32 streams per priority, round robin: taken from the high-priority
            # set, a capture stream is never a stage's stream, whose kernels would join the graph.
            self._stream = torch.cuda.Stream(priority=-1)
        return self._stream


class GraphedCall:
    """`function(*tensors) -> tensor` captured as a CUDA graph for the shapes of `examples`."""

    def __init__(
        self, function: Callable[..., torch.Tensor], examples: tuple[torch.Tensor, ...], place: CapturePlace
    ) -> None:
        self._inputs = tuple(example.clone() for example in examples)
        side = place.stream
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                function(*self._inputs)
        self._graph = torch.cuda.CUDAGraph()
        # Not torch.cuda.graph(): it synchronises the whole device and empties the allocator's
        # cache on every capture, stalling the other stages mid-stream. thread_local: the other
        # stage threads keep launching work on their own streams while this one captures.
        with torch.cuda.stream(side):
            self._graph.capture_begin(pool=place.pool, capture_error_mode="thread_local")
            try:
                self._output = function(*self._inputs)
            finally:
                self._graph.capture_end()
        torch.cuda.current_stream().wait_stream(side)

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        """Replays on the caller's stream; the output is the graph's own buffer."""
        for static, tensor in zip(self._inputs, tensors, strict=True):
            static.copy_(tensor)
        self._graph.replay()
        return self._output


class GraphCache:
    """One stage's graphs by key (shapes, mode); a key whose capture fails runs eagerly.

    Used by one thread at a time (the stage's thread, or the loader while warming up).
    """

    def __init__(self, enabled: bool, capacity: int = GRAPHS_PER_STAGE, capture: Capture = GraphedCall) -> None:
        self.enabled = enabled
        self.capacity = capacity
        self._capture_graph = capture
        self._place = CapturePlace()
        self._graphs: OrderedDict[Hashable, Replay | None] = OrderedDict()
        self._uses: OrderedDict[Hashable, int] = OrderedDict()  # keys not captured yet
        self.captures = 0

    def __len__(self) -> int:
        return len(self._graphs)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._graphs

    def run(self, key: Hashable, function: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return function(*tensors)
        if key in self._graphs:
            self._graphs.move_to_end(key)
            graph = self._graphs[key]
        elif self._count_use(key) >= CAPTURE_ON_USE:
            graph = self._capture(key, function, tensors)
        else:
            return function(*tensors)
        if graph is None:
            return function(*tensors)
        # A copy at once, on the same stream: the next replay of any graph of this pool may
        # reuse the output's memory.
        return graph(*tensors).clone()

    def _count_use(self, key: Hashable) -> int:
        uses = self._uses.pop(key, 0) + 1
        self._uses[key] = uses
        while len(self._uses) > 4 * self.capacity:
            self._uses.popitem(last=False)
        return uses

    def _capture(self, key: Hashable, function: Callable[..., torch.Tensor], tensors: Any) -> Replay | None:
        graph: Replay | None
        try:
            with _CAPTURE_LOCK:
                graph = self._capture_graph(function, tuple(tensors), self._place)
            self.captures += 1
            logger.info("captured a CUDA graph for %s", key)
        except Exception:
            logger.exception("could not capture a CUDA graph for %s; running it without one", key)
            graph = None
        self._uses.pop(key, None)
        self._graphs[key] = graph
        while len(self._graphs) > self.capacity:
            evicted, dropped = self._graphs.popitem(last=False)
            if dropped is not None and torch.cuda.is_initialized():
                # Its last replay ran on this thread's stream: done before its memory is reused.
                torch.cuda.current_stream().synchronize()
            logger.info("dropped the least recently used CUDA graph, %s", evicted)
        return graph
