"""The stylized output track: hands the newest engine result to aiortc's encoder."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

VIDEO_CLOCK_RATE = 90_000  # RTP video clock (RFC 3551); the encoders expect it
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK_RATE)


class StylizedTrack(MediaStreamTrack):
    """A video track whose frames come from engine threads; only the newest is kept.

    recv() waits for a result newer than the last one it returned and stamps it with a
    monotonic pts on the 90 kHz clock, from the server's own clock.
    """

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._event_loop = asyncio.get_running_loop()
        self._latest: VideoFrame | None = None
        self._ready = asyncio.Event()
        self._started_at: float | None = None
        self._last_pts = -1
        self.frames_replaced = 0

    def offer(self, frame: VideoFrame) -> None:
        """Make `frame` the next one to send; safe to call from any thread."""
        self._event_loop.call_soon_threadsafe(self._put, frame)

    def _put(self, frame: VideoFrame) -> None:
        if self._latest is not None:
            self.frames_replaced += 1
        self._latest = frame
        self._ready.set()

    async def recv(self) -> VideoFrame:
        while self._latest is None:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        if self.readyState != "live":
            raise MediaStreamError
        frame, self._latest = self._latest, None
        frame.pts = self._next_pts()
        frame.time_base = VIDEO_TIME_BASE
        return frame

    def stop(self) -> None:
        super().stop()
        self._ready.set()

    def _next_pts(self) -> int:
        now = time.monotonic()
        if self._started_at is None:
            self._started_at = now
        pts = max(int((now - self._started_at) * VIDEO_CLOCK_RATE), self._last_pts + 1)
        self._last_pts = pts
        return pts
