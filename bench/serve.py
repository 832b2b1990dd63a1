"""Run `python server.py` as a user would, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
SERVER_START_TIMEOUT_S = 120.0  # a first model load can take this long on a small CPU


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_healthy(
    url: str, timeout_s: float = SERVER_START_TIMEOUT_S, session: aiohttp.ClientSession | None = None
) -> dict[str, Any]:
    """Poll /health until the transform has loaded (or failed to); returns the last answer."""
    deadline = time.monotonic() + timeout_s
    http = session or aiohttp.ClientSession()
    try:
        while True:
            try:
                async with http.get(f"{url}/health") as response:
                    health: dict[str, Any] = await response.json()
                    if health["status"] != "loading":
                        return health
            except aiohttp.ClientConnectionError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not become ready in {timeout_s:.0f} s")
            await asyncio.sleep(0.1)
    finally:
        if session is None:
            await http.close()


class ServerProcess:
    """`python server.py ARGS` on a free loopback port; stop() ends it."""

    def __init__(self, *args: str, log: IO[bytes] | int = subprocess.DEVNULL, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "server.py", "--host", "127.0.0.1", "--port", str(self.port), *args],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    async def ready(self) -> dict[str, Any]:
        return await wait_healthy(self.url)

    async def stop(self) -> None:
        self.process.terminate()
        try:
            await asyncio.to_thread(self.process.wait, 15)
        except subprocess.TimeoutExpired:
            self.process.kill()
