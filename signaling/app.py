"""The aiohttp application: the page, signaling (POST /offer) and the read-only API."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from settings import Settings
from signaling.metrics import metrics_registry, render
from signaling.ports import PortRangeError
from signaling.protocol import describe_validation
from signaling.registry import CapacityError, NotReadyError, SessionRegistry
from signaling.session import OfferError
from transforms.host import EngineHost
from transforms.params import StyleParams, params_schema

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
MAX_SDP_CHARS = 64 * 1024  # a browser offer is 3-10 KB; the cap keeps garbage cheap
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class OfferRequest(BaseModel):
    sdp: str = Field(min_length=1, max_length=MAX_SDP_CHARS)
    type: Literal["offer"]
    params: dict[str, Any] | None = None


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Routes:
    """Request handlers; everything they need is given here, nothing is global."""

    def __init__(self, settings: Settings, host: EngineHost, sessions: SessionRegistry) -> None:
        self._settings = settings
        self._host = host
        self._sessions = sessions
        self._metrics = metrics_registry(host, sessions)

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def offer(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return error_response(401, "missing or wrong token (Authorization: Bearer <token>)")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error_response(400, "the body must be JSON: {sdp, type: 'offer', params?}")
        try:
            offer = OfferRequest.model_validate(body)
            params = StyleParams().updated(offer.params or {})
        except ValidationError as exc:
            return error_response(400, describe_validation(exc))
        try:
            session, answer_sdp = await self._sessions.open(offer.sdp, params)
        except OfferError as exc:
            return error_response(400, str(exc))
        except (CapacityError, NotReadyError) as exc:
            return error_response(503, str(exc))
        except PortRangeError as exc:
            logger.warning("offer refused: %s", exc)
            return error_response(503, str(exc))
        return web.json_response({"sdp": answer_sdp, "type": "answer", "session": session.id})

    async def params(self, request: web.Request) -> web.Response:
        return web.json_response(params_schema())

    async def health(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {
            "status": self._host.status,
            "transform": self._host.transform,
            "device": self._host.device,
            "sessions": len(self._sessions),
            "capacity": self._sessions.capacity,
        }
        if self._host.error:
            body["error"] = self._host.error
        if self._host.warning:
            body["warning"] = self._host.warning
        return web.json_response(body)

    async def stats(self, request: web.Request) -> web.Response:
        engine = self._host.engine
        return web.json_response(
            {
                "engine": engine.snapshot() if engine is not None else None,
                "sessions": self._sessions.snapshot(),
                "capacity": self._sessions.capacity,
            }
        )

    async def metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(render, self._metrics)
        return web.Response(body=body, headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    async def ice_servers(self, request: web.Request) -> web.Response:
        servers = [server.model_dump(exclude_none=True) for server in self._settings.ice_servers]
        return web.json_response({"iceServers": servers})

    def _authorized(self, request: web.Request) -> bool:
        token = self._settings.token
        if not token:
            return True
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), token.encode())


def build_app(settings: Settings, host: EngineHost) -> web.Application:
    """The whole server; the engine loads in the background once the app starts."""
    sessions = SessionRegistry(
        host,
        max_sessions=settings.max_sessions,
        ice_servers=settings.ice_servers,
        frame_timeout_s=settings.frame_timeout_s,
        udp_ports=settings.udp_port_range,
        announced_address=settings.announced_address,
    )
    if settings.udp_ports is not None or settings.announced_address is not None:
        logger.info(
            "WebRTC media: UDP ports %s, host candidates announced as %s",
            settings.udp_ports or "any",
            settings.announced_address or "this machine's own addresses",
        )
    routes = Routes(settings, host, sessions)
    app = web.Application()
    app.router.add_get("/", routes.index)
    app.router.add_static("/static", WEB_DIR)
    app.router.add_post("/offer", routes.offer)
    app.router.add_get("/api/params", routes.params)
    app.router.add_get("/api/ice-servers", routes.ice_servers)
    app.router.add_get("/health", routes.health)
    app.router.add_get("/stats", routes.stats)
    app.router.add_get("/metrics", routes.metrics)

    async def engine_lifetime(app: web.Application) -> AsyncIterator[None]:
        loading = asyncio.create_task(host.load(), name="load-transform")
        yield
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
        await asyncio.to_thread(host.stop)

    async def close_sessions(app: web.Application) -> None:
        await sessions.close_all("server shutting down")

    app.cleanup_ctx.append(engine_lifetime)
    app.on_shutdown.append(close_sessions)
    return app
