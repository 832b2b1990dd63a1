"""A params change eases in over transition_ms: no jump, no grey frame; 0 still switches at once."""

from __future__ import annotations

import dataclasses
import itertools
import time

import numpy as np
import pytest
from av import VideoFrame

from models.loading import DiffusionModel, load_model
from models.stream import LcmStream
from models.tiny import tiny_unet
from settings import Settings
from tests.test_diffusion import camera_frame, session
from transforms.base import FrameJob
from transforms.catalog import build_engine
from transforms.diffusion import DiffusionTransform
from transforms.engine import EngineSession
from transforms.params import StyleParams
from transforms.transitions import LOOK, Look

SIZE = 64
FRAME_S = 1 / 30  # the fake clock moves one camera frame (at 30 fps) per picture


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def model() -> DiffusionModel:
    return load_model("tiny", "", None, "cpu", "float32")


def picture(transform: DiffusionTransform, who: EngineSession) -> np.ndarray:
    jobs = [FrameJob(who, 0.0, who.params, camera_frame())]
    for stage in transform.stages():
        stage.process(jobs)
    return jobs[0].data.to_ndarray(format="rgb24").astype(np.float32)


def change(transform: DiffusionTransform, who: EngineSession, params: StyleParams) -> None:
    """As a session applies params: prepared first, then live."""
    transform.prepare_params(who, params)
    who.params = params


def look_of(model: DiffusionModel, params: StyleParams) -> np.ndarray:
    """The picture `params` give when nothing came before them."""
    transform = DiffusionTransform(LcmStream(model), SIZE, SIZE)
    fresh = session("fresh", params)
    change(transform, fresh, params)
    return picture(transform, fresh)


Pictures = tuple[np.ndarray, np.ndarray, list[np.ndarray]]


def transition(model: DiffusionModel, old: StyleParams, new: StyleParams) -> Pictures:
    """(old look, new look, the pictures from the change until after the transition), a camera
    frame every FRAME_S on a fake clock."""
    clock = FakeClock()
    transform = DiffusionTransform(LcmStream(model), SIZE, SIZE, clock=clock)
    who = session("s", old)
    change(transform, who, old)
    before = picture(transform, who)
    change(transform, who, new)
    frames = []
    while clock.now <= 100.0 + new.transition_ms / 1000 + 2 * FRAME_S:
        frames.append(picture(transform, who))
        clock.now += FRAME_S
    return before, look_of(model, new), frames


def test_a_new_prompt_eases_in_without_a_jump(model: DiffusionModel) -> None:
    old = StyleParams(prompt="a watercolor portrait", guidance_scale=1.0)
    new = old.updated({"prompt": "a claymation figure", "guidance_scale": 5.0, "transition_ms": 500})
    old_look, new_look, frames = transition(model, old, new)
    jump = float(np.abs(new_look - old_look).mean())
    assert jump > 5, "the two looks differ"
    assert np.abs(frames[0] - old_look).max() <= 1, "the change starts from the old look"
    assert np.abs(frames[-1] - new_look).max() <= 1, "and ends at the new one"
    steps = [float(np.abs(b - a).mean()) for a, b in itertools.pairwise(frames)]
    assert max(steps) < 0.2 * jump, f"no jump: steps {steps} of {jump:.1f}"
    assert sum(steps) < 2 * jump, "straight on, not through other looks"
    distance = [float(np.abs(frame - new_look).mean()) for frame in frames]
    assert all(later <= earlier + 0.02 * jump for earlier, later in itertools.pairwise(distance))


def test_a_new_seed_eases_in(model: DiffusionModel) -> None:
    old = StyleParams(seed=1)
    new = old.updated({"seed": 2, "transition_ms": 1000})
    old_look, new_look, frames = transition(model, old, new)
    jump = float(np.abs(new_look - old_look).mean())
    assert np.abs(frames[0] - old_look).max() <= 1 and np.abs(frames[-1] - new_look).max() <= 1
    steps = [float(np.abs(b - a).mean()) for a, b in itertools.pairwise(frames)]
    assert max(steps) < 0.25 * jump, f"no jump: steps {steps} of {jump:.1f}"


def test_the_noise_keeps_its_strength_on_the_way_to_a_new_seed(model: DiffusionModel) -> None:
    """The fixed noise moves along the great circle between the two seeds' draws. A straight
    blend of two independent draws is weaker noise (0.71 of it half-way): a real model denoises
    it into a flat, grey picture."""
    clock = FakeClock()
    transform = DiffusionTransform(LcmStream(model), SIZE, SIZE, clock=clock)
    who = session("s", StyleParams(seed=1))
    change(transform, who, who.params)
    change(transform, who, who.params.updated({"seed": 2, "transition_ms": 1000}))
    look: Look = who.carry[LOOK]
    start, end = float(look.start.noise.std()), float(look.end.noise.std())
    for _ in range(31):
        progress = look.progress(clock.now)
        ratio = float(look.at(clock.now).noise.std()) / (start + progress * (end - start))
        assert 0.98 < ratio < 1.02, (progress, ratio)
        clock.now += FRAME_S


def test_transition_ms_0_switches_in_one_frame(model: DiffusionModel) -> None:
    old = StyleParams(prompt="a watercolor portrait", seed=1)
    new = old.updated({"prompt": "a claymation figure", "seed": 2, "transition_ms": 0})
    transform = DiffusionTransform(LcmStream(model), SIZE, SIZE, clock=FakeClock())
    who = session("s", old)
    change(transform, who, old)
    picture(transform, who)
    change(transform, who, new)
    assert np.abs(picture(transform, who) - look_of(model, new)).max() <= 1


def test_a_change_during_a_transition_starts_from_where_it_was(model: DiffusionModel) -> None:
    """A second change half-way goes on from the picture on screen, not back to the first look."""
    first = StyleParams(prompt="a watercolor portrait", seed=1)
    second = first.updated({"prompt": "a claymation figure", "seed": 2, "transition_ms": 400})
    third = second.updated({"prompt": "an oil painting", "seed": 3})
    clock = FakeClock()
    transform = DiffusionTransform(LcmStream(model), SIZE, SIZE, clock=clock)
    who = session("s", first)
    change(transform, who, first)
    change(transform, who, second)
    clock.now += 0.2
    half_way = picture(transform, who)
    transform.prepare_params(who, third)  # published; the frames in flight still carry `second`
    assert np.abs(picture(transform, who) - half_way).max() <= 1, "a frame in flight shows the screen"
    who.params = third
    assert np.abs(picture(transform, who) - half_way).mean() < 0.05 * np.abs(half_way).mean()


def test_a_still_camera_is_not_skipped_while_a_transition_runs() -> None:
    """Regression (bench.flicker): the similarity filter answered a still camera with the last
    output during a transition (the params do not change while the look does), so the look
    froze and jumped when the skips ran out."""
    engine = build_engine(Settings(model="tiny", width=64, height=64, device="cpu", max_skips=30))
    still = camera_frame()
    engine.start()
    try:
        who = engine.open_session("s", StyleParams(transition_ms=0), lambda job: None, lambda message: None)
        engine.transform.prepare_params(who, who.params)

        def feed(seconds: float) -> None:
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                engine.submit(who, still)
                time.sleep(1 / 30)

        feed(1.0)
        assert who.frames_skipped > 5, "a still camera skips the model"
        new = who.params.updated({"prompt": "a claymation figure", "transition_ms": 1500})
        engine.transform.prepare_params(who, new)
        who.params = new
        skipped, out = who.frames_skipped, who.frames_out
        feed(1.0)
        assert who.frames_out - out >= 5 and who.frames_skipped == skipped, "every frame of the transition is made"
    finally:
        engine.stop()


def test_the_first_change_on_a_16_9_camera_eases_in_too(model: DiffusionModel) -> None:
    """Regression: the offer's look was made at the usual 4:3 size before any frame; a 16:9
    camera's first change found no look of its size and cut at once."""
    clock = FakeClock()
    transform = DiffusionTransform(LcmStream(model), SIZE, SIZE, clock=clock, keep_aspect=True)
    wide = VideoFrame.from_ndarray(np.full((360, 640, 3), 90, np.uint8), format="rgb24")

    def frame() -> np.ndarray:
        jobs = [FrameJob(who, 0.0, who.params, wide)]
        for stage in transform.stages():
            stage.process(jobs)
        return jobs[0].data.to_ndarray(format="rgb24").astype(np.float32)

    who = session("s", StyleParams(prompt="a watercolor portrait"))
    change(transform, who, who.params)  # at offer time: no frame yet
    before = frame()
    change(transform, who, who.params.updated({"prompt": "a claymation figure", "transition_ms": 500}))
    first = frame()
    clock.now += 1.0
    after = frame()
    assert np.abs(after - before).mean() > 2, "the looks differ"
    assert np.abs(first - before).max() <= 1, "the change starts from the picture on screen"


def test_a_camera_of_another_size_in_stream_batch_primes_again(model: DiffusionModel) -> None:
    """Regression: stream batch carried partly denoised latents of the old size into a call
    with the new camera's (the page's Resolution select): every frame failed from then on."""
    transform = DiffusionTransform(LcmStream(model), SIZE, SIZE, stream_batch=True, keep_aspect=True)
    who = session("s", StyleParams(steps=4, strength=1.0))
    change(transform, who, who.params)
    stages = transform.stages()
    for width, height in ((640, 480), (640, 480), (1280, 720), (1280, 720)):
        camera = VideoFrame.from_ndarray(np.full((height, width, 3), 90, np.uint8), format="rgb24")
        jobs = [FrameJob(who, 0.0, who.params, camera)]
        for stage in stages:
            stage.process(jobs)
        out = jobs[0].data
        assert abs(out.width / out.height - width / height) < 0.15, "each frame at its camera's aspect"


def test_guidance_turned_on_eases_in_on_a_model_without_w_embedding(model: DiffusionModel) -> None:
    """SD-Turbo or LCM-LoRA: guidance above 1 adds a second UNet pass. Turning it on used to cut
    (one pass cannot be half two); the unguided side now runs as guidance at scale 1."""
    lora_like = dataclasses.replace(model, unet=tiny_unet(guidance_embedding=False))
    old = StyleParams(guidance_scale=1.0, negative_prompt="blurry")
    new = old.updated({"guidance_scale": 6.0, "transition_ms": 500})
    old_look, new_look, frames = transition(lora_like, old, new)
    jump = float(np.abs(new_look - old_look).mean())
    assert jump > 3, "guidance changes the picture"
    assert np.abs(frames[0] - old_look).max() <= 1 and np.abs(frames[-1] - new_look).max() <= 1
    steps = [float(np.abs(b - a).mean()) for a, b in itertools.pairwise(frames)]
    assert max(steps) < 0.35 * jump, f"no cut: steps {steps} of {jump:.1f}"
    assert sum(step > 0.05 * jump for step in steps) >= 8, "spread over the transition"


def test_a_look_taken_over_while_moving_keeps_moving(model: DiffusionModel) -> None:
    """A dragged slider sends a change every few frames: each new look starts at speed (ease-out)
    instead of from rest, so the picture does not stall at every change."""
    clock = FakeClock()
    transform = DiffusionTransform(LcmStream(model), SIZE, SIZE, clock=clock)
    who = session("s", StyleParams(prompt="a watercolor portrait"))
    change(transform, who, who.params)
    change(transform, who, who.params.updated({"prompt": "a claymation figure", "transition_ms": 600}))
    assert who.carry[LOOK].from_rest, "from a settled look: smoothstep"
    clock.now += 0.2
    change(transform, who, who.params.updated({"prompt": "an oil painting"}))
    look: Look = who.carry[LOOK]
    assert not look.from_rest
    one_frame = look.progress(clock.now + FRAME_S)
    assert one_frame > 2 * FRAME_S / 0.6 * 0.9, "it leaves at about twice the average speed, not at rest"
