"""The stylized output track: hands engine results to aiortc's encoder, newest first."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from fractions import Fraction

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

VIDEO_CLOCK_RATE = 90_000  # RTP video clock (RFC 3551); the encoders expect it
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK_RATE)
MAX_PACING_GAP_S = 0.2  # frames of one batch are spread out, but never held longer than this


class StylizedTrack(MediaStreamTrack):
    """A video track whose frames come from engine threads.

    It keeps at most `depth` results (1 unless frames are batched per session): a newer one
    pushes out the oldest, so nothing piles up. recv() stamps each frame with a monotonic
    pts on the 90 kHz clock, from the server's own clock; frames that arrive together (a
    batch) leave spaced as their camera frames were.
    """

    kind = "video"

    def __init__(self, depth: int = 1) -> None:
        super().__init__()
        self._event_loop = asyncio.get_running_loop()
        self._results: deque[tuple[VideoFrame, float]] = deque(maxlen=depth)
        self._ready = asyncio.Event()
        self._started_at: float | None = None
        self._last_pts = -1
        self._last_sent: tuple[float, float] | None = None  # (wall time, camera time)
        self._last_offered: VideoFrame | None = None

    def offer(self, frame: VideoFrame, captured_at: float) -> None:
        """Queue `frame` (its camera frame arrived at `captured_at`); called from one engine thread."""
        if frame is self._last_offered:
            # A repeated result (similarity filter): the encoder may still hold the first one and
            # recv() stamps pts on it, so it goes out as a copy, made here and not on the event loop.
            frame = VideoFrame.from_ndarray(frame.to_ndarray(), format=frame.format.name)
        else:
            self._last_offered = frame
        self._event_loop.call_soon_threadsafe(self._put, frame, captured_at)

    def _put(self, frame: VideoFrame, captured_at: float) -> None:
        self._results.append((frame, captured_at))
        self._ready.set()

    async def recv(self) -> VideoFrame:
        while not self._results:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        if self.readyState != "live":
            raise MediaStreamError
        await self._pace(self._results[0][1])
        frame, captured_at = self._results.popleft()
        now = time.monotonic()
        self._last_sent = (now, captured_at)
        frame.pts = self._next_pts(now)
        frame.time_base = VIDEO_TIME_BASE
        return frame

    def stop(self) -> None:
        super().stop()
        self._ready.set()

    async def _pace(self, captured_at: float) -> None:
        """Hold a frame of a batch until its camera spacing from the previous one has passed."""
        if self._results.maxlen == 1 or self._last_sent is None:
            return
        sent_wall, sent_camera = self._last_sent
        gap = min(max(captured_at - sent_camera, 0.0), MAX_PACING_GAP_S)
        await asyncio.sleep(max(0.0, sent_wall + gap - time.monotonic()))

    def _next_pts(self, now: float) -> int:
        if self._started_at is None:
            self._started_at = now
        pts = max(int((now - self._started_at) * VIDEO_CLOCK_RATE), self._last_pts + 1)
        self._last_pts = pts
        return pts
