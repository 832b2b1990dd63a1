"""The stylized picture keeps the camera's aspect at about the model's native pixel count."""

from __future__ import annotations

import numpy as np
import pytest
from av import VideoFrame

from models.loading import load_model
from models.stream import LcmStream
from tests.test_diffusion import session
from transforms.base import FrameJob
from transforms.diffusion import DiffusionTransform
from transforms.frames import PictureSize
from transforms.params import StyleParams


@pytest.mark.parametrize(
    ("camera", "expected"),
    [((640, 480), (576, 432)), ((1280, 720), (672, 384)), ((1920, 1080), (672, 384)), ((480, 640), (432, 576))],
)
def test_a_camera_keeps_its_aspect_at_about_the_models_pixel_count(
    camera: tuple[int, int], expected: tuple[int, int]
) -> None:
    width, height = PictureSize(512, 512, keep_aspect=True).for_camera(*camera)
    assert (width, height) == expected
    assert abs(width / height - camera[0] / camera[1]) < 0.03
    assert 0.9 * 512 * 512 < width * height <= 512 * 512


def test_a_fixed_size_is_that_size_for_any_camera() -> None:
    assert PictureSize(512, 512).for_camera(1280, 720) == (512, 512)


def test_sessions_with_4_3_and_16_9_cameras_each_get_their_own_aspect() -> None:
    """Two cameras of different aspect in one engine batch: each picture comes out at its
    camera's aspect, none cropped to a square with black bars."""
    model = load_model("tiny", "", None, "cpu", "float32")
    transform = DiffusionTransform(LcmStream(model), 256, 256, keep_aspect=True)
    jobs = []
    for name, (width, height) in (("four-three", (640, 480)), ("sixteen-nine", (1280, 720))):
        who = session(name, StyleParams())
        transform.prepare_params(who, who.params)
        camera = VideoFrame.from_ndarray(np.full((height, width, 3), 90, np.uint8), format="rgb24")
        jobs.append(FrameJob(who, 0.0, who.params, camera))
    for stage in transform.stages():
        stage.process(jobs)
    for job, aspect in zip(jobs, (4 / 3, 16 / 9), strict=True):
        width, height = job.data.width, job.data.height
        assert abs(width / height - aspect) < 0.03 * aspect, (job.session.id, width, height)
        assert 0.85 * 256 * 256 < width * height <= 256 * 256
