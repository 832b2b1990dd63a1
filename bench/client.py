"""A real aiortc client of the stylecam protocol, for tests and benchmarks.

It sends a synthetic camera whose pixels carry the frame index (a grid of black and white
cells in the middle of the picture), receives the stylized track on the same connection,
reads the index back and so measures glass-to-glass latency for every frame of a
structure-keeping transform (passthrough, invert: the code reads the same either way).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import aiohttp
import cv2
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from transforms.frames import center_crop

logger = logging.getLogger(__name__)

SOURCE_SIZE = (640, 480)
CODE_GRID = 4  # 4 x 4 cells: two references (white, black), 13 index bits, 1 parity bit
CODE_CELL_PX = 40  # big flat cells survive VP8 at low bitrate and any centred crop
INDEX_BITS = 13
INDEX_MODULUS = 1 << INDEX_BITS  # 8192 frames: 4.5 minutes at 30 fps
MIN_REFERENCE_CONTRAST = 60  # below it the output does not carry the code
CLOCK_RATE = 90_000
# "switch" scene: grey levels of brightness change per frame, within +-DRIFT_LEVELS. Over the
# server's similarity threshold (5 levels in the block that changed most, transforms/similarity.py)
# after VP8: with 5 levels 6% of the frames came out of the codec under it (and were skipped;
# tiny model, 64 px, 2026-11-29), with 8 and a period of 16 frames none were.
DRIFT_STEP = 8
DRIFT_LEVELS = 32
CONFIRM_FRAMES = 2  # a switch counts as seen when this many frames after the first agree


def _cell_centers(width: int, height: int) -> list[tuple[float, float]]:
    """Centres of the code cells, row by row, in source pixels."""
    left = width / 2 - CODE_GRID * CODE_CELL_PX / 2
    top = height / 2 - CODE_GRID * CODE_CELL_PX / 2
    return [
        (left + (col + 0.5) * CODE_CELL_PX, top + (row + 0.5) * CODE_CELL_PX)
        for row in range(CODE_GRID)
        for col in range(CODE_GRID)
    ]


def _code_bits(index: int) -> list[int]:
    value = index % INDEX_MODULUS
    bits = [(value >> bit) & 1 for bit in range(INDEX_BITS)]
    return [1, 0, *bits, sum(bits) % 2]


def paint_index(image: np.ndarray, index: int) -> None:
    """Draw the code of `index` into an RGB image of the source size, in place."""
    half = CODE_CELL_PX // 2
    for (cx, cy), bit in zip(_cell_centers(image.shape[1], image.shape[0]), _code_bits(index), strict=True):
        x, y = int(cx) - half, int(cy) - half
        image[y : y + CODE_CELL_PX, x : x + CODE_CELL_PX] = 255 if bit else 0


def read_index(gray: np.ndarray, source_size: tuple[int, int] = SOURCE_SIZE) -> int | None:
    """The frame index in an output picture (grayscale), or None where the code is unreadable.

    The server centre-crops the source to its processing aspect and scales it; the cell
    centres are mapped the same way. A cell is 1 where it looks like the white reference,
    so an inverted picture reads the same.
    """
    height, width = gray.shape
    x0, y0, crop_w, _ = center_crop(*source_size, width / height)
    scale = width / crop_w
    radius = max(1, int(CODE_CELL_PX * scale / 4))
    values = []
    for cx, cy in _cell_centers(*source_size):
        x, y = int((cx - x0) * scale), int((cy - y0) * scale)
        values.append(float(gray[y - radius : y + radius, x - radius : x + radius].mean()))
    white, black = values[0], values[1]
    if abs(white - black) < MIN_REFERENCE_CONTRAST:
        return None
    bits = [int(abs(value - white) < abs(value - black)) for value in values[2:]]
    *index_bits, parity = bits
    if sum(index_bits) % 2 != parity:
        return None
    return sum(bit << position for position, bit in enumerate(index_bits))


class SyntheticCamera(MediaStreamTrack):
    """A paced synthetic camera, in one of three scenes:

    - "index": a moving ball, and the frame index painted in the middle (latency per frame
      for structure-keeping transforms);
    - "still": the same picture every frame (a person sitting still);
    - "toggle": two very different pictures, switching every `toggle_s` seconds; the switch
      times are kept, and any deterministic transform (diffusion with fixed noise too)
      shows the switch in its output (latency per switch);
    - "switch": as "toggle", but the two pictures differ more and their brightness moves
      every frame (DRIFT_STEP levels): no frame repeats the one before it, so the server's
      similarity filter lets every frame through to the model (a throughput figure is then
      the model's), and a switch still stands out (scene_switch_latencies).
    """

    kind = "video"

    def __init__(
        self, fps: float = 30.0, scene: str = "index", toggle_s: float = 1.0, size: tuple[int, int] = SOURCE_SIZE
    ) -> None:
        super().__init__()
        self.fps = fps
        self.scene = scene
        self.size = size
        self.sent_at: dict[int, float] = {}
        self.switched_at: list[float] = []
        self.frames_sent = 0
        self._frames_per_phase = max(1, round(toggle_s * fps))
        self._started_at: float | None = None
        gradient = np.linspace(40, 200, size[0], dtype=np.uint8)
        self._background = np.dstack([np.tile(gradient, (size[1], 1))] * 3)
        self._background[..., 2] = 120
        self._alternate = 255 - self._background[:, ::-1]
        self._alternate[::24] = 0
        if scene == "switch":
            self._background, self._alternate = switch_pictures(size)

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._started_at is None:
            self._started_at = time.monotonic()
        index = self.frames_sent
        due = self._started_at + index / self.fps
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        frame = VideoFrame.from_ndarray(self._picture(index), format="rgb24")
        frame.pts = int(index * CLOCK_RATE / self.fps)
        frame.time_base = Fraction(1, CLOCK_RATE)
        now = time.monotonic()
        self.sent_at[index % INDEX_MODULUS] = now
        if self.scene in ("toggle", "switch") and index and index % self._frames_per_phase == 0:
            self.switched_at.append(now)
        self.frames_sent += 1
        return frame

    def _picture(self, index: int) -> np.ndarray:
        if self.scene == "still":
            return self._background
        if self.scene in ("toggle", "switch"):
            picture = self._alternate if (index // self._frames_per_phase) % 2 else self._background
            return picture if self.scene == "toggle" else cv2.LUT(picture, _DRIFT_TABLES[drift_level(index)])
        image = self._background.copy()
        x = int((index * 4) % self.size[0])
        cv2.circle(image, (x, self.size[1] // 4), 30, (230, 60, 60), -1)
        paint_index(image, index)
        return image


def drift_level(index: int) -> int:
    """Brightness offset of frame `index` in the "switch" scene: a triangle wave of DRIFT_STEP
    levels per frame between -DRIFT_LEVELS and +DRIFT_LEVELS."""
    period = 4 * DRIFT_LEVELS // DRIFT_STEP
    phase = index % period
    rise = phase if phase <= period // 2 else period - phase
    return rise * DRIFT_STEP - DRIFT_LEVELS


_DRIFT_TABLES = {
    level: np.clip(np.arange(256) + level, 0, 255).astype(np.uint8)
    for level in range(-DRIFT_LEVELS, DRIFT_LEVELS + 1, DRIFT_STEP)
}


def switch_pictures(size: tuple[int, int] = SOURCE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The "switch" scene's two pictures: a left-to-right ramp, and the ramp the other way
    with a checkerboard over it (about 80 grey levels apart on average)."""
    width, height = size
    ramp = np.linspace(40, 200, width)
    first = np.dstack([np.tile(ramp, (height, 1))] * 2 + [np.full((height, width), 120.0)])
    rows, cols = np.mgrid[0:height, 0:width]
    squares = np.where((rows // 80 + cols // 80) % 2, 50.0, -50.0)[..., None]
    second = 255.0 - first + squares
    return first.astype(np.uint8), np.clip(second, 0, 255).astype(np.uint8)


def scene_switch_latencies(
    frames: list[ReceivedFrame], switched_at: list[float], settle_s: float
) -> tuple[list[tuple[float, float | None]], float | None]:
    """(switch time, seconds until the output shows the new scene, or None) per camera switch
    of the "switch" scene, and how well the two scenes' outputs are told apart.

    Each output frame is given the scene whose typical output it is nearer to; the typical
    outputs are the median thumbnails of the frames received from `settle_s` after a switch to
    the next one (`settle_s` beyond the latency, so they show their scene). A switch shows in
    the first frame after it given the new scene and followed by CONFIRM_FRAMES more of it. The
    separation is the distance between the typical outputs over the median distance of a frame
    to its own typical output (well above 1: the method is sound; near 1: no figure to trust).
    """
    if not frames or not switched_at:
        return [], None
    phases = [*switched_at, float("inf")]
    settled: dict[int, list[np.ndarray]] = {0: [], 1: []}
    for number, (start, end) in enumerate(itertools.pairwise(phases), 1):
        settled[number % 2].extend(frame.thumbnail for frame in frames if start + settle_s <= frame.at < end)
    if not settled[0] or not settled[1]:
        return [(switched, None) for switched in switched_at], None
    typical = {scene: np.median(np.stack(thumbnails), axis=0) for scene, thumbnails in settled.items()}
    distances = np.array([[np.abs(frame.thumbnail - typical[scene]).mean() for scene in (0, 1)] for frame in frames])
    labels = distances.argmin(axis=1)
    noise = float(np.median(distances.min(axis=1)))
    separation = float(np.abs(typical[0] - typical[1]).mean()) / max(noise, 1e-6)
    timed: list[tuple[float, float | None]] = []
    for number, (switched, following) in enumerate(itertools.pairwise(phases), 1):
        scene = number % 2
        seen = None
        for position, frame in enumerate(frames):
            if frame.at <= switched:
                continue
            if frame.at >= following:
                break
            if all(label == scene for label in labels[position : position + 1 + CONFIRM_FRAMES]):
                seen = frame.at - switched
                break
        timed.append((switched, seen))
    return timed, separation


def switch_latencies(frames: list[ReceivedFrame], switched_at: list[float]) -> list[tuple[float, float]]:
    """(switch time, seconds until the output frame that shows it) per camera switch (toggle scene).

    A switch shows as an output frame much unlike the one before it; the n-th such change
    belongs to the n-th switch (nothing is reordered, and each phase lasts many frames).
    Switches before the first output frame are ignored.
    """
    changes = [
        (later.at, float(np.abs(later.thumbnail - earlier.thumbnail).mean()))
        for earlier, later in itertools.pairwise(frames)
    ]
    if not changes:
        return []
    strongest = sorted(size for _, size in changes)[-max(1, len(switched_at)) :]
    threshold = 0.5 * float(np.median(strongest))
    shown = [at for at, size in changes if size > threshold]
    pending = [at for at in switched_at if at > frames[0].at]
    return [(switched, seen - switched) for switched, seen in zip(pending, shown, strict=False)]


@dataclass
class ReceivedFrame:
    at: float
    width: int
    height: int
    index: int | None
    latency_s: float | None
    thumbnail: np.ndarray  # 32 x 32 gray, float: enough to see a scene change


class OfferRefused(RuntimeError):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"offer refused with {status}: {body.get('error')}")
        self.status = status
        self.body = body


@dataclass
class StreamClient:
    """One browser-like peer: connect(), then read `received`, `stats` and request() replies."""

    base_url: str
    params: dict[str, Any] | None = None
    fps: float = 30.0
    scene: str = "index"
    toggle_s: float = 1.0
    token: str | None = None
    keep_images: bool = False
    received: list[ReceivedFrame] = field(default_factory=list)
    stats: list[dict[str, Any]] = field(default_factory=list)
    frame_errors: list[dict[str, Any]] = field(default_factory=list)
    last_image: np.ndarray | None = None
    session_id: str | None = None

    def __post_init__(self) -> None:
        self.camera = SyntheticCamera(self.fps, self.scene, self.toggle_s)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.control: RTCDataChannel = self.pc.createDataChannel("control")
        self._replies: deque[asyncio.Future[dict[str, Any]]] = deque()
        self._opened = asyncio.Event()
        self._receiver: asyncio.Task[None] | None = None
        self.control.on("open", self._opened.set)
        self.control.on("message", self._on_message)
        self.pc.on("track", self._on_track)

    async def connect(self, timeout_s: float = 15.0) -> None:
        """Offer, get the answer, and wait until the control channel is open."""
        self.pc.addTrack(self.camera)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body: dict[str, Any] = {"sdp": self.pc.localDescription.sdp, "type": "offer"}
        if self.params is not None:
            body["params"] = self.params
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.base_url}/offer", json=body, headers=headers) as response,
        ):
            answer = await response.json()
            if response.status != 200:
                raise OfferRefused(response.status, answer)
        self.session_id = answer["session"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        await asyncio.wait_for(self._opened.wait(), timeout_s)

    async def request(self, message: dict[str, Any] | str, timeout_s: float = 10.0) -> dict[str, Any]:
        """Send a message (a dict as JSON, a str as it is) and wait for its reply (replies come
        in order: one that comes after its request timed out is dropped)."""
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies.append(reply)
        self.control.send(message if isinstance(message, str) else json.dumps(message))
        return await asyncio.wait_for(reply, timeout_s)

    async def wait_frames(self, count: int, timeout_s: float = 20.0) -> None:
        """Wait until `count` more frames have arrived."""
        target = len(self.received) + count
        deadline = time.monotonic() + timeout_s
        while len(self.received) < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.received)} of {target} frames arrived")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        if self._receiver is not None:
            self._receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._receiver
        await self.pc.close()

    def _on_message(self, message: str | bytes) -> None:
        data = json.loads(message)
        if data.get("type") == "stats":
            self.stats.append(data)
        elif data.get("type") == "error" and data.get("request") == "frame":
            self.frame_errors.append(data)
        elif self._replies:
            reply = self._replies.popleft()
            if not reply.done():  # done: its request timed out, and this is its late reply
                reply.set_result(data)
        else:
            logger.warning("unexpected control message %s", data)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._receiver = asyncio.create_task(self._receive(track))

    async def _receive(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, VideoFrame)
                now = time.monotonic()
                gray = frame.to_ndarray(format="gray")
                index = read_index(gray)
                sent = self.camera.sent_at.get(index) if index is not None else None
                latency = now - sent if sent is not None and sent <= now else None
                thumbnail = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
                self.received.append(ReceivedFrame(now, frame.width, frame.height, index, latency, thumbnail))
                if self.keep_images:
                    self.last_image = frame.to_ndarray(format="rgb24")
