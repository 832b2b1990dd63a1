"""Our stream loop against diffusers' own img2img pipeline: the same math, bit for bit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from bench.model import reference_pipeline
from models.lcm import unet_evaluations
from models.loading import DiffusionModel, load_model
from models.stream import LcmStream
from models.tiny import tiny_unet

SIZE = 128


@pytest.fixture(scope="module")
def model() -> DiffusionModel:
    return load_model("tiny", "", None, "cpu", "float32")


@pytest.fixture(scope="module")
def camera() -> np.ndarray:
    rng = np.random.default_rng(1)
    picture = np.full((SIZE, SIZE, 3), 60, np.uint8)
    picture[SIZE // 4 : SIZE * 3 // 4, SIZE // 4 : SIZE * 3 // 4] = (200, 150, 90)
    return np.clip(picture + rng.integers(-20, 20, picture.shape), 0, 255).astype(np.uint8)


def diffusers_img2img(
    model: DiffusionModel, camera: np.ndarray, steps: int, strength: float, guidance: float, negative: str = ""
) -> np.ndarray:
    result = reference_pipeline(model)(
        "a watercolor portrait",
        negative_prompt=negative or None,
        image=Image.fromarray(camera),
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(42),
        output_type="np",
    )
    return np.asarray(result.images[0])


def our_loop(
    stream: LcmStream, camera: np.ndarray, steps: int, strength: float, guidance: float, negative: str = ""
) -> np.ndarray:
    with torch.inference_mode():
        condition = stream.condition("a watercolor portrait", negative, guidance, 42, SIZE, SIZE)
        latents = stream.encode(stream.to_input(camera[None]))
        latents = stream.denoise(latents, stream.schedule(steps, strength), [condition])
        return stream.decode(latents)[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize(
    ("steps", "strength", "guidance"),
    [(4, 0.5, 1.0), (4, 1.0, 8.0), (2, 0.6, 3.0), (8, 0.3, 1.5), (1, 1.0, 1.0)],
)
def test_the_loop_equals_diffusers_img2img_with_lcm(
    model: DiffusionModel, camera: np.ndarray, steps: int, strength: float, guidance: float
) -> None:
    """The guidance scale goes through the tiny model's w-embedding, as in LCM-Dreamshaper."""
    expected = diffusers_img2img(model, camera, steps, strength, guidance)
    ours = our_loop(LcmStream(model), camera, steps, strength, guidance)
    assert ours.shape == expected.shape == (SIZE, SIZE, 3)
    assert np.abs(ours - expected).max() <= 1e-5
    assert ours.std() > 0.05, "a picture, not a flat field"


def test_classic_guidance_matches_for_a_model_without_w_embedding(model: DiffusionModel, camera: np.ndarray) -> None:
    """SD 1.5 with LCM-LoRA has no w-embedding: guidance > 1 runs the unconditional pass too."""
    lora_like = dataclasses.replace(model, unet=tiny_unet(guidance_embedding=False))
    stream = LcmStream(lora_like)
    assert stream.classic_guidance(3.0) and not stream.classic_guidance(1.0)
    expected = diffusers_img2img(lora_like, camera, 4, 0.75, 3.0, negative="blurry")
    ours = our_loop(stream, camera, 4, 0.75, 3.0, negative="blurry")
    assert np.abs(ours - expected).max() <= 1e-5


def test_at_least_one_unet_evaluation_runs(model: DiffusionModel) -> None:
    stream = LcmStream(model)
    assert unet_evaluations(4, 0.1) == 1
    assert stream.schedule(4, 0.1).timesteps == stream.schedule(4, 1.0).timesteps[-1:]
    assert len(stream.schedule(4, 0.5).steps) == 2


def moving_camera(count: int, top: int = SIZE // 4) -> list[np.ndarray]:
    """A bright square that moves an eighth of the picture per frame over a noisy background."""
    rng = np.random.default_rng(2 + top)
    frames = []
    for index in range(count):
        picture = np.full((SIZE, SIZE, 3), 60, np.uint8)
        left = index * SIZE // 8
        picture[top : top + SIZE // 4, left : left + SIZE // 4] = (200, 150, 90)
        frames.append(np.clip(picture + rng.integers(-20, 20, picture.shape), 0, 255).astype(np.uint8))
    return frames


@pytest.mark.parametrize(("steps", "strength"), [(4, 0.5), (4, 1.0), (3, 1.0)])
def test_stream_batch_gives_each_frame_the_loops_picture_n_minus_1_calls_later(
    model: DiffusionModel, steps: int, strength: float
) -> None:
    """Stream batch: each frame takes one step per call in a batch with the frames before it, so
    the call that takes frame k returns frame k-(n-1), finished, as the full loop would make it.
    The camera moves: carried latents that were ignored or mixed up would show."""
    stream = LcmStream(model)
    schedule = stream.schedule(steps, strength)
    lag = len(schedule.steps) - 1
    with torch.inference_mode():
        condition = stream.condition("a watercolor portrait", "", 1.0, 42, SIZE, SIZE)
        latents = [stream.encode(stream.to_input(frame[None])) for frame in moving_camera(6)]
        expected = [stream.denoise(frame, schedule, [condition]) for frame in latents]
        pending = stream.stream_prime(latents[0], schedule, [condition])
        assert pending.shape[1] == lag
        for k in range(1, len(latents)):
            finished, pending = stream.stream_denoise(latents[k], pending, schedule, [condition])
            assert torch.allclose(finished, expected[max(0, k - lag)], atol=1e-4), k
    assert (expected[0] - expected[-1]).abs().mean() > 0.05, "the frames differ"


@pytest.mark.parametrize("classic", [False, True])
def test_stream_batch_keeps_sessions_apart_in_one_call(model: DiffusionModel, classic: bool) -> None:
    """Two sessions with one schedule share every stream-batch call (n = 4 samples each); each
    gets its own camera, prompt, seed and guidance (w-embedding, or classic guidance's scale)
    through the same picture as its own full loop: a sample given another session's text,
    guidance or coefficients would show."""
    if classic:
        model = dataclasses.replace(model, unet=tiny_unet(guidance_embedding=False))
    stream = LcmStream(model)
    schedule = stream.schedule(4, 1.0)
    lag = len(schedule.steps) - 1
    with torch.inference_mode():
        conditions = [
            stream.condition("a watercolor portrait", "", 2.0, 42, SIZE, SIZE),
            stream.condition("a claymation figure", "blurry", 7.0, 7, SIZE, SIZE),
        ]
        cameras = [moving_camera(6), moving_camera(6, top=SIZE // 2)]
        latents = [[stream.encode(stream.to_input(frame[None])) for frame in camera] for camera in cameras]
        expected = [
            [stream.denoise(frame, schedule, [condition]) for frame in session]
            for session, condition in zip(latents, conditions, strict=True)
        ]
        pending = stream.stream_prime(torch.cat([session[0] for session in latents]), schedule, conditions)
        for k in range(1, 6):
            entering = torch.cat([session[k] for session in latents])
            finished, pending = stream.stream_denoise(entering, pending, schedule, conditions)
            for index, session in enumerate(expected):
                # Classic guidance at 7 drives the tiny model's latents to ~80: float error scales with them.
                ours, reference = finished[index : index + 1], session[max(0, k - lag)]
                assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-3), (index, k)
    assert (expected[0][-1] - expected[1][-1]).abs().mean() > 0.05, "the sessions' pictures differ"


@pytest.fixture(scope="module")
def turbo() -> DiffusionModel:
    return load_model("tiny-turbo", "", None, "cpu", "float32")


@pytest.mark.parametrize(
    ("steps", "strength", "guidance"),
    [(1, 1.0, 0.0), (2, 0.5, 0.0), (4, 0.5, 1.0), (2, 1.0, 3.0)],
)
def test_the_loop_equals_diffusers_img2img_for_sd_turbos_architecture(
    turbo: DiffusionModel, camera: np.ndarray, steps: int, strength: float, guidance: float
) -> None:
    """SD 2.1's architecture as SD-Turbo ships it (OpenCLIP-wide text states, linear
    projections, Euler settings, no w-embedding): 1 or 2 evaluations per frame, same math."""
    assert turbo.guidance_embedding_dim is None and turbo.unet.config.use_linear_projection
    expected = diffusers_img2img(turbo, camera, steps, strength, guidance)
    ours = our_loop(LcmStream(turbo), camera, steps, strength, guidance)
    assert np.abs(ours - expected).max() <= 1e-5
    assert ours.std() > 0.05, "a picture, not a flat field"
