"""Serves one `control` data channel: replies in order, never lets a bad message hurt the stream."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCDataChannel
from pydantic import ValidationError

from signaling.protocol import (
    PingRequest,
    ProtocolError,
    describe_validation,
    error_reply,
    parse_request,
)
from transforms.params import StyleParams

logger = logging.getLogger(__name__)

INBOX_MESSAGES = 64  # requests waiting for their reply; beyond it a client gets "busy" errors

ParamsHandler = Callable[[dict[str, Any]], Awaitable[StyleParams]]


class ParamsRejected(Exception):
    """Valid params the transform could not prepare (e.g. the prompt encoder failed)."""


class ControlChannel:
    """Reads requests from the channel one at a time (so replies keep their order) and sends
    the replies; `apply_params` validates and applies a partial params update."""

    def __init__(self, channel: RTCDataChannel, session_id: str, apply_params: ParamsHandler) -> None:
        self._channel = channel
        self._session_id = session_id
        self._apply_params = apply_params
        self._inbox: asyncio.Queue[str | bytes] = asyncio.Queue(maxsize=INBOX_MESSAGES)
        channel.on("message", self._receive)
        self._task = asyncio.create_task(self._serve(), name=f"control-{session_id}")

    @property
    def is_open(self) -> bool:
        return self._channel.readyState == "open"

    def send(self, message: dict[str, Any]) -> None:
        """Send a JSON message if the channel is open; a closed channel drops it silently."""
        if self.is_open:
            self._channel.send(json.dumps(message))

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def _receive(self, message: str | bytes) -> None:
        try:
            self._inbox.put_nowait(message)
        except asyncio.QueueFull:
            self.send(error_reply("too many requests at once; wait for the replies"))

    async def _serve(self) -> None:
        while True:
            message = await self._inbox.get()
            try:
                reply = await self._handle(message)
            except Exception:
                logger.exception("session %s: control request failed", self._session_id)
                reply = error_reply("internal error while handling the request")
            self.send(reply)

    async def _handle(self, message: str | bytes) -> dict[str, Any]:
        try:
            request = parse_request(message)
        except ProtocolError as exc:
            logger.info("session %s: refused control message: %s", self._session_id, exc)
            return error_reply(str(exc), exc.request)
        if isinstance(request, PingRequest):
            return {"type": "pong", "t": request.t}
        try:
            params = await self._apply_params(request.changes())
        except ValidationError as exc:
            return error_reply(describe_validation(exc), "params")
        except ParamsRejected as exc:
            return error_reply(str(exc), "params")
        return {"type": "params", "ok": True, "params": params.model_dump()}
