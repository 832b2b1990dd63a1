"""Conversions between av.VideoFrame and RGB arrays at the processing size."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from av import VideoFrame

SIZE_MULTIPLE = 16  # px: whole latents (1/8) that the UNet's levels halve evenly more often


@dataclass(frozen=True)
class PictureSize:
    """The size a camera's pictures are processed at: the camera's aspect (4:3, 16:9) at about
    width x height pixels, the model's native count (576x432 or 672x384 for 512x512), or, with
    `keep_aspect` off, exactly width x height with the camera centre-cropped to it."""

    width: int
    height: int
    keep_aspect: bool = False

    def for_camera(self, camera_width: int, camera_height: int) -> tuple[int, int]:
        """(width, height) for a camera picture of that size."""
        if not self.keep_aspect:
            return self.width, self.height
        aspect = camera_width / camera_height
        height = math.floor(math.sqrt(self.width * self.height / aspect) / SIZE_MULTIPLE) * SIZE_MULTIPLE
        height = max(SIZE_MULTIPLE, height)
        width = max(SIZE_MULTIPLE, math.floor(height * aspect / SIZE_MULTIPLE) * SIZE_MULTIPLE)
        return width, height

    def describe(self) -> str:
        if self.keep_aspect:
            return f"the camera's aspect at about {self.width}x{self.height} pixels"
        return f"{self.width}x{self.height}"


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


def frame_to_rgb(frame: VideoFrame, size: PictureSize) -> np.ndarray:
    """An HxWx3 uint8 RGB array of the frame at its processing size."""
    return fit(frame.to_ndarray(format="rgb24"), *size.for_camera(frame.width, frame.height))


def rgb_to_frame(image: np.ndarray) -> VideoFrame:
    """A yuv420p frame, the format the video encoders take, so their thread does no conversion."""
    return VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
