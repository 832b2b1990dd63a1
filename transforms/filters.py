"""Transforms that need no model: passthrough, invert, edges, cartoon (OpenCV).

They run on the CPU in three stages (prepare, filter, finish), like the diffusion
transform's stages, so the whole machinery is exercised without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from transforms.base import FrameJob, Stage, Transform
from transforms.finish import FinishStage
from transforms.frames import PictureSize, frame_to_rgb

ImageFilter = Callable[[np.ndarray], np.ndarray]

CANNY_LOW, CANNY_HIGH = 60, 140  # hysteresis thresholds that keep faces, drop sensor noise
CARTOON_SMOOTHING_PASSES = 4  # bilateral passes at half size: flat colour regions
CARTOON_EDGE_BLOCK_PX = 9  # adaptive-threshold neighbourhood for the ink lines


def invert(image: np.ndarray) -> np.ndarray:
    return cv2.bitwise_not(image)


def passthrough(image: np.ndarray) -> np.ndarray:
    return image


def edges(image: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    lines = cv2.Canny(cv2.GaussianBlur(gray, (5, 5), 0), CANNY_LOW, CANNY_HIGH)
    return cv2.cvtColor(lines, cv2.COLOR_GRAY2RGB)


def cartoon(image: np.ndarray) -> np.ndarray:
    small = cv2.pyrDown(image)
    for _ in range(CARTOON_SMOOTHING_PASSES):
        small = cv2.bilateralFilter(small, 7, 40, 7)
    color = cv2.resize(small, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    gray = cv2.medianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), 7)
    ink = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, CARTOON_EDGE_BLOCK_PX, 2)
    return cv2.bitwise_and(color, color, mask=ink)


class PrepareStage(Stage):
    """Camera frame -> RGB array at the processing size."""

    name = "prepare"

    def __init__(self, size: PictureSize) -> None:
        self._size = size

    def process(self, jobs: Sequence[FrameJob]) -> None:
        for job in jobs:
            job.data = frame_to_rgb(job.data, self._size)


class FilterStage(Stage):
    name = "filter"

    def __init__(self, image_filter: ImageFilter) -> None:
        self._filter = image_filter

    def process(self, jobs: Sequence[FrameJob]) -> None:
        for job in jobs:
            job.data = self._filter(job.data)


class FilterTransform(Transform):
    """A per-pixel image filter as a three-stage transform."""

    model_stage = FilterStage.name

    def __init__(
        self, name: str, image_filter: ImageFilter, width: int, height: int, keep_aspect: bool = False
    ) -> None:
        self.name = name
        self._filter = image_filter
        self._size = PictureSize(width, height, keep_aspect)

    def stages(self) -> list[Stage]:
        return [PrepareStage(self._size), FilterStage(self._filter), FinishStage()]

    def details(self) -> dict[str, str]:
        return {**super().details(), "size": self._size.describe()}


FILTERS: dict[str, ImageFilter] = {
    "passthrough": passthrough,
    "invert": invert,
    "edges": edges,
    "cartoon": cartoon,
}
