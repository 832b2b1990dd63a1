"""The diffusion transform's stages on the tiny model: batching, fixed noise, cached prompts."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from av import VideoFrame
from diffusers import StableDiffusionPipeline
from peft import LoraConfig, get_peft_model_state_dict

from models.accelerators import available_cores
from models.loading import DiffusionModel, load_model
from models.stream import LcmStream
from models.tiny import tiny_unet
from settings import Settings
from transforms.base import FrameJob
from transforms.catalog import build_engine
from transforms.diffusion import DiffusionTransform, one_frame_per_session
from transforms.engine import EngineSession
from transforms.params import StyleParams

SIZE = 128


@pytest.fixture(scope="module")
def model() -> DiffusionModel:
    return load_model("tiny", "", None, "cpu", "float32")


@pytest.fixture
def transform(model: DiffusionModel) -> DiffusionTransform:
    return DiffusionTransform(LcmStream(model), SIZE, SIZE)


def camera_frame(shade: int = 0) -> VideoFrame:
    picture = np.zeros((240, 320, 3), np.uint8)
    picture[..., 0] = np.linspace(0, 255, 320, dtype=np.uint8)
    picture[60:180, 100:220] = (40 + shade, 200, 90)
    return VideoFrame.from_ndarray(picture, format="rgb24")


def session(name: str, params: StyleParams) -> EngineSession:
    return EngineSession(name, params, on_result=lambda job: None, on_error=lambda message: None)


def run(transform: DiffusionTransform, jobs: list[FrameJob]) -> list[np.ndarray]:
    for job in jobs:
        transform.prepare_params(job.session, job.params)
    for stage in transform.stages():
        stage.process(jobs)
    return [job.data.to_ndarray(format="rgb24").astype(np.int16) for job in jobs]


def job(params: StyleParams, name: str = "s", shade: int = 0) -> FrameJob:
    return FrameJob(session(name, params), 0.0, params, camera_frame(shade))


def test_two_sessions_in_one_batch_each_get_their_own_picture(transform: DiffusionTransform) -> None:
    first = StyleParams(prompt="claymation", seed=1)
    second = StyleParams(prompt="watercolor", seed=2, guidance_scale=4.0)
    together = run(transform, [job(first, "a"), job(second, "b")])
    alone = [run(transform, [job(first, "a")])[0], run(transform, [job(second, "b")])[0]]
    for batched, single in zip(together, alone, strict=True):
        assert np.abs(batched - single).max() <= 2, "batching must not mix or change frames"
    assert np.abs(together[0] - together[1]).mean() > 5, "different params, different pictures"


def test_sessions_with_different_schedules_share_a_stage_call(transform: DiffusionTransform) -> None:
    fast, slow = StyleParams(steps=2, strength=0.5), StyleParams(steps=4, strength=1.0)
    together = run(transform, [job(fast, "a"), job(slow, "b")])
    assert np.abs(together[0] - run(transform, [job(fast, "a")])[0]).max() <= 2
    assert np.abs(together[1] - run(transform, [job(slow, "b")])[0]).max() <= 2


def test_a_still_camera_gives_a_still_picture(transform: DiffusionTransform) -> None:
    """The noise is fixed per session (from its seed): the same input, the same output."""
    params = StyleParams()
    first, again = run(transform, [job(params)])[0], run(transform, [job(params)])[0]
    assert np.array_equal(first, again)
    reseeded = run(transform, [job(StyleParams(seed=7))])[0]
    assert np.abs(first - reseeded).mean() > 5


@pytest.mark.parametrize(
    "change",
    [{"prompt": "a claymation portrait of a cat"}, {"steps": 2}, {"strength": 0.9}, {"guidance_scale": 6.0}],
)
def test_each_live_parameter_changes_the_picture(transform: DiffusionTransform, change: dict[str, object]) -> None:
    before = run(transform, [job(StyleParams())])[0]
    after = run(transform, [job(StyleParams().updated(change))])[0]
    assert np.abs(before - after).mean() > 1.0


@pytest.fixture
def count_text_encoder_calls(model: DiffusionModel) -> Iterator[list[int]]:
    calls: list[int] = []
    handle = model.text_encoder.register_forward_hook(lambda *args: calls.append(1))
    yield calls
    handle.remove()


def test_prompts_are_encoded_once_not_per_frame(
    transform: DiffusionTransform, count_text_encoder_calls: list[int]
) -> None:
    params = StyleParams(prompt="an oil painting, thick brush strokes")
    transform.prepare_params(session("s", params), params)
    assert len(count_text_encoder_calls) == 1
    stages = transform.stages()
    for _ in range(5):
        jobs = [job(params)]
        for stage in stages:
            stage.process(jobs)
    assert len(count_text_encoder_calls) == 1, "frames reuse the prompt's embeddings"


def moving_frame(index: int) -> VideoFrame:
    """The camera_frame picture with its square moved 20 px per frame."""
    picture = np.zeros((240, 320, 3), np.uint8)
    picture[..., 0] = np.linspace(0, 255, 320, dtype=np.uint8)
    left = 20 * index
    picture[60:180, left : left + 120] = (40, 200, 90)
    return VideoFrame.from_ndarray(picture, format="rgb24")


def test_stream_batch_gives_moving_sessions_the_full_loops_pictures_later(model: DiffusionModel) -> None:
    """Two sessions in stream-batch mode, cameras moving: frame k's call returns frame k-(n-1) as
    the full loop makes it (n UNet evaluations; 2 and 3 here), each session from its own latents."""
    regular = DiffusionTransform(LcmStream(model), SIZE, SIZE)
    streamed = DiffusionTransform(LcmStream(model), SIZE, SIZE, stream_batch=True)
    first, second = StyleParams(seed=1), StyleParams(prompt="claymation", seed=2, steps=3, strength=1.0)
    lags = {"a": 1, "b": 2}
    frames = [moving_frame(index) for index in range(5)]
    expected = {
        name: [run(regular, [FrameJob(session(name, p), 0.0, p, frame)])[0] for frame in frames]
        for name, p in (("a", first), ("b", second))
    }
    sessions = [session("a", first), session("b", second)]
    stages = streamed.stages()
    for k, frame in enumerate(frames):
        jobs = [FrameJob(s, 0.0, s.params, frame) for s in sessions]
        for stage in stages:
            stage.process(jobs)
        for one in jobs:
            picture = one.data.to_ndarray(format="rgb24").astype(np.int16)
            reference = expected[one.session.id][max(0, k - lags[one.session.id])]
            assert np.abs(picture - reference).max() <= 2, (one.session.id, k)
    assert np.abs(expected["a"][0] - expected["a"][-1]).mean() > 2, "the camera moves"


def test_a_lora_is_fused_at_load(tmp_path: Path) -> None:
    """--lora: the adapter's weights end up inside the UNet (no adapter left at run time)."""
    base = load_model("tiny", "", None, "cpu", "float32")
    unet = tiny_unet()
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False))
    StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers=get_peft_model_state_dict(unet))
    fused = load_model("tiny", "", str(tmp_path), "cpu", "float32")
    assert not any("lora" in name for name, _ in fused.unet.named_parameters())
    before = run(DiffusionTransform(LcmStream(base), SIZE, SIZE), [job(StyleParams())])[0]
    after = run(DiffusionTransform(LcmStream(fused), SIZE, SIZE), [job(StyleParams())])[0]
    assert np.abs(before - after).mean() > 1.0


def test_a_sessions_frames_take_separate_stream_batch_calls() -> None:
    """Regression: two frames of one session in one stream-batch call both advanced from the same
    carried latents; they now go in rounds, in order, one frame per session per call."""
    a, b = session("a", StyleParams()), session("b", StyleParams())
    jobs = [(FrameJob(s, float(t), s.params, None), None) for t, s in enumerate([a, a, b, a])]
    rounds = one_frame_per_session(jobs)
    assert [[job.received_at for job, _ in round_] for round_ in rounds] == [[0.0, 2.0], [1.0], [3.0]]


def stage_thread_count() -> int:
    """torch's intra-op threads as a thread started now (a stage thread) sees them."""
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


@pytest.mark.parametrize(("requested", "expected"), [(None, max(1, available_cores() // 5)), (3, 3)])
def test_the_cores_are_shared_among_the_stage_threads(requested: int | None, expected: int) -> None:
    """On the CPU the five stages run at once: each gets its share of the cores (or --cpu-threads),
    not torch's default of every core each, which makes them fight and the stream slower."""
    default = torch.get_num_threads()
    try:
        engine = build_engine(Settings(model="tiny", width=64, height=64, device="cpu", cpu_threads=requested))
        assert len(engine.transform.stages()) == 5
        assert stage_thread_count() == expected
    finally:
        torch.set_num_threads(default)
