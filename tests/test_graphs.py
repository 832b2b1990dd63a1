"""CUDA-graph caching on the CPU: a stand-in graph with a real graph's contract (inputs copied
into static buffers, everything else frozen at capture) behind the real GraphCache and LcmStream."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from models.graphs import CapturePlace, GraphCache
from models.loading import DiffusionModel, load_model
from models.stream import LcmStream
from models.tiny import tiny_unet
from tests.test_diffusion import camera_frame, job
from transforms.diffusion import DiffusionTransform
from transforms.params import StyleParams

SIZE = 64


class FakeGraph:
    """Captures like torch's CUDA graphs do: the function and every value it closed over are
    fixed at capture; only the tensors passed in change, copied into the first call's buffers."""

    places: ClassVar[list[CapturePlace]] = []

    def __init__(self, function: Callable[..., torch.Tensor], examples: tuple[torch.Tensor, ...], place: Any) -> None:
        self.function = function
        self.inputs = tuple(example.clone() for example in examples)
        FakeGraph.places.append(place)

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        for static, tensor in zip(self.inputs, tensors, strict=True):
            static.copy_(tensor)
        return self.function(*self.inputs).clone()


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


def test_strengths_with_the_same_schedule_share_a_graph(model: DiffusionModel, latents: torch.Tensor) -> None:
    stream = graphed(LcmStream(model))
    assert stream.schedule(4, 0.5) == stream.schedule(4, 0.6), "int(4 x strength) = 2 evaluations both"
    denoise(stream, latents, 4, 0.5, 1.0)
    denoise(stream, latents, 4, 0.6, 1.0)
    assert stream.graphs["denoise"].captures == 1
    denoise(stream, latents, 4, 1.0, 1.0)
    assert stream.graphs["denoise"].captures == 2


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


def test_the_cache_keeps_the_most_recently_used_graphs_in_one_pool() -> None:
    """Sliders moved and sessions coming and going must not capture graph after graph."""
    FakeGraph.places.clear()
    cache = GraphCache(True, capacity=3, capture=FakeGraph)
    for key in ("a", "b", "c", "a", "d", "e"):
        result = cache.run(key, lambda x: x * 2, torch.ones(2))
        assert torch.equal(result, torch.full((2,), 2.0))
    assert len(cache) == 3
    assert "a" in cache and "b" not in cache and "c" not in cache, "the least recently used go first"
    assert cache.captures == 5
    assert len(FakeGraph.places) == 5 and len({id(place) for place in FakeGraph.places}) == 1, "one pool per stage"


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
    threads = [
        threading.Thread(target=lambda c=c, k=k: c.run(k, torch.neg, torch.ones(1)))
        for c in caches
        for k in range(3)
    ]
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
    jobs = [job(StyleParams(), "a"), job(StyleParams(), "b", shade=30)]
    for stage in transform.stages():
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

    def pictures(params_list: list[StyleParams]) -> list[np.ndarray]:
        jobs = [job(params, str(i)) for i, params in enumerate(params_list)]
        for one in jobs:
            transform.prepare_params(one.session, one.params)
        for stage in transform.stages():
            stage.process(jobs)
        return [one.data.to_ndarray(format="rgb24").astype(np.int16) for one in jobs]

    together = pictures([first, second])
    assert np.abs(together[0] - pictures([first])[0]).max() <= 2
    assert np.abs(together[1] - pictures([second])[0]).max() <= 2
    assert np.abs(together[0] - together[1]).mean() > 1.0


def test_churn_keeps_the_number_of_graphs_bounded(model: DiffusionModel) -> None:
    """Random params and batch sizes (sessions coming and going): the cache never grows past its bound."""
    stream = graphed(LcmStream(model), capacity=6)
    rng = np.random.default_rng(0)
    frames = [camera_frame(int(shade)) for shade in rng.integers(0, 60, 4)]
    transform = DiffusionTransform(stream, SIZE, SIZE)
    stages = transform.stages()
    for _ in range(40):
        params = StyleParams(
            steps=int(rng.integers(1, 9)),
            strength=float(rng.uniform(0.05, 1.0)),
            guidance_scale=round(float(rng.uniform(0, 8)), 1),
        )
        jobs = [job(params, f"s{i}") for i in range(int(rng.integers(1, 4)))]
        for one, frame in zip(jobs, frames, strict=False):
            one.data = frame
        for stage in stages:
            stage.process(jobs)
    assert all(len(cache) <= 6 for cache in stream.graphs.values())
    assert stream.graphs["denoise"].captures > 6, "the churn did need more graphs than the bound"
