"""The stylized output track: newest result, monotonic 90 kHz pts, batches spread out."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from transforms.track import VIDEO_CLOCK_RATE, StylizedTrack


def frame() -> VideoFrame:
    return VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")


async def test_newest_result_wins_and_pts_increase() -> None:
    track = StylizedTrack()
    first, second = frame(), frame()
    track.offer(first, 0.0)
    track.offer(second, 0.03)
    await asyncio.sleep(0.01)
    sent = await track.recv()
    assert sent is second, "an older result that was never sent is dropped"
    track.offer(frame(), 0.06)
    later = await track.recv()
    assert later.pts is not None and sent.pts is not None and later.pts > sent.pts
    assert later.time_base == Fraction(1, VIDEO_CLOCK_RATE)


async def test_a_batch_leaves_spaced_like_its_camera_frames() -> None:
    track = StylizedTrack(depth=3)
    for index in range(3):
        track.offer(frame(), index * 0.05)
    await asyncio.sleep(0.01)
    times = []
    for _ in range(3):
        await track.recv()
        times.append(time.monotonic())
    assert times[2] - times[0] >= 0.09


async def test_stop_ends_a_waiting_recv() -> None:
    track = StylizedTrack()
    waiting = asyncio.create_task(track.recv())
    await asyncio.sleep(0.01)
    track.stop()
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(waiting, 1)


async def test_a_repeated_result_goes_out_as_a_copy() -> None:
    """The similarity filter repeats the last output object; the encoder may still hold it."""
    track = StylizedTrack()
    first = frame()
    track.offer(first, 0.0)
    sent = await track.recv()
    track.offer(first, 0.03)
    again = await track.recv()
    assert again is not sent
    assert np.array_equal(again.to_ndarray(format="rgb24"), sent.to_ndarray(format="rgb24"))
