"""Similarity filter: a camera frame nearly identical to the last one processed skips the model.

A person sitting still costs nothing, and a talking mouth is never skipped: the picture is
compared block by block (a grid of cells about 10 px wide on a 640 px camera, each the mean
gray level of its pixels, which averages sensor noise and codec artifacts away), and the
largest change of any block decides. A whole-picture mean would hide a mouth: a 60x30 px
region moving in a 640x480 picture counted as "the same picture" in 54 of 60 frames. The
reference is the last frame actually processed, so a slow drift still adds up and gets
through; after `max_skips` skips in a row a frame is processed anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from av import VideoFrame

GRID_COLUMNS = 64  # blocks across the picture: 10 px on a 640 px camera, a fraction of a mouth


@dataclass
class SimilarityState:
    reference: np.ndarray | None = None
    params: object = None  # the output repeats only for the params it was made with
    skips_in_a_row: int = 0


def block_means(frame: VideoFrame) -> np.ndarray:
    """The mean gray level (0-255) of each block of a GRID_COLUMNS-wide grid over the frame."""
    gray = frame.to_ndarray(format="gray").astype(np.float32)
    rows = max(1, round(GRID_COLUMNS * gray.shape[0] / gray.shape[1]))
    return cv2.resize(gray, (GRID_COLUMNS, rows), interpolation=cv2.INTER_AREA)


class SimilarityFilter:
    def __init__(self, threshold: float, max_skips: int) -> None:
        """`threshold`: a frame is the same picture when no block's mean gray level changed by
        this much (0-255) since the last processed frame."""
        self.threshold = threshold
        self.max_skips = max_skips

    def is_repeat(self, state: SimilarityState, frame: VideoFrame, params: object, changing: bool = False) -> bool:
        """True when `frame` (to be made with `params`) may be answered with the last output;
        updates `state`. A params change always goes through the model, and so does every
        frame while the look is `changing` on its own (a transition under way)."""
        means = block_means(frame)
        if (
            not changing
            and state.reference is not None
            and state.reference.shape == means.shape
            and state.params == params
            and state.skips_in_a_row < self.max_skips
            and float(np.abs(means - state.reference).max()) < self.threshold
        ):
            state.skips_in_a_row += 1
            return True
        state.reference = means
        state.params = params
        state.skips_in_a_row = 0
        return False
