"""CUDA graphs: a stage's hundreds of kernel launches replayed as one.

At batch 1 an SD 1.5 UNet step is mostly launch overhead: the GPU waits on Python. A graph
is captured once per input shape (and schedule) and replayed after copying new inputs into
its static buffers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import Any

import torch

logger = logging.getLogger(__name__)

WARMUP_RUNS = 2  # cuDNN and the caching allocator settle before capture


class GraphedCall:
    """`function(*tensors) -> tensor` captured as a CUDA graph for the shapes of `examples`."""

    def __init__(self, function: Callable[..., torch.Tensor], examples: tuple[torch.Tensor, ...]) -> None:
        self._inputs = tuple(example.clone() for example in examples)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                function(*self._inputs)
        torch.cuda.current_stream().wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        # thread_local: other stage threads keep launching work while this one captures.
        with torch.cuda.graph(self._graph, capture_error_mode="thread_local"):
            self._output = function(*self._inputs)

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        for static, tensor in zip(self._inputs, tensors, strict=True):
            static.copy_(tensor)
        self._graph.replay()
        return self._output.clone()


class GraphCache:
    """Graphs by key (stage, shapes, schedule); a key whose capture fails runs eagerly."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._graphs: dict[Hashable, GraphedCall | None] = {}

    def run(self, key: Hashable, function: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return function(*tensors)
        graph = self._graphs.get(key, _MISSING)
        if graph is _MISSING:
            graph = self._capture(key, function, tensors)
        return graph(*tensors) if graph is not None else function(*tensors)

    def _capture(self, key: Hashable, function: Callable[..., torch.Tensor], tensors: Any) -> GraphedCall | None:
        try:
            graph: GraphedCall | None = GraphedCall(function, tuple(tensors))
            logger.info("captured a CUDA graph for %s", key)
        except Exception:
            logger.exception("could not capture a CUDA graph for %s; running it without one", key)
            graph = None
        self._graphs[key] = graph
        return graph


_MISSING: Any = object()
