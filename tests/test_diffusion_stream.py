"""The diffusion transform end to end over WebRTC, with the tiny model on the CPU."""

from __future__ import annotations

import asyncio
import os
import statistics
from collections.abc import Awaitable, Callable

import aiohttp
import numpy as np
import pytest

from bench.client import OfferRefused, StreamClient, switch_latencies
from bench.serve import ServerProcess
from models.stream import LcmStream
from tests.conftest import ARTIFACTS, RunningServer

StartServer = Callable[..., Awaitable[RunningServer]]
TINY = {"transform": "diffusion", "model": "tiny", "width": 128, "height": 128}


async def picture_after(client: StreamClient, frames: int = 6) -> np.ndarray:
    await client.wait_frames(frames)
    assert client.last_image is not None
    return client.last_image.astype(np.int16)


async def test_live_params_are_acknowledged_and_change_the_picture(start_server: StartServer) -> None:
    server = await start_server(**TINY)
    client = StreamClient(server.url, scene="still", keep_images=True)
    try:
        await client.connect()
        await client.wait_frames(10)
        first = await picture_after(client)
        again = await picture_after(client)
        noise = float(np.abs(first - again).mean())

        reply = await client.request({"type": "params", "prompt": "a claymation portrait", "transition_ms": 0})
        assert reply["ok"] and reply["params"]["prompt"] == "a claymation portrait"
        restyled = await picture_after(client)
        assert float(np.abs(restyled - first).mean()) > max(3 * noise, 2.0)

        reply = await client.request({"type": "params", "steps": 2, "strength": 0.9})
        assert reply["params"]["steps"] == 2 and reply["params"]["strength"] == 0.9
        rescheduled = await picture_after(client)
        assert float(np.abs(rescheduled - restyled).mean()) > max(3 * noise, 2.0)
    finally:
        await client.close()


async def test_a_failing_stage_is_reported_and_the_stream_goes_on(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    denoise = LcmStream.denoise
    calls = []

    def flaky_denoise(self: LcmStream, *args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) % 4 == 0:
            raise RuntimeError("CUDA out of memory (simulated)")
        return denoise(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(LcmStream, "denoise", flaky_denoise)
    server = await start_server(**TINY)
    client = StreamClient(server.url)
    try:
        await client.connect()
        await client.wait_frames(20, timeout_s=30)
        assert client.frame_errors, "the client hears about failed frames"
        assert "out of memory" in client.frame_errors[0]["error"]
        await asyncio.sleep(1.5)
        assert client.stats[-1]["errors"] >= 2
        assert (await client.request({"type": "ping", "t": 0}))["type"] == "pong"
    finally:
        await client.close()


async def test_latency_stays_bounded_at_the_models_own_speed(spawn_server: Callable[..., Awaitable[str]]) -> None:
    """Same shape as the core's test, with the tiny model's own (CPU) speed: the camera
    switches scene every second and the client times when the output switches."""
    url = await spawn_server("--model", "tiny", "--width", "256", "--height", "256")
    client = StreamClient(url, scene="toggle")
    try:
        await client.connect()
        await client.wait_frames(1, timeout_s=30)
        await asyncio.sleep(20)
    finally:
        await client.close()
    latencies = [latency for _, latency in switch_latencies(client.received, client.camera.switched_at)]
    half = len(latencies) // 2
    assert len(latencies) >= 15, f"only {len(latencies)} switches seen"
    assert sorted(latencies)[int(0.95 * len(latencies))] < 1.0, latencies
    assert statistics.median(latencies[half:]) < statistics.median(latencies[:half]) + 0.1, latencies
    assert len(client.received) / 20 > 3, "frames keep coming at the model's speed"


async def test_unreachable_weights_give_a_clear_error_not_a_traceback() -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        with (ARTIFACTS / "server-offline.log").open("wb") as log:
            server = ServerProcess("--model", "someone/not-in-the-cache", log=log)
    finally:
        del os.environ["HF_HUB_OFFLINE"]
    try:
        health = await server.ready()
        assert health["status"] == "error"
        assert "someone/not-in-the-cache" in health["error"] and "--model tiny" in health["error"]
        assert "seconds per frame" in health["warning"], "a full-size model on the CPU is called slow"
        with pytest.raises(OfferRefused) as refused:
            await StreamClient(server.url).connect()
        assert refused.value.status == 503 and "cannot load" in refused.value.body["error"]
        async with aiohttp.ClientSession() as http, http.get(f"{server.url}/") as page:
            assert page.status == 200, "the server stays up to say what is wrong"
    finally:
        await server.stop()
    assert "Traceback" not in (ARTIFACTS / "server-offline.log").read_text()
