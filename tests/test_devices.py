"""Every thread that touches the model binds itself to the model's device (CUDA's current
device is per thread: unbound threads would work on GPU 0 with --device cuda:1)."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable

import pytest
import torch

from bench.client import StreamClient
from models import devices
from tests.conftest import RunningServer

StartServer = Callable[..., Awaitable[RunningServer]]


def test_binding_sets_the_current_cuda_device_and_leaves_the_cpu_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    devices.bind_thread(torch.device("cuda", 1))
    devices.bind_thread(torch.device("cpu"))
    assert calls == [torch.device("cuda", 1)]


async def test_the_loader_each_stage_and_the_params_workers_bind_themselves(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    bound: list[tuple[str, torch.device]] = []
    real = devices.bind_thread

    def record(device: torch.device) -> None:
        bound.append((threading.current_thread().name, device))
        real(device)

    monkeypatch.setattr(devices, "bind_thread", record)
    server = await start_server(transform="diffusion", model="tiny", width=64, height=64)
    client = StreamClient(server.url)
    try:
        await client.connect()
        await client.wait_frames(5)
        calls_before = len(bound)
        reply = await client.request({"type": "params", "prompt": "a claymation portrait"})
        assert reply["type"] == "params"
    finally:
        await client.close()
    stages = {f"stylecam-{name}" for name in ("prepare", "encode", "denoise", "decode")}
    assert {"stylecam-load", *stages} <= {name for name, _ in bound[:calls_before]}
    workers = {name for name, _ in bound[calls_before:]} - stages - {threading.main_thread().name}
    assert workers, "the worker that prepared the new params bound itself too"
    assert {device for _, device in bound} == {torch.device("cpu")}
