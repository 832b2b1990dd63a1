r"""The GPU proof of issue 9, in one run of a few minutes: SD 1.5's architecture with random
weights (bench/sd15.py), 512x512, 4 LCM steps at strength 0.5 (2 UNet evaluations per
frame), the server's default settings otherwise.

1. model: the random-weight model written as a diffusers folder (on the GPU: seconds).
2. stages: the real engine in this process (transforms.catalog.build_engine, as
   bench/engine.py runs it), one session offered camera frames faster than it takes them;
   each diffusion stage's process() is timed with CUDA events recorded on the stage thread's
   current stream at entry and after return, and the engine's own stage time (a moving
   average of process()'s host wall time, snapshot()) is compared with the events' mean over
   the same calls. First it checks that the model's output is finite and depends on the
   camera picture and the prompt.
3. stream: `python server.py --model DIR --vae DIR/vae` (nothing else but host and port), 1
   and then 4 concurrent aiortc clients (bench/client.py), each a 30 fps 640x480 camera:
   fps out per client and glass-to-glass latency p50/p95. Latency is timed per scene switch
   (the camera switches between two pictures every second; the client times when the output
   switches, bench.client.scene_switch_latencies): random weights keep no frame index
   readable in the pixels. The pictures' brightness moves every frame, so the server's
   similarity filter skips none and every frame out is a model pass.
4. params: 300 random parameter changes (steps 1-8, strength 0.05-1, guidance 0-20, prompt
   from a list) over the control channels of the 4 streaming sessions: the server's GPU
   memory (GET /stats: torch.cuda.memory_reserved; nvidia-smi's per-process figure too)
   after the first 20 and after all, and the longest gap between output frames per client.

Targets: every one of 4 clients >= 25 fps; 1 client latency p95 <= 150 ms; memory after all
changes within 10% of after the first 20; no output gap over 1 s; encode, denoise and decode
within 20% of their CUDA-event times. Prints a table and writes OUT/gpu_check.json (after
every phase, so a run cut short keeps what it measured) and OUT/server.log; exits 1 when a
target is missed or a figure is missing, always after printing everything.

On the GPU machine (device tool), from the repository root, with the wheels that
bench/gpu_wheels.sh downloads in .whl/ (carry: [".whl"], timeout_s about 540):

    set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && nvidia-smi; \
    PYTHONUNBUFFERED=1 python3 -m bench.gpu_check --out $OUT 2>&1 | tee $OUT/log

(DEVICE_COMMAND below is the same on one line.)

A dry run of the plumbing on a CPU (the targets are missed there; --arch tiny is faster):

    python -m bench.gpu_check --quick --out /tmp/gpu-check
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import importlib.metadata
import itertools
import json
import logging
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import torch
from av import VideoFrame

from bench.client import (
    DRIFT_LEVELS,
    DRIFT_STEP,
    StreamClient,
    drift_level,
    scene_switch_latencies,
    switch_pictures,
)
from bench.engine import without_similarity
from bench.results import RESULTS, write_result
from bench.serve import ServerProcess
from bench.stream import percentile

logger = logging.getLogger("bench.gpu_check")

DEFAULT_SIZE = 512  # the server's default processing size: no --width/--height then
PROMPTS = [
    "watercolor portrait, soft light, detailed",
    "oil painting of a face, thick brush strokes",
    "anime character, cel shading, vivid colors",
    "charcoal sketch, high contrast",
    "cyberpunk portrait, neon lights, rain",
    "marble statue, museum lighting",
    "pixel art portrait, 16-bit",
    "stained glass window of a person",
    "pencil drawing on paper, cross hatching",
    "portrait made of autumn leaves",
]
JUDGED_STAGES = ("encode", "denoise", "decode")  # the others (prepare) do host work: reported only
TARGET_FPS = 25.0
TARGET_P95_MS = 150.0
TARGET_MEMORY_GROWTH = 0.10
TARGET_GAP_S = 1.0
TARGET_STAGE_DIFFERENCE = 0.20
MAX_SKIPPED_SHARE = 0.05  # validity: frames the similarity filter answered without the model
CLIENTS = 4
TEMPORARY_PREFIX = "stylecam-gpu-check-"
DEVICE_COMMAND = (
    "set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
    "--target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && nvidia-smi; "
    "PYTHONUNBUFFERED=1 python3 -m bench.gpu_check --out $OUT 2>&1 | tee $OUT/log"
)
LATENCY_METHOD = (
    "scene switch: the camera switches between two pictures every toggle_s; latency is the time from "
    "the camera frame of a switch to the first output frame nearer the new scene's typical output "
    "(bench.client.scene_switch_latencies); the frame index in the pixels needs a structure-keeping "
    "transform, which random weights are not"
)


@dataclass(frozen=True)
class Preset:
    size: int
    seconds: float
    warmup: float
    changes: int
    first_changes: int
    change_seconds: float
    settle: float
    toggle: float
    fps: float


FULL = Preset(
    size=512,
    seconds=15.0,
    warmup=5.0,
    changes=300,
    first_changes=20,
    change_seconds=30.0,
    settle=2.0,
    toggle=1.0,
    fps=30.0,
)
# A CPU dry run: small, slow cameras (on 2 cores the clients' VP8 coding would starve the server).
QUICK = Preset(
    size=64,
    seconds=10.0,
    warmup=5.0,
    changes=24,
    first_changes=8,
    change_seconds=12.0,
    settle=4.0,
    toggle=4.0,
    fps=10.0,
)


# --- the model ---------------------------------------------------------------------------


def write_model(args: argparse.Namespace) -> dict[str, Any]:
    folder: Path = args.model_dir
    if folder.exists():
        shutil.rmtree(folder)
    started = time.monotonic()
    if args.arch == "tiny":
        from models.tiny import write_tiny_model

        write_tiny_model(folder)
    else:
        from bench.sd15 import write_sd15_model

        device = args.torch_device
        write_sd15_model(folder, device, torch.float16)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    return {
        "arch": args.arch,
        "folder": str(folder),
        "seconds": round(time.monotonic() - started, 1),
        "size_mb": round(size / 2**20, 1),
        "weights": "random: UNet variance-preserving with its output at unit noise scale, TAESD structure-keeping "
        "(bench/sd15.py)"
        if args.arch == "sd15"
        else "models.tiny",
    }


# --- the engine in this process: stage times against CUDA events ------------------------


@dataclass
class StageCall:
    host_ms: float
    event_ms: float | None
    frames: int


@dataclass
class StageTimer:
    """Times every DiffusionStage.process call: host wall time, and CUDA events recorded on the
    calling thread's current stream (each stage thread has its own) at entry and after return."""

    cuda: bool
    calls: dict[str, list[StageCall]] = field(default_factory=lambda: defaultdict(list))

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        from transforms.diffusion import DiffusionStage

        original = DiffusionStage.process

        def process(stage: Any, jobs: Sequence[Any]) -> None:
            self.time(stage, jobs, original)

        setattr(DiffusionStage, "process", process)  # noqa: B010 - a class attribute, on purpose
        try:
            yield
        finally:
            setattr(DiffusionStage, "process", original)  # noqa: B010

    def time(self, stage: Any, jobs: Sequence[Any], original: Callable[[Any, Sequence[Any]], None]) -> None:
        start = end = None
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(torch.cuda.current_stream())
        began = time.perf_counter()
        original(stage, jobs)
        host_ms = (time.perf_counter() - began) * 1000
        event_ms = None
        if start is not None and end is not None:
            end.record(torch.cuda.current_stream())
            end.synchronize()
            event_ms = float(start.elapsed_time(end))
        self.calls[stage.name].append(StageCall(host_ms, event_ms, len(jobs)))


def camera_frames() -> list[VideoFrame]:
    """The "switch" scene's frames (both pictures, every brightness) as a camera's yuv420p frames."""
    first, second = switch_pictures()
    levels = sorted({drift_level(index) for index in range(4 * DRIFT_LEVELS // DRIFT_STEP)})
    frames = []
    for picture, level in itertools.product((first, second), levels):
        table = np.clip(np.arange(256) + level, 0, 255).astype(np.uint8)
        frames.append(VideoFrame.from_ndarray(cv2.LUT(picture, table), format="rgb24").reformat(format="yuv420p"))
    return frames


def thumbnail(picture: np.ndarray) -> np.ndarray:
    """32 x 32 grey, as bench.client keeps of every frame it receives."""
    grey = cv2.cvtColor(picture, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)


def model_output_check(stream: Any, size: int) -> dict[str, Any]:
    """Is the output finite (float16), and does it depend on the camera picture and the prompt?
    Mean thumbnail differences of the output in grey levels: between the two scene pictures,
    between a picture and itself DRIFT_STEP levels brighter (one frame of drift), and between two
    prompts; the output's spread."""
    from models import devices
    from transforms.frames import fit
    from transforms.params import StyleParams

    device = stream.model.device
    devices.bind_thread(device)
    params = StyleParams()
    first, second = switch_pictures()
    brighter = np.clip(first.astype(np.int16) + DRIFT_STEP, 0, 255).astype(np.uint8)
    finite = True
    outputs: dict[str, np.ndarray] = {}
    cases = {
        "first": (first, params.prompt),
        "second": (second, params.prompt),
        "brighter": (brighter, params.prompt),
        "prompt": (first, PROMPTS[3]),
    }
    with torch.inference_mode():
        schedule = stream.schedule(params.steps, params.strength)
        for name, (picture, prompt) in cases.items():
            condition = stream.condition(prompt, "", params.guidance_scale, params.seed, size, size)
            latents = stream.encode(stream.to_input(fit(picture, size, size)[None]))
            denoised = stream.denoise(latents, schedule, [condition])
            pixels = stream.decode(denoised)
            finite = finite and all(bool(torch.isfinite(t).all()) for t in (latents, denoised, pixels))
            outputs[name] = stream.to_uint8(pixels)[0]
    devices.finish_work(device)
    thumbs = {name: thumbnail(output) for name, output in outputs.items()}

    def difference(a: str, b: str) -> float:
        return round(float(np.abs(thumbs[a] - thumbs[b]).mean()), 2)

    output_std = round(float(outputs["first"].std()), 1)
    scenes = difference("first", "second")
    drift = difference("first", "brighter")
    prompts = difference("first", "prompt")
    return {
        "dtype": str(stream.model.dtype).removeprefix("torch."),
        "finite": finite,
        "output_std": output_std,
        "scenes_difference": scenes,
        "one_frame_drift_difference": drift,
        "prompt_difference": prompts,
        "ok": bool(finite and output_std > 1 and scenes > 4 * max(drift, 0.25) and prompts > 0.5),
    }


def engine_phase(args: argparse.Namespace, server_args: list[str]) -> dict[str, Any]:
    from settings import load_settings
    from transforms.catalog import build_engine
    from transforms.meters import EMA_WEIGHT
    from transforms.params import StyleParams

    settings = without_similarity(load_settings(server_args))
    started = time.monotonic()
    engine = build_engine(settings)
    load_s = time.monotonic() - started
    transform: Any = engine.transform
    try:
        output_check = model_output_check(transform.stream, args.size)
    except Exception as exc:  # the stage times are still worth having
        logger.exception("the model output check failed")
        output_check = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    logger.info("model output: %s", output_check)
    cuda = args.torch_device.type == "cuda"
    timer = StageTimer(cuda)
    frames = camera_frames()
    delivered: list[float] = []
    errors: list[str] = []
    with timer.installed():
        engine.start()
        try:
            session = engine.open_session(
                "gpu-check", StyleParams(), lambda job: delivered.append(time.monotonic()), errors.append
            )
            began = time.monotonic()
            for index in itertools.count():
                if time.monotonic() - began >= args.seconds:
                    break
                engine.submit(session, frames[index % len(frames)])
                time.sleep(0.001)
            engine.close_session(session)
        finally:
            engine.stop()
    snapshot = engine.snapshot()
    rows = []
    for name in snapshot["stages"]:  # in the engine's order (a transform's stages may change)
        calls = timer.calls.get(name, [])
        events = [call.event_ms for call in calls if call.event_ms is not None]
        event_mean = statistics.fmean(events) if events else None
        event_ema = None
        for value in events:
            event_ema = value if event_ema is None else event_ema + EMA_WEIGHT * (value - event_ema)
        engine_stage = snapshot["stages"].get(name, {})
        engine_ms = engine_stage.get("ms")
        difference = (engine_ms - event_mean) / event_mean if engine_ms is not None and event_mean else None
        rows.append(
            {
                "stage": name,
                "engine_ms": engine_ms,
                "event_mean_ms": _round(event_mean, 3),
                "event_ema_ms": _round(event_ema, 3),
                "host_mean_ms": _round(statistics.fmean(c.host_ms for c in calls), 3) if calls else None,
                "calls": len(calls),
                "engine_batches": engine_stage.get("batches"),
                "mean_batch": _round(statistics.fmean(c.frames for c in calls), 2) if calls else None,
                "difference": _round(difference, 3),
                "judged": name in JUDGED_STAGES,
            }
        )
    warm = [at for at in delivered if at > delivered[0] + 1.0] if delivered else []
    fps = (len(warm) - 1) / (warm[-1] - warm[0]) if len(warm) > 2 else 0.0
    result = {
        "settings": "server defaults but the similarity filter (off: every offered frame is a model pass)",
        "load_and_warm_up_s": round(load_s, 1),
        "seconds": args.seconds,
        "frames_out": len(delivered),
        "fps": round(fps, 2),
        "errors": errors[:5],
        "model_output": output_check,
        "details": transform.details(),
        "device_memory_mb": snapshot.get("device_memory_mb"),
        "events": "CUDA events on the stage thread's current stream" if cuda else "none (no CUDA)",
        "stages": rows,
    }
    del engine, transform
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


# --- the server: stream and params --------------------------------------------------------


@dataclass
class Window:
    clients: int
    start: float
    end: float
    stats_before: dict[str, Any]
    stats_after: dict[str, Any]


async def get_stats(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/stats") as response:
        stats: dict[str, Any] = await response.json()
        return stats


def nvidia_smi_memory(pid: int) -> dict[str, Any] | None:
    """nvidia-smi's memory per compute process (MiB); None where nvidia-smi is not there."""
    try:
        answer = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    processes: dict[str, float] = {}
    for line in answer.stdout.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit():
            with contextlib.suppress(ValueError):
                processes[parts[0]] = float(parts[1])
    return {"server_mib": processes.get(str(pid)), "processes_mib": processes, "returncode": answer.returncode}


async def memory_now(server: ServerProcess) -> dict[str, Any]:
    stats = await get_stats(server.url)
    engine = stats.get("engine") or {}
    smi = await asyncio.to_thread(nvidia_smi_memory, server.process.pid)
    return {"at": time.monotonic(), "stats_mb": engine.get("device_memory_mb"), "nvidia_smi": smi}


def random_change(rng: random.Random) -> dict[str, Any]:
    return {
        "steps": rng.randint(1, 8),
        "strength": round(rng.uniform(0.05, 1.0), 3),
        "guidance_scale": round(rng.uniform(0.0, 20.0), 1),
        "prompt": rng.choice(PROMPTS),
    }


def max_gap(client: StreamClient, start: float, end: float) -> float | None:
    """The longest time without an output frame within [start, end] (its edges count)."""
    times = [start, *(frame.at for frame in client.received if start < frame.at < end), end]
    return round(max(b - a for a, b in itertools.pairwise(times)), 3)


async def params_phase(clients: list[StreamClient], server: ServerProcess, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(9)
    interval = args.change_seconds / args.changes
    memory: dict[str, Any] = {}
    replies = {"ok": 0, "refused": 0, "timeout": 0}
    refusals: list[str] = []
    start = schedule = time.monotonic()
    for number in range(1, args.changes + 1):
        await asyncio.sleep(max(0.0, schedule + (number - 1) * interval - time.monotonic()))
        client = clients[(number - 1) % len(clients)]
        try:
            reply = await client.request({"type": "params", **random_change(rng)}, timeout_s=15)
        except TimeoutError:
            replies["timeout"] += 1
        else:
            if reply.get("type") == "params" and reply.get("ok"):
                replies["ok"] += 1
            else:
                replies["refused"] += 1
                refusals.append(str(reply.get("error")))
        if number == args.first_changes:
            await asyncio.sleep(args.settle)  # the graphs for the newest params are captured meanwhile
            memory["after_first"] = await memory_now(server)
            schedule += args.settle
    await asyncio.sleep(args.settle)
    memory["after_all"] = await memory_now(server)
    end = time.monotonic()
    first, last = memory["after_first"]["stats_mb"], memory["after_all"]["stats_mb"]
    growth = (last - first) / first if first and last is not None else None
    gaps = [max_gap(client, start, end) for client in clients]
    return {
        "changes": args.changes,
        "first_changes": args.first_changes,
        "seconds": round(end - start, 1),
        "replies": replies,
        "refusals": refusals[:5],
        "memory_after_first_mb": first,
        "memory_after_all_mb": last,
        "memory_growth": _round(growth, 4),
        "nvidia_smi_after_first": memory["after_first"]["nvidia_smi"],
        "nvidia_smi_after_all": memory["after_all"]["nvidia_smi"],
        "max_gap_s": gaps,
        "frame_errors": [len(client.frame_errors) for client in clients],
        "fps_out": [
            round(sum(1 for f in client.received if start <= f.at < end) / (end - start), 2) for client in clients
        ],
    }


def window_figures(clients: list[StreamClient], window: Window, cutoff: float, settle_s: float) -> dict[str, Any]:
    """Per client: fps out, latency per scene switch, and the server's counts within the window."""
    rows = []
    for client in clients[: window.clients]:
        frames = [frame for frame in client.received if window.start <= frame.at < window.end]
        before = [frame for frame in client.received if frame.at < cutoff]
        switches = [at for at in client.camera.switched_at if at < cutoff]
        timed, separation = scene_switch_latencies(before, switches, settle_s)
        in_window = [(at, latency) for at, latency in timed if window.start <= at < window.end]
        latencies = [latency * 1000 for _, latency in in_window if latency is not None]
        p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
        session_before = window.stats_before.get("sessions", {}).get(client.session_id, {})
        session_after = window.stats_after.get("sessions", {}).get(client.session_id, {})

        def counted(name: str, before: dict[str, Any] = session_before, after: dict[str, Any] = session_after) -> Any:
            return after.get(name, 0) - before.get(name, 0) if name in after else None

        rows.append(
            {
                "fps_out": round(len(frames) / (window.end - window.start), 2),
                "latency_p50_ms": _round(p50, 1),
                "latency_p95_ms": _round(p95, 1),
                "switches": len(in_window),
                "switches_seen": len(latencies),
                "scene_separation": _round(separation, 2),
                "server_frames_in": counted("frames_in"),
                "server_frames_out": counted("frames_out"),
                "server_skipped": counted("skipped"),
                "server_dropped": counted("dropped"),
                "server_latency_p50_ms": session_after.get("latency_ms"),
                "max_gap_s": max_gap(client, window.start, window.end),
            }
        )
    engine = window.stats_after.get("engine") or {}
    return {
        "clients": window.clients,
        "seconds": round(window.end - window.start, 1),
        "per_client": rows,
        "engine_fps": engine.get("fps"),
        "engine_stages_ms": {name: stage.get("ms") for name, stage in (engine.get("stages") or {}).items()},
        "device_memory_mb": engine.get("device_memory_mb"),
    }


async def measure_window(server: ServerProcess, clients: int, seconds: float) -> Window:
    before = await get_stats(server.url)
    start = time.monotonic()
    await asyncio.sleep(seconds)
    end = time.monotonic()
    return Window(clients, start, end, before, await get_stats(server.url))


async def server_phases(
    args: argparse.Namespace, server_args: list[str], out: Path, result: dict[str, Any], save: Callable[[], None]
) -> None:
    with (out / "server.log").open("wb") as log:
        server = ServerProcess(*server_args, log=log)
        clients: list[StreamClient] = []
        started = time.monotonic()
        try:
            health = await server.ready()
            ready_s = time.monotonic() - started
            if health.get("status") != "ok":
                raise RuntimeError(f"the server did not start: {health}")
            result["server"] = {"ready_s": round(ready_s, 1), "health": health, "pid": server.process.pid}

            def client() -> StreamClient:
                return StreamClient(server.url, fps=args.fps, scene="switch", toggle_s=args.toggle)

            windows = []
            for count in (1, CLIENTS):
                joining = [client() for _ in range(count - len(clients))]
                await asyncio.gather(*(joining_client.connect() for joining_client in joining))
                clients += joining
                await asyncio.sleep(args.warmup)
                windows.append(await measure_window(server, count, args.seconds))
                logger.info("stream: %d client(s) measured", count)
            cutoff = time.monotonic()
            result["stream"] = {
                "latency_method": LATENCY_METHOD,
                "toggle_s": args.toggle,
                "runs": [window_figures(clients, window, cutoff, args.toggle / 2) for window in windows],
            }
            save()
            result["params"] = await params_phase(clients, server, args)
            logger.info("params: done")
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
            await server.stop()


# --- report ----------------------------------------------------------------------------


def environment(args: argparse.Namespace) -> dict[str, Any]:
    device = args.torch_device
    versions: dict[str, str | None] = {}
    for name in ("torch", "diffusers", "transformers", "huggingface-hub", "aiortc", "av", "aiohttp", "numpy"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "versions": versions,
        "cuda": torch.version.cuda,
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info["gpu"] = properties.name
        info["gpu_memory_gib"] = round(properties.total_memory / 2**30, 1)
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            answer = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=15,
                check=False,
            )
            info["driver"] = answer.stdout.strip() or None
    return info


def judge(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target with its figure; a missing figure misses the target."""
    targets = []

    def add(name: str, figure: Any, ok: bool) -> None:
        targets.append({"target": name, "figure": figure, "ok": bool(ok)})

    runs = {run["clients"]: run for run in result.get("stream", {}).get("runs", [])}
    four = runs.get(CLIENTS, {}).get("per_client", [])
    fps = [row["fps_out"] for row in four]
    add(
        f"{CLIENTS} clients: every one >= {TARGET_FPS:g} fps out",
        fps or None,
        len(fps) == CLIENTS and min(fps) >= TARGET_FPS,
    )
    one = runs.get(1, {}).get("per_client", [{}])[0]
    p95, seen, switches = one.get("latency_p95_ms"), one.get("switches_seen", 0), one.get("switches", 0)
    add(
        f"1 client: glass-to-glass latency p95 <= {TARGET_P95_MS:g} ms, every switch seen",
        {"p95_ms": p95, "switches_seen": f"{seen}/{switches}"},
        p95 is not None and p95 <= TARGET_P95_MS and 0 < seen == switches,
    )
    params = result.get("params", {})
    growth = params.get("memory_growth")
    add(
        f"{params.get('changes', 'all')} changes: GPU memory within {TARGET_MEMORY_GROWTH:.0%} of after the first "
        f"{params.get('first_changes', '')}",
        growth,
        growth is not None and abs(growth) <= TARGET_MEMORY_GROWTH,
    )
    gaps = params.get("max_gap_s")
    add(f"changes: no output gap over {TARGET_GAP_S:g} s", gaps, bool(gaps) and max(gaps) <= TARGET_GAP_S)
    stages = {row["stage"]: row for row in result.get("stages", {}).get("stages", [])}
    for name in JUDGED_STAGES:
        difference = stages.get(name, {}).get("difference")
        add(
            f"{name}: engine stage time within {TARGET_STAGE_DIFFERENCE:.0%} of CUDA events",
            difference,
            difference is not None and abs(difference) <= TARGET_STAGE_DIFFERENCE,
        )
    output = result.get("stages", {}).get("model_output", {})
    add(
        "validity: the model's output is finite and depends on the camera and the prompt",
        output or None,
        output.get("ok"),
    )
    rows = [row for run in runs.values() for row in run["per_client"]]
    out_frames = sum(row["server_frames_out"] or 0 for row in rows)
    skipped = sum(row["server_skipped"] or 0 for row in rows)
    share = skipped / out_frames if out_frames else None
    add(
        f"validity: the similarity filter answered <= {MAX_SKIPPED_SHARE:.0%} of the frames out (fps = model passes)",
        _round(share, 3),
        share is not None and share <= MAX_SKIPPED_SHARE,
    )
    return targets


def print_report(result: dict[str, Any]) -> None:
    env = result.get("environment", {})
    print("\n=== stylecam GPU check (issue 9) ===")
    print(
        f"{env.get('gpu') or env.get('cpu')}, driver {env.get('driver')}, Python {env.get('python')}, "
        f"CUDA {env.get('cuda')}; "
        + ", ".join(f"{name} {version}" for name, version in env.get("versions", {}).items())
    )
    print(f"model: {result.get('model', {})}")
    for name, command in result.get("commands", {}).items():
        print(f"command ({name}): {command}")
    for phase, error in result.get("errors", {}).items():
        print(f"PHASE {phase} FAILED: {error.splitlines()[-1] if error else error}")
    stages = result.get("stages")
    if stages:
        print(
            f"\n[stages] engine in-process, 1 session: {stages['fps']} fps, "
            f"load + warm-up {stages['load_and_warm_up_s']} s, events: {stages['events']}"
        )
        print(f"  model output: {stages['model_output']}")
        print(
            f"  {'stage':<8} {'engine ms':>9} {'events ms':>9} {'ev. EMA':>8} {'host ms':>8} {'calls':>6}"
            f" {'batch':>5} {'diff':>7}"
        )
        for row in stages["stages"]:
            difference = f"{row['difference']:+.1%}" if row["difference"] is not None else "-"
            note = "" if row["judged"] else "  (not judged: host work)"
            if not row["calls"]:
                note = "  (not a diffusion stage: no events)"
            print(
                f"  {row['stage']:<8} {row['engine_ms']!s:>9} {row['event_mean_ms']!s:>9} {row['event_ema_ms']!s:>8}"
                f" {row['host_mean_ms']!s:>8} {row['calls']:>6} {row['mean_batch']!s:>5} {difference:>7}{note}"
            )
    stream = result.get("stream")
    if stream:
        print(f"\n[stream] latency method: {stream['latency_method']}")
        print(
            f"  {'clients':>7} {'client':>6} {'fps out':>7} {'p50 ms':>7} {'p95 ms':>7} {'seen':>7} {'sep.':>5}"
            f" {'in':>5} {'out':>5} {'skip':>5} {'drop':>5} {'gap s':>6}"
        )
        for run in stream["runs"]:
            for number, row in enumerate(run["per_client"], 1):
                print(
                    f"  {run['clients']:>7} {number:>6} {row['fps_out']:>7} {row['latency_p50_ms']!s:>7}"
                    f" {row['latency_p95_ms']!s:>7} {row['switches_seen']:>3}/{row['switches']:<3}"
                    f" {row['scene_separation']!s:>5} {row['server_frames_in']!s:>5} {row['server_frames_out']!s:>5}"
                    f" {row['server_skipped']!s:>5} {row['server_dropped']!s:>5} {row['max_gap_s']!s:>6}"
                )
            print(
                f"          engine {run['engine_fps']} fps, stages ms {run['engine_stages_ms']}, "
                f"memory {run['device_memory_mb']} MB"
            )
    params = result.get("params")
    if params:
        print(
            f"\n[params] {params['changes']} changes in {params['seconds']} s, replies {params['replies']}; "
            f"memory (/stats) after {params['first_changes']}: {params['memory_after_first_mb']} MB, after all: "
            f"{params['memory_after_all_mb']} MB (growth {params['memory_growth']})"
        )
        print(f"  nvidia-smi after {params['first_changes']}: {params['nvidia_smi_after_first']}")
        print(f"  nvidia-smi after all: {params['nvidia_smi_after_all']}")
        print(f"  max output gap per client (s): {params['max_gap_s']}; fps out: {params['fps_out']}")
        if params["refusals"]:
            print(f"  refusals: {params['refusals']}")
    print("\n[targets]")
    for target in result.get("targets", []):
        print(f"  {'PASS' if target['ok'] else 'MISS'}  {target['target']}: {target['figure']}")
    print(f"\ntotal {result.get('total_s')} s; {'all targets met' if result.get('ok') else 'targets missed'}")


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


# --- main --------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_check",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "gpu-check", help="folder for the JSON and the server log"
    )
    parser.add_argument("--quick", action="store_true", help=f"a CPU dry run's defaults: {QUICK}")
    parser.add_argument("--arch", choices=["sd15", "tiny"], default="sd15", help="model (tiny: plumbing only)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1 ...")
    parser.add_argument("--size", type=int, help=f"processing size in px (default {FULL.size}: the server's)")
    parser.add_argument(
        "--seconds", type=float, help=f"measured seconds per stream run and for the stages (default {FULL.seconds:g})"
    )
    parser.add_argument(
        "--warmup", type=float, help=f"seconds after clients join before measuring (default {FULL.warmup:g})"
    )
    parser.add_argument("--changes", type=int, help=f"parameter changes (default {FULL.changes})")
    parser.add_argument(
        "--first-changes", type=int, help=f"memory is compared with after this many (default {FULL.first_changes})"
    )
    parser.add_argument(
        "--change-seconds", type=float, help=f"the changes are spread over this long (default {FULL.change_seconds:g})"
    )
    parser.add_argument("--settle", type=float, help=f"seconds before a memory reading (default {FULL.settle:g})")
    parser.add_argument("--toggle", type=float, help=f"seconds between camera scene switches (default {FULL.toggle:g})")
    parser.add_argument("--fps", type=float, help=f"camera frames per second per client (default {FULL.fps:g})")
    parser.add_argument("--model-dir", type=Path, help="where to write the model (default: a temporary folder)")
    parser.add_argument("--skip", default="", help="comma-separated phases to leave out: stages, server")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for name, value in vars(preset).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not 1 <= args.first_changes <= args.changes:
        parser.error("--first-changes must be within 1..--changes")
    if args.model_dir is None:
        args.model_dir = Path(tempfile.mkdtemp(prefix=TEMPORARY_PREFIX)) / "model"
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("aioice").setLevel(logging.WARNING)
    args = parse_args(argv)
    from models.loading import resolve_device

    args.torch_device = resolve_device(args.device)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    vae = args.model_dir / "vae"
    server_args = ["--model", str(args.model_dir), "--vae", str(vae)]
    if args.size != DEFAULT_SIZE:
        server_args += ["--width", str(args.size), "--height", str(args.size)]
    if args.device != "auto":
        server_args += ["--device", args.device]
    started = time.monotonic()
    result: dict[str, Any] = {
        "benchmark": "gpu_check",
        "date": datetime.date.today().isoformat(),
        "commands": {
            "check": "python -m bench.gpu_check " + " ".join(argv),
            "server": "python server.py --host 127.0.0.1 --port PORT " + " ".join(server_args),
            "device": DEVICE_COMMAND,
        },
        "settings": {
            name: str(value) if isinstance(value, Path) else value
            for name, value in vars(args).items()
            if name not in ("argv", "torch_device")
        },
        "environment": environment(args),
        "errors": {},
    }
    skip = set(args.skip.split(",")) - {""}
    phases: list[tuple[str, Callable[[], None]]] = [("model", lambda: result.update(model=write_model(args)))]
    if "stages" not in skip:
        phases.append(("stages", lambda: result.update(stages=engine_phase(args, server_args))))
    if "server" not in skip:
        phases.append(("server", lambda: asyncio.run(server_phases(args, server_args, out, result, save))))

    def save() -> None:
        result["total_s"] = round(time.monotonic() - started, 1)
        (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))

    save()
    for name, run in phases:
        logger.info("phase %s", name)
        phase_started = time.monotonic()
        try:
            run()
        except Exception:
            logger.exception("phase %s failed", name)
            result["errors"][name] = traceback.format_exc()
            if name == "model":
                break
        result.setdefault("phase_seconds", {})[name] = round(time.monotonic() - phase_started, 1)
        save()
    result["targets"] = judge(result)
    result["ok"] = all(target["ok"] for target in result["targets"]) and not result["errors"]
    result["total_s"] = round(time.monotonic() - started, 1)
    print_report(result)
    write_result(out / "gpu_check.json", result)
    if args.model_dir.parent.name.startswith(TEMPORARY_PREFIX):
        shutil.rmtree(args.model_dir.parent, ignore_errors=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
