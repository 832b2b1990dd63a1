"""The last stage of every transform: RGB arrays -> yuv420p VideoFrames for the encoder.

A stage of its own, so the conversion of frame N runs (on the CPU) while the stage before it
works on frame N+1, and the event loop's encoder thread converts nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from transforms.base import FrameJob, Stage
from transforms.frames import rgb_to_frame


class FinishStage(Stage):
    name = "finish"

    def process(self, jobs: Sequence[FrameJob]) -> None:
        for job in jobs:
            job.data = rgb_to_frame(job.data)
