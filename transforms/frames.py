"""Conversions between av.VideoFrame and RGB arrays at the processing size."""

from __future__ import annotations

import cv2
import numpy as np
from av import VideoFrame


def center_crop(width: int, height: int, aspect: float) -> tuple[int, int, int, int]:
    """The largest centred (x, y, w, h) of a width x height picture with the given w/h aspect."""
    if width / height > aspect:
        crop_w, crop_h = round(height * aspect), height
    else:
        crop_w, crop_h = width, round(width / aspect)
    return (width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h


def fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre-crop to the target aspect and resize: people are framed, never stretched."""
    x, y, w, h = center_crop(image.shape[1], image.shape[0], width / height)
    image = image[y : y + h, x : x + w]
    if (w, h) == (width, height):
        return np.ascontiguousarray(image)
    interpolation = cv2.INTER_AREA if w > width else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def frame_to_rgb(frame: VideoFrame, width: int, height: int) -> np.ndarray:
    """An HxWx3 uint8 RGB array of the frame at the processing size."""
    return fit(frame.to_ndarray(format="rgb24"), width, height)


def rgb_to_frame(image: np.ndarray) -> VideoFrame:
    """A yuv420p frame, the format the video encoders take, so their thread does no conversion."""
    return VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
