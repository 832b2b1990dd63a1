"""Bounded latency: a model slower than the camera must drop frames, never queue them.

Glass-to-glass latency is read per frame: the client paints the frame index into its
camera pixels and reads it back from the stylized video.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from av import VideoFrame

from bench.client import StreamClient
from bench.serve import free_port

MODEL_DELAY_MS = 100
RUN_S = 20.0
CAMERA_FPS = 30.0


def p95(values: list[float]) -> float:
    return sorted(values)[int(0.95 * len(values))]


async def stream_for(url: str, seconds: float) -> tuple[list[float], list[float], StreamClient]:
    """Latencies (s) of the first and second half of a run of `seconds`."""
    client = StreamClient(url, fps=CAMERA_FPS)
    await client.connect()
    try:
        await client.wait_frames(1, timeout_s=15)
        start = client.received[0].at
        await asyncio.sleep(seconds)
        first = [f.latency_s for f in client.received if f.latency_s and f.at < start + seconds / 2]
        second = [f.latency_s for f in client.received if f.latency_s and f.at >= start + seconds / 2]
        return first, second, client
    finally:
        await client.close()


async def test_latency_stays_bounded_with_a_slow_model(spawn_server: Callable[..., Awaitable[str]]) -> None:
    url = await spawn_server("--transform", "invert", "--delay-ms", str(MODEL_DELAY_MS))
    first, second, client = await stream_for(url, RUN_S)
    everything = first + second
    assert len(everything) > RUN_S * 5, "frames must keep coming at about the model's speed"
    assert p95(everything) < 0.4, f"p95 latency {p95(everything):.3f} s"
    assert statistics.median(second) < statistics.median(first) + 0.05, (
        f"latency grew: {statistics.median(first):.3f} s -> {statistics.median(second):.3f} s"
    )
    assert client.stats[-1]["dropped"] > 0, "a slow model drops camera frames"


class NaiveTransformTrack(MediaStreamTrack):
    """What a naive aiortc transform track does: every input frame, in order, through the model."""

    kind = "video"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self._source = source

    async def recv(self) -> VideoFrame:
        frame = await self._source.recv()
        assert isinstance(frame, VideoFrame)
        await asyncio.sleep(MODEL_DELAY_MS / 1000)
        out = VideoFrame.from_ndarray(255 - frame.to_ndarray(format="rgb24"), format="rgb24")
        out.pts, out.time_base = frame.pts, frame.time_base
        return out


async def test_a_naive_transform_track_falls_behind() -> None:
    """The same run against a naive track: the design this product must not have."""
    peers: list[RTCPeerConnection] = []

    async def offer(request: web.Request) -> web.Response:
        body = await request.json()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        peers.append(pc)
        pc.on("track", lambda track: pc.addTrack(NaiveTransformTrack(track)))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp, "type": "answer", "session": "naive"})

    app = web.Application()
    app.router.add_post("/offer", offer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        first, second, _ = await stream_for(f"http://127.0.0.1:{port}", RUN_S)
    finally:
        for pc in peers:
            await pc.close()
        await runner.cleanup()
    assert max(second) > 10.0, f"naive latency reached only {max(second):.1f} s"
    assert statistics.median(second) > statistics.median(first) + 3.0
