"""Similarity filter: a camera frame nearly identical to the last one processed skips the model.

A person sitting still costs nothing; the comparison is on a 32x32 gray thumbnail (cheap,
blind to sensor noise) against the last frame actually processed, so a slow drift still
adds up and gets through, and after `max_skips` skips in a row a frame is processed anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from av import VideoFrame

THUMBNAIL_PX = 32


@dataclass
class SimilarityState:
    reference: np.ndarray | None = None
    params: object = None  # the output repeats only for the params it was made with
    skips_in_a_row: int = 0


class SimilarityFilter:
    def __init__(self, threshold: float, max_skips: int) -> None:
        """`threshold`: mean absolute difference of thumbnails (0-255 gray levels) under which
        a frame counts as the same picture."""
        self.threshold = threshold
        self.max_skips = max_skips

    def is_repeat(self, state: SimilarityState, frame: VideoFrame, params: object) -> bool:
        """True when `frame` (to be made with `params`) may be answered with the last output;
        updates `state`. A params change always goes through the model."""
        thumbnail = cv2.resize(
            frame.to_ndarray(format="gray"), (THUMBNAIL_PX, THUMBNAIL_PX), interpolation=cv2.INTER_AREA
        ).astype(np.float32)
        if (
            state.reference is not None
            and state.params == params
            and state.skips_in_a_row < self.max_skips
            and float(np.abs(thumbnail - state.reference).mean()) < self.threshold
        ):
            state.skips_in_a_row += 1
            return True
        state.reference = thumbnail
        state.params = params
        state.skips_in_a_row = 0
        return False
