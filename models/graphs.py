"""CUDA graphs: a stage's hundreds of kernel launches replayed as one.

At batch 1 an SD 1.5 UNet step is mostly launch overhead: the GPU waits on Python. A graph
is captured once per input shape (and schedule) and replayed after copying new inputs into
its static buffers.

Memory stays bounded: each stage has one cache, its graphs share one memory pool (a capture
keeps its activations' memory, and graphs of one stage never run at once, so one pool as
large as the largest of them serves all), and the cache keeps at most `capacity` graphs,
least recently used out. Per-frame values (guidance scales, noise, prompts) are inputs, not
part of a key, so moving a slider replays the same graph.
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
GRAPHS_PER_STAGE = 16  # batch sizes x schedules in use at once; more are recaptured on demand
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
            self._stream = torch.cuda.Stream()
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
        torch.cuda.current_stream().wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        # thread_local: other stage threads keep launching work while this one captures.
        with torch.cuda.graph(self._graph, pool=place.pool, stream=side, capture_error_mode="thread_local"):
            self._output = function(*self._inputs)

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        for static, tensor in zip(self._inputs, tensors, strict=True):
            static.copy_(tensor)
        self._graph.replay()
        # A copy at once: the next replay of any graph of this pool may reuse the output's memory.
        return self._output.clone()


class GraphCache:
    """One stage's graphs by key (shapes, schedule); a key whose capture fails runs eagerly.

    Used by one thread at a time (the stage's thread, or the loader while warming up).
    """

    def __init__(self, enabled: bool, capacity: int = GRAPHS_PER_STAGE, capture: Capture = GraphedCall) -> None:
        self.enabled = enabled
        self.capacity = capacity
        self._capture_graph = capture
        self._place = CapturePlace()
        self._graphs: OrderedDict[Hashable, Replay | None] = OrderedDict()
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
        else:
            graph = self._capture(key, function, tensors)
        return graph(*tensors) if graph is not None else function(*tensors)

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
        self._graphs[key] = graph
        while len(self._graphs) > self.capacity:
            evicted, _ = self._graphs.popitem(last=False)
            logger.info("dropped the least recently used CUDA graph, %s", evicted)
        return graph
