"""Builds the frame engine off the event loop and says how far it got (for /health)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Literal

from transforms.engine import FrameEngine

logger = logging.getLogger(__name__)

HostStatus = Literal["loading", "ok", "error"]
Warn = Callable[[str], None]


class TransformLoadError(RuntimeError):
    """Loading failed for a reason a user can fix; the message says how. No traceback needed."""


class EngineHost:
    """Owns the process's one FrameEngine. Loading a model can take minutes, so the server
    answers /health (status "loading") while `factory` runs in a daemon thread, which also
    lets Ctrl-C end the server during a long download."""

    def __init__(self, factory: Callable[[Warn], FrameEngine], *, transform: str, device: str) -> None:
        """`factory(warn)` builds the engine; what it passes to `warn` goes to the log and /health."""
        self._factory = factory
        self.transform = transform
        self.device = device
        self.status: HostStatus = "loading"
        self.error: str | None = None
        self.warning: str | None = None
        self.engine: FrameEngine | None = None

    async def load(self) -> None:
        """Build and start the engine; on failure keep the reason for /health and offers."""
        try:
            engine = await self._build()
        except TransformLoadError as exc:
            self._failed(str(exc))
            return
        except Exception as exc:
            logger.exception("unexpected error while loading transform %s", self.transform)
            self._failed(f"{type(exc).__name__}: {exc}")
            return
        engine.start()
        self.engine = engine
        self.device = engine.transform.device
        self.status = "ok"
        logger.info("transform %s ready on %s", self.transform, self.device)

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop()

    def _warn(self, message: str) -> None:
        self.warning = message
        logger.warning("%s", message)

    def _failed(self, reason: str) -> None:
        self.status, self.error = "error", reason
        logger.error("could not load transform %s: %s", self.transform, reason)

    async def _build(self) -> FrameEngine:
        result: concurrent.futures.Future[FrameEngine] = concurrent.futures.Future()

        def build() -> None:
            try:
                result.set_result(self._factory(self._warn))
            except BaseException as exc:
                result.set_exception(exc)

        threading.Thread(target=build, name="stylecam-load", daemon=True).start()
        return await asyncio.wrap_future(result)
