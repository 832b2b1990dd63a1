"""Fixtures: the real app on a real port (in this process or as `python server.py`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from bench.serve import ROOT, ServerProcess, free_port, wait_healthy
from settings import Settings
from signaling.app import build_app
from transforms.catalog import build_engine
from transforms.engine import FrameEngine
from transforms.host import EngineHost

ARTIFACTS = ROOT / "test-artifacts"


@dataclass
class RunningServer:
    url: str
    settings: Settings
    host: EngineHost
    app: web.Application

    @property
    def engine(self) -> FrameEngine:
        assert self.host.engine is not None, "the transform has not loaded"
        return self.host.engine


@pytest.fixture
async def start_server() -> AsyncIterator[Callable[..., Awaitable[RunningServer]]]:
    """Start the real app in this event loop on a free 127.0.0.1 port: start_server(**settings)."""
    runners: list[web.AppRunner] = []

    async def start(**overrides: Any) -> RunningServer:
        settings = Settings(**{"host": "127.0.0.1", "port": free_port(), "transform": "invert", **overrides})
        host = EngineHost(lambda warn: build_engine(settings, warn), transform=settings.transform, device="cpu")
        app = build_app(settings, host)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, settings.host, settings.port).start()
        url = f"http://{settings.host}:{settings.port}"
        await wait_healthy(url)
        return RunningServer(url, settings, host, app)

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def spawn_server() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Run `python server.py ARGS` as users do; returns its URL once it is ready.
    Its log goes to test-artifacts/server.log."""
    servers: list[ServerProcess] = []
    ARTIFACTS.mkdir(exist_ok=True)

    async def spawn(*args: str) -> str:
        with (ARTIFACTS / "server.log").open("ab") as log:
            server = ServerProcess(*args, log=log)
        servers.append(server)
        await server.ready()
        return server.url

    yield spawn
    await asyncio.gather(*(server.stop() for server in servers))
