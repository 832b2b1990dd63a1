"""The similarity filter sees local motion (a mouth, a hand) and ignores sensor noise."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from av import VideoFrame

from transforms.similarity import SimilarityFilter, SimilarityState

WIDTH, HEIGHT = 640, 480
REGION = 55  # px: 55 x 55 is 1% of a 640 x 480 picture
NOISE_LEVELS = 3  # +-3 gray levels of sensor noise on every pixel, every frame


def background() -> np.ndarray:
    picture = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    picture[..., 0] = np.linspace(40, 220, WIDTH, dtype=np.uint8)
    picture[..., 1] = np.linspace(200, 60, HEIGHT, dtype=np.uint8)[:, None]
    picture[..., 2] = 120
    return picture


def noisy(picture: np.ndarray, rng: np.random.Generator) -> VideoFrame:
    noise = rng.integers(-NOISE_LEVELS, NOISE_LEVELS + 1, picture.shape)
    pixels = np.clip(picture.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format="yuv420p")


def test_a_still_noisy_camera_skips_most_frames() -> None:
    rng = np.random.default_rng(0)
    still = background()
    state, check = SimilarityState(), SimilarityFilter(threshold=5.0, max_skips=10)
    skipped = sum(check.is_repeat(state, noisy(still, rng), None) for _ in range(120))
    assert skipped >= 0.75 * 120


MOUTH = (60, 30)  # px, in a 640 x 480 picture: 0.6 % of it
LIPS, OPEN_MOUTH = (170, 110, 100), (110, 60, 55)  # a mouth opening: about 50 gray levels darker


@pytest.mark.parametrize("seed", range(6))
def test_a_talking_mouth_anywhere_is_never_skipped(seed: int) -> None:
    """Regression: a 60x30 px mouth opening and closing at 5 Hz counted as "the same picture"
    in 54 of 60 frames (a 32x32 thumbnail's mean against 1.0). Each frame in which the mouth
    changed must go through, wherever it lies on the grid of blocks."""
    rng = np.random.default_rng(seed)
    width, height = MOUTH
    left, top = int(rng.integers(0, WIDTH - width)), int(rng.integers(0, HEIGHT - height))
    state, check = SimilarityState(), SimilarityFilter(threshold=5.0, max_skips=10)
    previous_open = None
    for index in range(60):
        mouth_open = (index // 3) % 2 == 1  # 5 Hz at 30 fps
        picture = background()
        picture[top : top + height, left : left + width] = OPEN_MOUTH if mouth_open else LIPS
        repeat = check.is_repeat(state, noisy(picture, rng), None)
        if mouth_open != previous_open:
            assert not repeat, (index, left, top)
        previous_open = mouth_open


@pytest.mark.parametrize("seed", range(3))
def test_a_small_region_moving_slowly_keeps_going_through(seed: int) -> None:
    """A 1% region moving 4 px a frame: no frame is answered with a stale picture."""
    rng = np.random.default_rng(seed)
    top = int(rng.integers(0, HEIGHT - REGION))
    state, check = SimilarityState(), SimilarityFilter(threshold=5.0, max_skips=10)
    skipped = 0
    for index in range(60):
        left = 20 + 4 * index + seed
        picture = background()
        picture[top : top + REGION, left : left + REGION] = (230, 230, 230)
        skipped += check.is_repeat(state, noisy(picture, rng), None)
    assert skipped == 0


def test_new_params_and_a_new_camera_size_always_go_through() -> None:
    rng = np.random.default_rng(1)
    state, check = SimilarityState(), SimilarityFilter(threshold=5.0, max_skips=10)
    still = background()
    check.is_repeat(state, noisy(still, rng), "a")
    assert check.is_repeat(state, noisy(still, rng), "a")
    assert not check.is_repeat(state, noisy(still, rng), "b"), "a params change goes through the model"
    smaller = VideoFrame.from_ndarray(np.ascontiguousarray(still[:240, :320]), format="rgb24")
    assert not check.is_repeat(state, smaller, "b"), "another camera size is another picture"


def vp8_round_trip(pictures: list[np.ndarray], bitrate: int) -> list[VideoFrame]:
    """The pictures as a browser's VP8 camera stream delivers them, decoded."""
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    encoder.bit_rate, encoder.time_base = bitrate, Fraction(1, 30)
    encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    decoder = av.CodecContext.create("libvpx", "r")
    decoded: list[VideoFrame] = []
    for index, picture in enumerate(pictures):
        frame = VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
        frame.pts = index
        for packet in encoder.encode(frame):
            decoded.extend(decoder.decode(packet))
    return decoded


def test_vp8_artifacts_of_a_still_noisy_camera_are_not_motion() -> None:
    """Compression changes a still picture's blocks from frame to frame too (2-5 levels at
    300 kbit/s): the threshold sits above that."""
    rng = np.random.default_rng(3)
    still = background()
    pictures = [
        np.clip(still.astype(np.int16) + rng.integers(-3, 4, still.shape), 0, 255).astype(np.uint8)
        for _ in range(90)
    ]
    frames = vp8_round_trip(pictures, 300_000)[10:]
    state, check = SimilarityState(), SimilarityFilter(threshold=5.0, max_skips=10)
    skipped = sum(check.is_repeat(state, frame, None) for frame in frames)
    assert skipped >= 0.75 * len(frames)
