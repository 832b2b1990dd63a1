"""Real aiortc peers against the real app on a real port: frames, protocol, limits, teardown."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

import aiohttp
import numpy as np
import pytest

from bench.client import OfferRefused, StreamClient
from tests.conftest import RunningServer
from transforms.params import StyleParams

StartServer = Callable[..., Awaitable[RunningServer]]


async def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.05)


async def wait_no_sessions(server: RunningServer, timeout_s: float = 10.0) -> None:
    """Until the server reports no session and the engine holds no slot."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while True:
            health = await (await http.get(f"{server.url}/health")).json()
            if health["sessions"] == 0 and server.engine.session_count == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"sessions still open: {health}")
            await asyncio.sleep(0.05)


async def post_offer(url: str, body: object, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/offer", json=body, headers=headers or {}) as response,
    ):
        return response.status, await response.json()


async def test_frames_come_back_inverted(start_server: StartServer) -> None:
    server = await start_server(transform="invert", width=640, height=480)
    client = StreamClient(server.url, keep_images=True)
    try:
        await client.connect()
        await client.wait_frames(30)
        frame = client.received[-1]
        assert (frame.width, frame.height) == (640, 480)
        assert frame.index is not None, "the frame index must survive the round trip"
        image = client.last_image
        assert image is not None
        # The synthetic camera's background: a left-to-right gray ramp 40..200 with blue 120.
        left, right = image[400, 20].astype(int), image[400, 620].astype(int)
        assert np.all(np.abs(left - [215, 215, 135]) < 30), left
        assert np.all(np.abs(right - [55, 55, 135]) < 30), right
    finally:
        await client.close()


async def test_ping_params_and_stats(start_server: StartServer) -> None:
    server = await start_server(transform="passthrough")
    client = StreamClient(server.url, params={"prompt": "claymation"})
    try:
        await client.connect()
        assert await client.request({"type": "ping", "t": {"n": 7}}) == {"type": "pong", "t": {"n": 7}}

        reply = await client.request({"type": "params", "strength": 0.8, "steps": 2})
        assert reply["type"] == "params" and reply["ok"] is True
        assert reply["params"]["strength"] == 0.8 and reply["params"]["steps"] == 2
        assert reply["params"]["prompt"] == "claymation", "params given with the offer stay"
        assert set(reply["params"]) == set(StyleParams.model_fields)

        refused = await client.request({"type": "params", "strength": 3, "steps": 1})
        assert refused["type"] == "error" and refused["request"] == "params"
        assert "strength" in refused["error"]
        unchanged = await client.request({"type": "params"})
        assert unchanged["params"]["steps"] == 2, "a refused update changes nothing"

        await wait_until(lambda: len(client.stats) >= 2, timeout_s=5)
        assert client.stats[-1]["fps"] > 0
        assert client.stats[-1]["latency_ms"] is not None
    finally:
        await client.close()


async def test_garbage_on_the_channel_gets_errors_and_the_stream_goes_on(start_server: StartServer) -> None:
    server = await start_server(transform="invert")
    client = StreamClient(server.url)
    try:
        await client.connect()
        await client.wait_frames(10)
        garbage = [
            "not json",
            "[1, 2]",
            '{"no": "type"}',
            '{"type": "reboot"}',
            '{"type": "params", "colour": "red"}',
            '{"type": "params", "steps": "many"}',
            "x" * 20_000,
        ]
        for message in garbage:
            reply = await client.request(message)
            assert reply["type"] == "error" and reply["error"], message
        before = len(client.received)
        await client.wait_frames(20, timeout_s=10)
        assert len(client.received) >= before + 20
        assert (await client.request({"type": "ping", "t": 1}))["type"] == "pong"
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("not json at all", "JSON"),
        ({"type": "offer"}, "sdp"),
        ({"sdp": "v=0", "type": "answer"}, "type"),
        ({"sdp": "this is not SDP", "type": "offer"}, "SDP"),
        ({"sdp": "v=0\r\n", "type": "offer", "params": {"strength": 9}}, "strength"),
    ],
)
async def test_malformed_offers_get_400(start_server: StartServer, body: object, expected: str) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as http:
        if isinstance(body, str):
            response = await http.post(f"{server.url}/offer", data=body)
        else:
            response = await http.post(f"{server.url}/offer", json=body)
        assert response.status == 400
        assert expected in (await response.json())["error"]
    assert server.engine.session_count == 0, "a refused offer leaves no engine slot"


async def test_offer_without_camera_gets_400(start_server: StartServer) -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection

    server = await start_server()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel("control")
    await pc.setLocalDescription(await pc.createOffer())
    status, body = await post_offer(server.url, {"sdp": pc.localDescription.sdp, "type": "offer"})
    await pc.close()
    assert status == 400 and "video" in body["error"]


async def test_session_limit_gives_503(start_server: StartServer) -> None:
    server = await start_server(max_sessions=1)
    first, second = StreamClient(server.url), StreamClient(server.url)
    try:
        await first.connect()
        with pytest.raises(OfferRefused) as refused:
            await second.connect()
        assert refused.value.status == 503 and "limit" in refused.value.body["error"]
        await first.wait_frames(5)
    finally:
        await first.close()
        await second.close()


async def test_token_is_required_when_configured(start_server: StartServer) -> None:
    server = await start_server(token="s3cret")
    with pytest.raises(OfferRefused) as refused:
        await StreamClient(server.url, token="wrong").connect()
    assert refused.value.status == 401
    client = StreamClient(server.url, token="s3cret")
    try:
        await client.connect()
        await client.wait_frames(5)
    finally:
        await client.close()


async def test_read_only_api(start_server: StartServer) -> None:
    server = await start_server(max_sessions=3, ice_servers=[{"urls": "stun:stun.example.org:3478"}])
    async with aiohttp.ClientSession() as http:
        health = await (await http.get(f"{server.url}/health")).json()
        assert health == {
            "status": "ok",
            "transform": "invert",
            "device": "cpu",
            "sessions": 0,
            "capacity": 3,
        }
        schema = await (await http.get(f"{server.url}/api/params")).json()
        strength = schema["properties"]["strength"]
        assert (strength["minimum"], strength["maximum"], strength["default"]) == (0.05, 1.0, 0.5)
        assert "int(steps * strength)" in schema["properties"]["steps"]["description"]
        ice = await (await http.get(f"{server.url}/api/ice-servers")).json()
        assert ice == {"iceServers": [{"urls": "stun:stun.example.org:3478"}]}
        page = await http.get(f"{server.url}/")
        assert page.status == 200 and "<video" in await page.text()
        assert (await http.get(f"{server.url}/static/app.js")).status == 200
        assert (await http.get(f"{server.url}/static/../settings.py")).status in (403, 404)
        client = StreamClient(server.url)
        try:
            await client.connect()
            await client.wait_frames(10)
            stats = await (await http.get(f"{server.url}/stats")).json()
            assert list(stats["sessions"]) == [client.session_id]
            assert stats["engine"]["frames_out"] >= 10
            assert set(stats["engine"]["stages"]) == {"prepare", "filter", "finish"}
            metrics = await (await http.get(f"{server.url}/metrics")).text()
            assert "stylecam_sessions 1.0" in metrics
            assert 'stylecam_stage_seconds{stage="filter"}' in metrics
        finally:
            await client.close()


async def test_quiet_camera_closes_the_session(start_server: StartServer) -> None:
    server = await start_server(frame_timeout_s=1.5)
    client = StreamClient(server.url)
    try:
        await client.connect()
        await client.wait_frames(5)
        client.camera.stop()
        await wait_no_sessions(server, timeout_s=8)
        assert client.pc.connectionState in ("closed", "failed", "connected")
    finally:
        await client.close()


async def test_connect_disconnect_cycles_leave_nothing_behind(start_server: StartServer) -> None:
    """Twenty sessions opened and closed: no session, engine slot, task or thread may stay."""
    server = await start_server()
    tasks_before = set(asyncio.all_tasks())
    threads_after_first: int | None = None
    for cycle in range(20):
        client = StreamClient(server.url)
        await client.connect()
        await client.wait_frames(2)
        await client.close()
        await wait_no_sessions(server)
        if cycle == 0:
            threads_after_first = threading.active_count()
    await asyncio.sleep(0.5)
    leftover = {task for task in asyncio.all_tasks() - tasks_before if task is not asyncio.current_task()}
    assert not leftover, leftover
    assert threads_after_first is not None
    assert threading.active_count() <= threads_after_first + 2
