"""All live sessions: creates them from offers, enforces the session limit, closes them all."""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer

from settings import IceServer
from signaling.ports import PortRange
from signaling.session import Session
from transforms.host import EngineHost
from transforms.params import StyleParams

logger = logging.getLogger(__name__)


class CapacityError(RuntimeError):
    """The server is at its session limit (HTTP 503)."""


class NotReadyError(RuntimeError):
    """The transform is still loading, or failed to load (HTTP 503)."""


class SessionRegistry:
    def __init__(
        self,
        host: EngineHost,
        *,
        max_sessions: int,
        ice_servers: list[IceServer],
        frame_timeout_s: float,
        udp_ports: tuple[int, int] | None = None,
        announced_address: str | None = None,
    ) -> None:
        self._host = host
        self.capacity = max_sessions
        self._ice_servers = [RTCIceServer(**server.model_dump()) for server in ice_servers]
        self._frame_timeout_s = frame_timeout_s
        # One range for all sessions, so they take turns over its ports.
        self._ports = PortRange(*udp_ports) if udp_ports is not None else None
        if self._ports is not None and len(self._ports) < max_sessions:
            # Each session takes one port of the range (on each host address): the range is the real limit.
            logger.warning(
                "--udp-ports %s holds only %d sessions, fewer than --max-sessions %d: offers beyond it get 503",
                self._ports,
                len(self._ports),
                max_sessions,
            )
        self._announced_address = announced_address
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    async def open(self, sdp: str, params: StyleParams) -> tuple[Session, str]:
        """A new session answering `sdp`; returns it and the answer SDP.

        Raises CapacityError, NotReadyError, signaling.session.OfferError or
        signaling.ports.PortRangeError.
        """
        if self._host.engine is None:
            reason = self._host.error or "the transform is still loading; try again shortly"
            raise NotReadyError(reason)
        if len(self._sessions) >= self.capacity:
            raise CapacityError(f"the server is at its limit of {self.capacity} sessions")
        session = Session(
            secrets.token_hex(6),
            engine=self._host.engine,
            params=params,
            # An explicit list, even empty: aiortc falls back to a public STUN server on None.
            configuration=RTCConfiguration(iceServers=list(self._ice_servers)),
            frame_timeout_s=self._frame_timeout_s,
            on_closed=self._forget,
            ports=self._ports,
            announced_address=self._announced_address,
        )
        self._sessions[session.id] = session
        try:
            answer = await session.answer(sdp)
        except BaseException:
            await session.close("offer refused")
            raise
        logger.info("session %s opened (%d/%d)", session.id, len(self._sessions), self.capacity)
        return session, answer.sdp

    def snapshot(self) -> dict[str, Any]:
        return {session_id: session.snapshot() for session_id, session in self._sessions.items()}

    async def close_all(self, reason: str) -> None:
        await asyncio.gather(*(session.close(reason) for session in list(self._sessions.values())))

    def _forget(self, session: Session) -> None:
        self._sessions.pop(session.id, None)
