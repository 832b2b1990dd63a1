"""The similarity filter sees local motion (a mouth, a hand) and ignores sensor noise."""

from __future__ import annotations

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


@pytest.mark.parametrize("seed", range(6))
def test_a_talking_mouth_of_1_percent_anywhere_is_never_skipped(seed: int) -> None:
    """Regression: a 60x30 px mouth opening and closing at 5 Hz counted as "the same picture"
    in 54 of 60 frames (a whole-picture mean). Each frame in which a 1% region changed must go
    through, wherever it lies on the grid of blocks."""
    rng = np.random.default_rng(seed)
    left, top = int(rng.integers(0, WIDTH - REGION)), int(rng.integers(0, HEIGHT - REGION))
    state, check = SimilarityState(), SimilarityFilter(threshold=5.0, max_skips=10)
    previous_open = None
    for index in range(60):
        mouth_open = (index // 3) % 2 == 1  # 5 Hz at 30 fps
        picture = background()
        picture[top : top + REGION, left : left + REGION] = (40, 20, 20) if mouth_open else (190, 140, 120)
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
