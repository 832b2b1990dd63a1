"""One browser's stream: its peer connection, camera reader, control channel and teardown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from signaling.candidates import announce
from signaling.control import ControlChannel, ParamsRejected
from signaling.ports import PortRange, SessionPorts
from signaling.protocol import CONTROL_LABEL, error_reply
from transforms.base import FrameJob
from transforms.engine import FrameEngine
from transforms.params import StyleParams
from transforms.track import StylizedTrack

logger = logging.getLogger(__name__)

STATS_INTERVAL_S = 1.0  # how often the client gets a stats message
ERROR_PUSH_INTERVAL_S = 1.0  # at most one frame-error message per second per session


class OfferError(ValueError):
    """The client's offer cannot be answered; the text says why (HTTP 400)."""


class Session:
    """A peer connection that sends back, restyled, the camera it receives.

    It closes itself, completely and once, when the connection fails or closes, when the
    control channel closes, when no camera frame arrives for `frame_timeout_s`, or when the
    server shuts down.

    With `ports`, its UDP sockets are bound inside that range; with `announced_address`,
    the answer's host candidates carry that address (signaling/ports.py, candidates.py).
    """

    def __init__(
        self,
        session_id: str,
        *,
        engine: FrameEngine,
        params: StyleParams,
        configuration: RTCConfiguration,
        frame_timeout_s: float,
        on_closed: Callable[[Session], None],
        ports: PortRange | None = None,
        announced_address: str | None = None,
    ) -> None:
        self.id = session_id
        self._ports = SessionPorts(ports, session_id) if ports is not None else None
        self._announced_address = announced_address
        self._engine = engine
        self._frame_timeout_s = frame_timeout_s
        self._on_closed = on_closed
        self._loop = asyncio.get_running_loop()
        self.pc = RTCPeerConnection(configuration)
        self.output = StylizedTrack(depth=engine.frames_per_batch)
        self.engine_session = engine.open_session(
            session_id, params, on_result=self._on_result, on_error=self._on_error
        )
        self.created_at = time.monotonic()
        self.last_frame_at: float | None = None
        self._camera: MediaStreamTrack | None = None
        self._control: ControlChannel | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._close_task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = asyncio.Event()
        self._last_error_push = float("-inf")
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_connection_state)

    async def answer(self, sdp: str) -> RTCSessionDescription:
        """Answer the browser's offer; the answer sends the stylized track back on the
        transceiver that brings the camera. Raises OfferError for an unusable offer, and
        signaling.ports.PortRangeError when no UDP port is left for it, or a socket was bound
        outside the range."""
        if not sdp.startswith("v=0"):
            raise OfferError("invalid SDP offer: it must start with 'v=0'")
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise OfferError(f"invalid SDP offer: {exc or type(exc).__name__}") from exc
        if self._camera is None:
            raise OfferError("the offer has no video track to restyle (send the camera)")
        await self._prepare(self.engine_session.params)
        with self._gathering():
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        if self._ports is not None:
            self._ports.check_host_ports(self.pc.localDescription.sdp)
        self._start(self._read_camera(self._camera), "camera")
        self._start(self._report(), "report")
        answer = self.pc.localDescription
        if self._announced_address is None:
            return answer
        return RTCSessionDescription(sdp=announce(answer.sdp, self._announced_address), type=answer.type)

    async def apply_params(self, changes: dict[str, Any]) -> StyleParams:
        """Validate a partial update, let the transform precompute for it, then make it live.
        On any error nothing changes."""
        params = self.engine_session.params.updated(changes)
        await self._prepare(params)
        self.engine_session.params = params
        logger.info("session %s: params %s", self.id, changes)
        return params

    async def close(self, reason: str) -> None:
        """Tear everything down; any number of calls, from anywhere, end the same way."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        logger.info("session %s closing: %s", self.id, reason)
        try:
            self._engine.close_session(self.engine_session)
            current = asyncio.current_task()
            tasks = [task for task in self._tasks if task is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._control is not None:
                await self._control.close()
            self.output.stop()
            await self.pc.close()
        finally:
            if self._ports is not None:
                self._ports.close()  # also the sockets aioice had not taken over when gathering failed
            self._on_closed(self)
            self._closed.set()

    def snapshot(self) -> dict[str, Any]:
        return {
            "connection": self.pc.connectionState,
            "age_s": round(time.monotonic() - self.created_at, 1),
            "params": self.engine_session.params.model_dump(),
            **self.engine_session.snapshot(),
        }

    async def _prepare(self, params: StyleParams) -> None:
        try:
            await asyncio.to_thread(self._engine.transform.prepare_params, self.engine_session, params)
        except Exception as exc:
            logger.exception("session %s: transform could not prepare params", self.id)
            raise ParamsRejected(f"the transform could not apply these params: {exc}") from exc

    def _gathering(self) -> contextlib.AbstractContextManager[None]:
        """Where the ICE agent binds its sockets (setLocalDescription gathers candidates)."""
        return self._ports.gathering() if self._ports is not None else contextlib.nullcontext()

    def _start(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=f"{name}-{self.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _schedule_close(self, reason: str) -> None:
        if not self._closing and self._close_task is None:
            self._close_task = asyncio.create_task(self.close(reason), name=f"close-{self.id}")

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "video" or self._camera is not None:
            logger.info("session %s: ignoring extra %s track", self.id, track.kind)
            return
        self._camera = track
        self.pc.addTrack(self.output)

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != CONTROL_LABEL or self._control is not None:
            logger.info("session %s: ignoring data channel %r", self.id, channel.label)
            return
        self._control = ControlChannel(channel, self.id, self.apply_params)
        channel.on("close", lambda: self._schedule_close("control channel closed"))

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        logger.info("session %s: connection %s", self.id, state)
        if state in ("failed", "closed"):
            self._schedule_close(f"connection {state}")

    def _on_result(self, job: FrameJob) -> None:
        self.output.offer(job.data, job.received_at)

    def _on_error(self, message: str) -> None:
        self._loop.call_soon_threadsafe(self._push_error, message)

    def _push_error(self, message: str) -> None:
        now = time.monotonic()
        if self._control is not None and now - self._last_error_push >= ERROR_PUSH_INTERVAL_S:
            self._last_error_push = now
            self._control.send(error_reply(message, "frame"))

    async def _read_camera(self, camera: MediaStreamTrack) -> None:
        """Hand every decoded camera frame to the engine, which keeps only the newest."""
        try:
            while True:
                frame = await camera.recv()
                self.last_frame_at = time.monotonic()
                self._engine.submit(self.engine_session, frame, self.last_frame_at)
        except MediaStreamError:
            self._schedule_close("camera track ended")

    async def _report(self) -> None:
        """Push stats about once a second; close the session when the camera goes quiet."""
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            quiet_s = time.monotonic() - (self.last_frame_at or self.created_at)
            if quiet_s > self._frame_timeout_s:
                self._schedule_close(f"no camera frame for {quiet_s:.0f} s")
                return
            if self._control is not None:
                self._control.send({"type": "stats", **self.engine_session.snapshot()})
