"""CUDA-graph caching on the CPU: a stand-in graph with a real graph's contract (traced once, so
everything but its inputs is frozen at capture; one output buffer, overwritten by each replay)
behind the real GraphCache and LcmStream; and GraphedCall's capture against stand-ins of
torch.cuda's streams and graphs."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from av import VideoFrame
from torch.fx.experimental.proxy_tensor import make_fx

from models.graphs import CapturePlace, GraphCache, GraphedCall
from models.loading import DiffusionModel, load_model
from models.stream import LcmStream
from models.tiny import tiny_unet
from tests.test_diffusion import camera_frame, job, run, session
from transforms.base import FrameJob, Stage
from transforms.diffusion import DiffusionTransform
from transforms.params import StyleParams

SIZE = 64


class FakeGraph:
    """Captures as torch's CUDA graphs do: the function is traced once (make_fx), so any value it
    reads that is not an input (a float, a tensor from a cache) is frozen at capture; a call
    copies the inputs into the capture's buffers and overwrites one output buffer."""

    places: ClassVar[list[CapturePlace]] = []

    def __init__(self, function: Callable[..., torch.Tensor], examples: tuple[torch.Tensor, ...], place: Any) -> None:
        self.inputs = tuple(example.clone() for example in examples)
        self.traced = make_fx(lambda *tensors: function(*tensors))(*self.inputs)
        self.output = self.traced(*self.inputs).clone()
        FakeGraph.places.append(place)

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        for static, tensor in zip(self.inputs, tensors, strict=True):
            static.copy_(tensor)
        self.output.copy_(self.traced(*self.inputs))
        return self.output


@pytest.fixture(scope="module")
def model() -> DiffusionModel:
    return load_model("tiny", "", None, "cpu", "float32")


def graphed(stream: LcmStream, capacity: int = 16) -> LcmStream:
    stream.graphs = {name: GraphCache(True, capacity, capture=FakeGraph) for name in stream.graphs}
    return stream


def denoise(stream: LcmStream, latents: torch.Tensor, steps: int, strength: float, guidance: float) -> torch.Tensor:
    with torch.inference_mode():
        condition = stream.condition("a watercolor portrait", "blurry", guidance, 42, SIZE, SIZE)
        return stream.denoise(latents, stream.schedule(steps, strength), [condition] * latents.shape[0])


@pytest.fixture(scope="module")
def latents(model: DiffusionModel) -> torch.Tensor:
    stream = LcmStream(model)
    pixels = np.stack([np.full((SIZE, SIZE, 3), 40 * (i + 1), np.uint8) for i in range(2)])
    with torch.inference_mode():
        return stream.encode(stream.to_input(pixels))


@pytest.mark.parametrize("w_embedding", [True, False])
def test_moving_the_guidance_slider_replays_one_graph_and_the_picture_follows(
    model: DiffusionModel, latents: torch.Tensor, w_embedding: bool
) -> None:
    """Regression: classic guidance's scale was part of the key (a graph per slider position, each
    with its own memory) and a Python float inside the graph. Now it is an input, as the
    w-embedding is: one graph, and each position still gives its own picture."""
    if not w_embedding:
        model = dataclasses.replace(model, unet=tiny_unet(guidance_embedding=False))
    eager, cached = LcmStream(model), graphed(LcmStream(model))
    pictures = []
    for scale in (1.5, 2.0, 2.5, 3.0, 4.5, 7.0):
        ours = denoise(cached, latents, 4, 0.5, scale)
        assert torch.allclose(ours, denoise(eager, latents, 4, 0.5, scale), atol=1e-5), scale
        pictures.append(ours)
    assert cached.graphs["denoise"].captures == 1
    assert (pictures[0] - pictures[-1]).abs().mean() > 1e-3, "the scale reaches the UNet"


def test_schedules_of_one_length_share_a_graph_and_keep_their_own_timesteps(
    model: DiffusionModel, latents: torch.Tensor
) -> None:
    """Regression: each (steps, strength) had its own graph (dozens on the sliders). Now the
    timesteps and coefficients are inputs: 4 steps at 0.5 and 8 steps at 0.25 (two UNet
    evaluations each, at other timesteps) replay one graph, each with its own schedule."""
    eager, cached = LcmStream(model), graphed(LcmStream(model))
    assert eager.schedule(4, 0.5).timesteps != eager.schedule(8, 0.25).timesteps
    for steps, strength in ((4, 0.5), (8, 0.25), (4, 0.5), (4, 0.6), (8, 0.25)):
        ours = denoise(cached, latents, steps, strength, 1.0)
        assert torch.allclose(ours, denoise(eager, latents, steps, strength, 1.0), atol=1e-5), (steps, strength)
    assert cached.graphs["denoise"].captures == 1
    denoise(cached, latents, 4, 1.0, 1.0)
    denoise(cached, latents, 4, 1.0, 1.0)
    assert cached.graphs["denoise"].captures == 2, "four evaluations are another graph"


def test_equal_schedules_share_one_unet_call(model: DiffusionModel) -> None:
    """Two sessions whose strengths round to the same schedule go through the UNet together."""
    calls: list[int] = []
    handle = model.unet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        transform = DiffusionTransform(LcmStream(model), SIZE, SIZE)
        first, second = StyleParams(strength=0.5, seed=1), StyleParams(strength=0.6, seed=2)
        jobs = [job(first, "a"), job(second, "b", shade=40)]
        for stage in transform.stages():
            stage.process(jobs)
    finally:
        handle.remove()
    assert calls == [2, 2], "2 evaluations, each one call for both frames"


def double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


def test_the_cache_keeps_the_most_recently_used_graphs_in_one_pool() -> None:
    """Sliders moved and sessions coming and going must not capture graph after graph."""
    FakeGraph.places.clear()
    cache = GraphCache(True, capacity=3, capture=FakeGraph)
    for key in ("a", "b", "c", "a", "d", "e"):
        for _ in range(2):  # a key's second call captures it
            assert torch.equal(cache.run(key, double, torch.ones(2)), torch.full((2,), 2.0))
    assert len(cache) == 3
    assert "a" in cache and "b" not in cache and "c" not in cache, "the least recently used go first"
    assert cache.captures == 5
    assert len(FakeGraph.places) == 5 and len({id(place) for place in FakeGraph.places}) == 1, "one pool per stage"


def test_a_key_seen_once_costs_no_capture() -> None:
    cache = GraphCache(True, capture=FakeGraph)
    for batch in range(1, 6):
        cache.run(("encode", batch), double, torch.ones(batch))
    assert cache.captures == 0 and len(cache) == 0


def test_a_result_is_not_overwritten_by_the_next_replay() -> None:
    """A graph writes every replay into the same output buffer: each result must be a copy."""
    cache = GraphCache(True, capture=FakeGraph)
    results = [cache.run("k", double, torch.full((2,), float(value))) for value in range(4)]
    assert [float(result[0]) for result in results] == [0.0, 2.0, 4.0, 6.0]


def test_a_failed_capture_runs_eagerly_and_is_not_retried() -> None:
    attempts: list[int] = []

    def failing(function: Callable[..., torch.Tensor], examples: tuple[torch.Tensor, ...], place: Any) -> Any:
        attempts.append(1)
        raise RuntimeError("operation not permitted when stream is capturing")

    cache = GraphCache(True, capture=failing)
    for _ in range(3):
        assert torch.equal(cache.run("k", lambda x: x + 1, torch.zeros(2)), torch.ones(2))
    assert len(attempts) == 1


def test_two_threads_never_capture_at_once() -> None:
    """PyTorch allows one capture underway per process; stage threads meeting new shapes take turns."""
    inside, overlap = [0], [0]
    lock = threading.Lock()

    def slow_capture(function: Callable[..., torch.Tensor], examples: tuple[torch.Tensor, ...], place: Any) -> Any:
        with lock:
            inside[0] += 1
            overlap[0] = max(overlap[0], inside[0])
        time.sleep(0.05)
        with lock:
            inside[0] -= 1
        return FakeGraph(function, examples, place)

    caches = [GraphCache(True, capture=slow_capture) for _ in range(3)]

    def stage(cache: GraphCache) -> None:  # one thread per cache, as one per stage
        for key in range(3):
            for _ in range(2):
                cache.run(key, torch.neg, torch.ones(1))

    threads = [threading.Thread(target=stage, args=(cache,)) for cache in caches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlap[0] == 1
    assert sum(cache.captures for cache in caches) == 9


def test_each_stage_has_its_own_pool(model: DiffusionModel) -> None:
    FakeGraph.places.clear()
    stream = graphed(LcmStream(model))
    transform = DiffusionTransform(stream, SIZE, SIZE)
    stages = transform.stages()
    for _ in range(2):
        jobs = [job(StyleParams(), "a"), job(StyleParams(), "b", shade=30)]
        for stage in stages:
            stage.process(jobs)
    assert [cache.captures for cache in stream.graphs.values()] == [1, 1, 1]
    assert len({id(place) for place in FakeGraph.places}) == 3


def test_a_classic_guidance_batch_of_two_sessions_runs(model: DiffusionModel) -> None:
    """Regression: classic guidance doubled a scalar timestep into a vector of 2, which the UNet
    could not expand to a batch of 4 (two sessions): every such batch failed."""
    model = dataclasses.replace(model, unet=tiny_unet(guidance_embedding=False))
    transform = DiffusionTransform(LcmStream(model), SIZE, SIZE)
    first = StyleParams(guidance_scale=3.0, negative_prompt="blurry", seed=1)
    second = StyleParams(guidance_scale=6.0, seed=2)
    together = run(transform, [job(first, "0"), job(second, "1")])
    assert np.abs(together[0] - run(transform, [job(first, "0")])[0]).max() <= 2
    assert np.abs(together[1] - run(transform, [job(second, "1")])[0]).max() <= 2
    assert np.abs(together[0] - together[1]).mean() > 1.0


def pictures(stages: list[Stage], params: StyleParams, frames: list[VideoFrame]) -> list[np.ndarray]:
    jobs = [FrameJob(session(f"s{index}", params), 0.0, params, frame) for index, frame in enumerate(frames)]
    for stage in stages:
        stage.process(jobs)
    return [one.data.to_ndarray(format="rgb24").astype(np.int16) for one in jobs]


def test_churn_keeps_the_graphs_bounded_and_every_picture_right(model: DiffusionModel) -> None:
    """Random params and batch sizes (sessions coming and going): the cache never grows past its
    bound, and every frame equals what the model gives without graphs."""
    stream = graphed(LcmStream(model), capacity=2)
    graphed_stages = DiffusionTransform(stream, SIZE, SIZE).stages()
    eager_stages = DiffusionTransform(LcmStream(model), SIZE, SIZE).stages()
    rng = np.random.default_rng(0)
    for round_ in range(20):
        params = StyleParams(
            steps=int(rng.integers(1, 5)),
            strength=float(rng.uniform(0.05, 1.0)),
            guidance_scale=round(float(rng.uniform(0, 8)), 1),
            seed=round_,
        )
        frames = [camera_frame(int(shade)) for shade in rng.integers(0, 60, int(rng.integers(1, 3)))]
        ours, expected = pictures(graphed_stages, params, frames), pictures(eager_stages, params, frames)
        for picture, reference in zip(ours, expected, strict=True):
            assert np.abs(picture - reference).max() <= 2, round_
    assert all(len(cache) <= 2 for cache in stream.graphs.values())
    assert stream.graphs["denoise"].captures > 2, "the churn did need more graphs than the bound"


class FakeCuda:
    """torch.cuda's streams and graphs as records: which stream each call ran on, what a capture
    was given. `current` is the stage thread's own stream."""

    def __init__(self) -> None:
        self.current = self.Stream()
        self.active = [self.current]
        self.capturing = False
        self.graphs: list[SimpleNamespace] = []

    def Stream(self, priority: int = 0) -> SimpleNamespace:
        return SimpleNamespace(priority=priority, wait_stream=lambda other: None, synchronize=lambda: None)

    @contextlib.contextmanager
    def stream(self, stream: SimpleNamespace) -> Iterator[None]:
        self.active.append(stream)
        try:
            yield
        finally:
            self.active.pop()

    def current_stream(self) -> SimpleNamespace:
        return self.active[-1]

    def CUDAGraph(self) -> SimpleNamespace:
        graph = SimpleNamespace(begun=None, ended=False, replay=lambda: None)

        def capture_begin(pool: object = None, capture_error_mode: str = "global") -> None:
            graph.begun = (pool, capture_error_mode, self.active[-1])
            self.capturing = True

        def capture_end() -> None:
            graph.ended, self.capturing = True, False

        graph.capture_begin, graph.capture_end = capture_begin, capture_end
        self.graphs.append(graph)
        return graph


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    cuda = FakeCuda()
    for name in ("Stream", "stream", "current_stream", "CUDAGraph"):
        monkeypatch.setattr(torch.cuda, name, getattr(cuda, name))
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", object)
    return cuda


def test_a_capture_runs_on_its_stages_stream_into_its_stages_pool(fake_cuda: FakeCuda) -> None:
    """Regression: captures used torch.cuda.graph's one class-level stream, shared by every
    thread (two stages capturing at once collided), and each kept a private pool."""
    place = CapturePlace()
    calls: list[tuple[str, object]] = []

    def function(x: torch.Tensor) -> torch.Tensor:
        calls.append(("capture" if fake_cuda.capturing else "warm-up", fake_cuda.current_stream()))
        return x + 1

    GraphedCall(function, (torch.ones(1),), place)
    GraphedCall(function, (torch.ones(2),), place)
    first, second = fake_cuda.graphs
    pool, mode, stream = first.begun
    assert mode == "thread_local", "other stage threads keep working while one captures"
    assert stream is place.stream and stream is not fake_cuda.current and stream.priority < 0
    assert second.begun[0] is pool and second.begun[2] is stream, "one pool and stream per stage"
    assert calls[:3] == [("warm-up", stream), ("warm-up", stream), ("capture", stream)]
    assert first.ended and fake_cuda.active == [fake_cuda.current], "the stage's stream is current again"


def test_a_failed_capture_ends_the_capture_and_gives_the_stream_back(fake_cuda: FakeCuda) -> None:
    place = CapturePlace()
    runs: list[int] = []

    def breaks_in_capture(x: torch.Tensor) -> torch.Tensor:
        runs.append(1)
        if len(runs) > 2:
            raise RuntimeError("operation not permitted when stream is capturing")
        return x

    with pytest.raises(RuntimeError, match="capturing"):
        GraphedCall(breaks_in_capture, (torch.ones(1),), place)
    assert fake_cuda.graphs[0].ended, "the capture is ended, not left open"
    assert fake_cuda.active == [fake_cuda.current], "the stage keeps its own stream"
