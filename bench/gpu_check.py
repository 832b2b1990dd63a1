r"""The GPU proof of issue 9, in one run of about 4 minutes (at most about 6.5: every phase
has a deadline inside a whole-run budget of 350 s): SD 1.5's architecture with random weights
(bench/sd15.py), 512x512, 4 LCM steps at strength 0.5 (2 UNet evaluations per frame), the
server's default settings otherwise.

1. model: the random-weight model written as a diffusers folder (on the GPU: seconds).
2. stages: the real engine in this process (transforms.catalog.build_engine, as
   bench/engine.py runs it), one session offered camera frames faster than it takes them.
   Each diffusion stage's process() gets a CUDA event on the stage thread's current stream at
   entry, and one just before each of its waits for the device (models.devices.finish_work,
   wrapped in this process only); "work" is entry to the last of those, the time the GPU took
   to reach the stage's final wait. The engine's own stage time (an exponential moving average
   of process()'s host wall time, snapshot()) is compared with the same average, same weight,
   of the work times over the same calls; the gap per stage between host time and work time
   (the blocking wait's wake-up plus host overhead after it) is reported. First it checks that
   the model's output is finite and depends on the camera picture and the prompt.
3. stream: `python server.py --model DIR --vae DIR/vae` (nothing else but host and port), 1
   and then 4 concurrent aiortc clients (bench/client.py), each a 30 fps 640x480 camera:
   fps out per client (next to the frames the server got in, so a camera the client could not
   keep up is not taken for a slow server) and glass-to-glass latency p50/p95. Latency is
   timed per scene switch (the camera switches between two pictures every 0.5 s, about 30
   switches in a 15 s window; the client times when the output switches,
   bench.client.scene_switch_latencies): random weights keep no frame index readable in the
   pixels. The pictures' brightness moves every frame, so the server's similarity filter skips
   none and every frame out is a model pass. aioice leaves 127.0.0.1 and ::1 out of its host
   candidates: on a machine with only a loopback interface the phase stops at once and says
   so, unless another address is on lo (DEVICE_COMMAND adds 127.0.0.2; --add-loopback does it
   from here).
4. params: 300 random parameter changes (steps 1-8, strength 0.05-1, guidance 0-20, prompt
   from a list) over the control channels of the 4 streaming sessions: the server's GPU
   memory after the first 20 and after all, both as torch's memory_reserved (GET /stats) and as
   nvidia-smi's figure for the server process (CUDA graph executables live outside torch's
   allocator), and the longest gap between output frames per client. It stops early after 3
   requests in a row without a reply.

Targets: every one of 4 clients >= 25 fps; 1 client latency p95 <= 150 ms with every switch
seen and the two scenes' outputs told apart (separation >= 3); memory (the larger of the two
figures) after all changes within 10% of after the first 20; no output gap over 1 s; encode,
denoise and decode engine times within 20% of their CUDA-event work times. Every phase stops
at its deadline, or at once when the server process has exited; a phase cut short keeps what
it measured. Prints a table and writes OUT/gpu_check.json (after every phase) and
OUT/server.log; exits 1 when a target is missed or a figure is missing, always after printing
everything.

On the GPU machine (device tool), from the repository root, with the wheels that
bench/gpu_wheels.sh downloads in .whl/ (carry: [".whl"], timeout_s 420): pip about 15 s, the
check about 4 minutes (its budget 350 s, and `timeout` at 390 s, keep it under 420). Of the
15 minutes of device time, the machine's start takes 1-2: a second run of the usual 4-5
minutes fits after a first one even of the full 7 (after one cut at its limit, rerun with
--budget 250 and timeout_s 320):

    set -o pipefail; ls /sys/class/net; if [ "$(ls /sys/class/net)" = lo ]; then \
    ip addr add 127.0.0.2/8 dev lo; fi; python3 -m pip install -q --no-index --no-deps \
    --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1; \
    export PYTHONPATH=/tmp/site:$PWD; nvidia-smi; PYTHONUNBUFFERED=1 timeout -k 5 390 \
    python3 -m bench.gpu_check --add-loopback --out $OUT 2>&1 | tee $OUT/log

(DEVICE_COMMAND below is the same on one line. `ip` may be missing there: --add-loopback then
adds the address through an ioctl, and does nothing where aioice already finds one.)

A dry run of the plumbing on a CPU (the targets are missed there; --arch tiny is faster):

    python -m bench.gpu_check --quick --out /tmp/gpu-check
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import fcntl
import gc
import importlib.metadata
import itertools
import json
import logging
import os
import platform
import random
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterator, Sequence
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
MIN_SEPARATION = 3.0  # below it the two scenes' outputs are not told apart: no latency figure to trust
TARGET_MEMORY_GROWTH = 0.10
TARGET_GAP_S = 1.0
TARGET_STAGE_DIFFERENCE = 0.20
CAMERA_SHARE = 0.9  # under this share of the camera's fps in at the server, the client fell behind
MAX_SKIPPED_SHARE = 0.05  # validity: frames the similarity filter answered without the model
CLIENTS = 4
REQUEST_TIMEOUT_S = 5.0  # a params reply; the server prepares a prompt in milliseconds on a GPU
MAX_TIMEOUTS_IN_A_ROW = 3  # then the params phase stops: the server is not answering
CONNECT_S = 20.0  # an offer and the control channel's opening (StreamClient.connect waits 15 s)
RESERVE_S = 35.0  # of the budget, kept for the teardown (clients, server) and the report
MIN_PHASE_S = 5.0  # a phase with less time left than this is not started
LOOPBACK_ALIAS = "127.0.0.2"  # aioice leaves out 127.0.0.1 only (aioice.ice.get_host_addresses)
TEMPORARY_PREFIX = "stylecam-gpu-check-"
DEVICE_COMMAND = (
    'set -o pipefail; ls /sys/class/net; if [ "$(ls /sys/class/net)" = lo ]; then '
    f"ip addr add {LOOPBACK_ALIAS}/8 dev lo; fi; "
    "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
    "--target /tmp/site .whl/*.whl || exit 1; export PYTHONPATH=/tmp/site:$PWD; nvidia-smi; "
    "PYTHONUNBUFFERED=1 timeout -k 5 390 python3 -m bench.gpu_check --add-loopback --out $OUT 2>&1 | tee $OUT/log"
)
DEVICE_TIMEOUT_S = 420  # the device call's timeout_s: pip, then the check cut at 390 s
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
    load_s: float  # allowed for a model load and warm-up (the stages phase, the server's start)
    budget: float  # the whole run's deadline; each phase's own deadline is cut to fit it


FULL = Preset(
    size=512,
    seconds=15.0,
    warmup=5.0,
    changes=300,
    first_changes=20,
    change_seconds=30.0,
    settle=2.0,
    toggle=0.5,  # about 30 switches per window; settle (toggle / 2 = 250 ms) still above the 150 ms target
    fps=30.0,
    load_s=90.0,
    budget=350.0,
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
    load_s=240.0,
    budget=1500.0,
)


class PhaseAborted(RuntimeError):
    """A phase stopped before its end: its deadline passed, or the server exited."""


@dataclass
class Budget:
    """The whole run's deadline, RESERVE_S of it kept for the teardown and the report."""

    end: float

    def left(self, cap: float) -> float:
        """Seconds a phase may take: its own cap, cut to what the budget leaves."""
        return max(0.0, min(cap, self.end - RESERVE_S - time.monotonic()))


def phase_caps(args: argparse.Namespace) -> dict[str, float]:
    """Each phase's own deadline in seconds (a budget shorter than their sum cuts the later ones)."""
    return {
        "model": args.load_s,
        "stages": args.load_s + args.seconds + 30.0,
        "server": args.load_s,
        "stream": 2 * (CONNECT_S + args.warmup + args.seconds + 5.0),
        "params": 1.5 * args.change_seconds + 2 * args.settle + MAX_TIMEOUTS_IN_A_ROW * REQUEST_TIMEOUT_S + 20.0,
    }


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
    frames: int
    began: float  # perf_counter just after the entry event was recorded
    start: Any = None  # torch.cuda.Event at entry, on the stage thread's current stream; None on a CPU
    waits: list[tuple[Any, float]] = field(default_factory=list)  # (event just before a wait, host ms at wake-up)
    host_ms: float = 0.0


@dataclass
class StageTimer:
    """Times every DiffusionStage.process call: host wall time; a CUDA event on the calling
    thread's current stream (each stage thread has its own) at entry and one just before each
    wait for the device inside the call (models.devices.finish_work: the stage's final wait,
    and any on the way, e.g. decode's copy to the host), with the host time at each wake-up.
    The events are read after the run (figures()), so a call costs the engine only their
    recording."""

    cuda: bool
    calls: dict[str, list[StageCall]] = field(default_factory=lambda: defaultdict(list))
    _local: threading.local = field(default_factory=threading.local)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        from models import devices
        from transforms.diffusion import DiffusionStage

        original = DiffusionStage.process
        original_finish = devices.finish_work

        def process(stage: Any, jobs: Sequence[Any]) -> None:
            self.time(stage, jobs, original)

        def finish_work(device: torch.device) -> None:
            self.wait(device, original_finish)

        setattr(DiffusionStage, "process", process)  # noqa: B010 - a class attribute, on purpose
        setattr(devices, "finish_work", finish_work)  # noqa: B010 - in this process only
        try:
            yield
        finally:
            setattr(DiffusionStage, "process", original)  # noqa: B010
            setattr(devices, "finish_work", original_finish)  # noqa: B010

    def time(self, stage: Any, jobs: Sequence[Any], original: Callable[[Any, Sequence[Any]], None]) -> None:
        start = None
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            start.record(torch.cuda.current_stream())
        call = StageCall(len(jobs), time.perf_counter(), start)
        self._local.call = call
        try:
            original(stage, jobs)
        finally:
            self._local.call = None
        call.host_ms = (time.perf_counter() - call.began) * 1000
        self.calls[stage.name].append(call)  # as the engine: a failed call is not timed

    def wait(self, device: torch.device, original: Callable[[torch.device], None]) -> None:
        call: StageCall | None = getattr(self._local, "call", None)
        if call is None or call.start is None or device.type != "cuda":
            original(device)
            return
        before = torch.cuda.Event(enable_timing=True)
        before.record(torch.cuda.current_stream(device))
        original(device)
        call.waits.append((before, (time.perf_counter() - call.began) * 1000))

    def figures(self, name: str, weight: float) -> dict[str, Any]:
        """Per stage: host and work times (mean, and the engine's moving average over the same
        calls), and the gap between them. Work: entry event to the event before the final wait,
        the GPU's time to reach it (the start event runs when recorded: the stream is idle
        between calls, each ending with a wait)."""
        calls = self.calls.get(name, [])
        if self.cuda and calls:
            torch.cuda.synchronize()
        host = [call.host_ms for call in calls]
        work: list[float] = []
        wake: list[float] = []
        gaps: list[float] = []
        for call in calls:
            if call.start is None or not call.waits:
                continue
            event, woke_ms = call.waits[-1]
            work_ms = float(call.start.elapsed_time(event))
            work.append(work_ms)
            wake.append(woke_ms - work_ms)
            gaps.append(call.host_ms - work_ms)
        return {
            "calls": len(calls),
            "host_mean_ms": _round(statistics.fmean(host), 3) if host else None,
            "host_ema_ms": _round(moving_average(host, weight), 3),
            "work_mean_ms": _round(statistics.fmean(work), 3) if work else None,
            "work_ema_ms": _round(moving_average(work, weight), 3),
            "calls_with_work": len(work),
            "waits_per_call": _round(statistics.fmean(len(call.waits) for call in calls), 2) if calls else None,
            "final_wake_mean_ms": _round(statistics.fmean(wake), 3) if wake else None,
            "gap_mean_ms": _round(statistics.fmean(gaps), 3) if gaps else None,
            "gap_max_ms": _round(max(gaps), 3) if gaps else None,
            "mean_batch": _round(statistics.fmean(call.frames for call in calls), 2) if calls else None,
        }


def moving_average(values: Sequence[float], weight: float) -> float | None:
    """transforms.meters.MovingAverage over `values`, in order."""
    average = None
    for value in values:
        average = value if average is None else average + weight * (value - average)
    return average


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
        figures = timer.figures(name, EMA_WEIGHT)
        engine_stage = snapshot["stages"].get(name, {})
        engine_ms = engine_stage.get("ms")
        work_ema = figures["work_ema_ms"]
        difference = (engine_ms - work_ema) / work_ema if engine_ms is not None and work_ema else None
        rows.append(
            {
                "stage": name,
                "engine_ms": engine_ms,
                "engine_batches": engine_stage.get("batches"),
                **figures,
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
        "events": "CUDA events on the stage thread's current stream: at entry and before each wait "
        "(models.devices.finish_work); work = entry to the final wait's event; engine ms and the EMAs: "
        f"moving average, weight {EMA_WEIGHT}, over the same calls"
        if cuda
        else "none (no CUDA)",
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


async def get_stats(url: str, timeout_s: float = 10.0) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http, http.get(f"{url}/stats") as response:
            stats: dict[str, Any] = await response.json()
            return stats
    except TimeoutError:
        raise PhaseAborted(
            f"GET /stats: no answer within {timeout_s:g} s (the server runs but does not answer)"
        ) from None


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


def judged_memory(reading: dict[str, Any] | None) -> float | None:
    """The larger of torch's memory_reserved (/stats) and nvidia-smi's figure for the server
    process: CUDA graph executables and the CUDA context live outside torch's allocator."""
    if not reading:
        return None
    figures = [reading.get("stats_mb"), (reading.get("nvidia_smi") or {}).get("server_mib")]
    present = [figure for figure in figures if figure is not None]
    return max(present) if present else None


def growth(first: float | None, last: float | None) -> float | None:
    return _round((last - first) / first, 4) if first and last is not None else None


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


async def guarded(server: ServerProcess, work: Coroutine[Any, Any, None], seconds: float, what: str) -> None:
    """Run `work` until it ends, `seconds` pass (asyncio.timeout) or the server process exits,
    whichever comes first; the last two raise PhaseAborted (work is cancelled)."""
    task = asyncio.ensure_future(work)

    async def exited() -> None:
        while server.process.poll() is None:  # noqa: ASYNC110 - a child's exit sets no asyncio event
            await asyncio.sleep(0.25)

    watcher = asyncio.ensure_future(exited())
    try:
        async with asyncio.timeout(seconds):
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except TimeoutError:
        raise PhaseAborted(f"{what}: stopped at its deadline of {seconds:.0f} s") from None
    finally:
        for pending in (task, watcher):
            pending.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.done() and not task.cancelled():
        task.result()  # its exception, if any
        return
    raise PhaseAborted(f"{what}: the server exited (code {server.process.returncode})")


@dataclass
class ParamsRun:
    """What the params phase did so far: its figures stand also when it is cut short."""

    start: float
    end: float | None = None
    sent: int = 0
    replies: dict[str, int] = field(default_factory=lambda: {"ok": 0, "refused": 0, "timeout": 0})
    refusals: list[str] = field(default_factory=list)
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)


async def params_changes(
    clients: list[StreamClient], server: ServerProcess, args: argparse.Namespace, run: ParamsRun
) -> None:
    rng = random.Random(9)
    interval = args.change_seconds / args.changes
    schedule = run.start
    in_a_row = 0
    for number in range(1, args.changes + 1):
        await asyncio.sleep(max(0.0, schedule + (number - 1) * interval - time.monotonic()))
        client = clients[(number - 1) % len(clients)]
        run.sent = number
        try:
            reply = await client.request({"type": "params", **random_change(rng)}, timeout_s=REQUEST_TIMEOUT_S)
        except TimeoutError:
            run.replies["timeout"] += 1
            in_a_row += 1
            if in_a_row >= MAX_TIMEOUTS_IN_A_ROW:
                raise PhaseAborted(
                    f"params: {in_a_row} requests in a row without a reply within {REQUEST_TIMEOUT_S:g} s"
                ) from None
        else:
            in_a_row = 0
            if reply.get("type") == "params" and reply.get("ok"):
                run.replies["ok"] += 1
            else:
                run.replies["refused"] += 1
                run.refusals.append(str(reply.get("error")))
        if number == args.first_changes:
            await asyncio.sleep(args.settle)  # the graphs for the newest params are captured meanwhile
            run.memory["after_first"] = await memory_now(server)
            schedule += args.settle
    await asyncio.sleep(args.settle)
    run.memory["after_all"] = await memory_now(server)
    run.end = time.monotonic()


def params_figures(run: ParamsRun, clients: list[StreamClient], args: argparse.Namespace) -> dict[str, Any]:
    end = run.end or time.monotonic()
    first, last = run.memory.get("after_first"), run.memory.get("after_all")

    def stats_mb(reading: dict[str, Any] | None) -> float | None:
        return reading.get("stats_mb") if reading else None

    def smi_mib(reading: dict[str, Any] | None) -> float | None:
        return (reading.get("nvidia_smi") or {}).get("server_mib") if reading else None

    return {
        "changes": args.changes,
        "sent": run.sent,
        "first_changes": args.first_changes,
        "seconds": round(end - run.start, 1),
        "replies": run.replies,
        "refusals": run.refusals[:5],
        "memory_after_first_mb": stats_mb(first),
        "memory_after_all_mb": stats_mb(last),
        "memory_growth_stats": growth(stats_mb(first), stats_mb(last)),
        "nvidia_smi_after_first_mib": smi_mib(first),
        "nvidia_smi_after_all_mib": smi_mib(last),
        "memory_growth_nvidia_smi": growth(smi_mib(first), smi_mib(last)),
        "judged_after_first_mb": judged_memory(first),
        "judged_after_all_mb": judged_memory(last),
        "memory_growth": growth(judged_memory(first), judged_memory(last)),
        "nvidia_smi_after_first": first.get("nvidia_smi") if first else None,
        "nvidia_smi_after_all": last.get("nvidia_smi") if last else None,
        "max_gap_s": [max_gap(client, run.start, end) for client in clients],
        "frame_errors": [len(client.frame_errors) for client in clients],
        "fps_out": [
            round(sum(1 for f in client.received if run.start <= f.at < end) / max(end - run.start, 1e-6), 2)
            for client in clients
        ],
    }


def window_figures(clients: list[StreamClient], window: Window, cutoff: float, settle_s: float) -> dict[str, Any]:
    """Per client: fps out (and in, at the server), latency per scene switch, and the server's
    counts within the window."""
    rows = []
    seconds = window.end - window.start
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

        frames_in = counted("frames_in")
        rows.append(
            {
                "fps_out": round(len(frames) / seconds, 2),
                "server_fps_in": None if frames_in is None else round(frames_in / seconds, 2),
                "camera_fps": client.fps,
                "latency_p50_ms": _round(p50, 1),
                "latency_p95_ms": _round(p95, 1),
                "switches": len(in_window),
                "switches_seen": len(latencies),
                "scene_separation": _round(separation, 2),
                "server_frames_in": frames_in,
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
        "seconds": round(seconds, 1),
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


def ice_host_addresses() -> list[str]:
    """The addresses aioice gathers host candidates on (it leaves 127.0.0.1 and ::1 out)."""
    import aioice.ice

    return list(aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True))


def add_loopback_alias(address: str = LOOPBACK_ALIAS) -> str:
    """Put `address` on lo, as root, for aioice to use: `ip addr add ADDRESS/8 dev lo`, or where
    there is no `ip`, the SIOCSIFADDR ioctl on the alias lo:1 (as `ifconfig lo:1 ADDRESS` does).
    Returns how it went."""
    try:
        answer = subprocess.run(
            ["ip", "addr", "add", f"{address}/8", "dev", "lo"], capture_output=True, text=True, timeout=10, check=False
        )
        if answer.returncode == 0:
            return f"ip addr add {address}/8 dev lo"
        tried = f"ip: {answer.stderr.strip()}"
    except (OSError, subprocess.SubprocessError) as exc:
        tried = f"ip: {exc}"
    siocsifaddr = 0x8916
    request = struct.pack("16sH2s4s8s", b"lo:1", socket.AF_INET, b"", socket.inet_aton(address), b"")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            fcntl.ioctl(sock, siocsifaddr, request)
    except OSError as exc:
        return f"not added ({tried}; ioctl SIOCSIFADDR lo:1: {exc})"
    return f"ioctl SIOCSIFADDR lo:1 {address} ({tried})"


def network(add_loopback: bool) -> dict[str, Any]:
    """The interfaces, aioice's host addresses and, with add_loopback where it finds none, the
    address added to lo."""
    interfaces: list[str] | None
    try:
        interfaces = sorted(os.listdir("/sys/class/net"))
    except OSError:
        interfaces = None
    info: dict[str, Any] = {"interfaces": interfaces}
    addresses = ice_host_addresses()
    if not addresses and add_loopback:
        info["added"] = add_loopback_alias()
        logger.info("aioice found no host address: %s", info["added"])
        addresses = ice_host_addresses()
    info["ice_host_addresses"] = addresses
    return info


async def server_phases(
    args: argparse.Namespace,
    server_args: list[str],
    out: Path,
    result: dict[str, Any],
    save: Callable[[], None],
    budget: Budget,
) -> None:
    caps = phase_caps(args)

    async def phase(name: str, work: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        seconds = budget.left(caps[name])
        logger.info("phase %s (deadline %.0f s)", name, seconds)
        started = time.monotonic()
        ok = False
        try:
            if seconds < MIN_PHASE_S:
                raise PhaseAborted(f"{name}: not started, {seconds:.0f} s left in the run's budget")
            await guarded(server, work(), seconds, name)
            ok = True
        except PhaseAborted as exc:
            logger.error("phase %s: %s", name, exc)
            result["errors"][name] = str(exc)
        except Exception:
            logger.exception("phase %s failed", name)
            result["errors"][name] = traceback.format_exc()
        result.setdefault("phase_seconds", {})[name] = round(time.monotonic() - started, 1)
        return ok

    with (out / "server.log").open("wb") as log:
        server = ServerProcess(*server_args, log=log)
        clients: list[StreamClient] = []
        windows: list[Window] = []
        started = time.monotonic()
        try:

            async def start() -> None:
                health = await server.ready()
                result["server"] = {
                    "ready_s": round(time.monotonic() - started, 1),
                    "health": health,
                    "pid": server.process.pid,
                }
                if health.get("status") != "ok":
                    raise RuntimeError(f"the server did not start: {health}")

            ok = await phase("server", start)
            save()
            if not ok:
                return

            def client() -> StreamClient:
                return StreamClient(server.url, fps=args.fps, scene="switch", toggle_s=args.toggle)

            async def stream() -> None:
                addresses = ice_host_addresses()
                if not addresses:
                    raise PhaseAborted(
                        "stream: aioice finds no host address (it leaves out 127.0.0.1 and ::1; interfaces: "
                        f"{result.get('network', {}).get('interfaces')}), so neither peer can gather an ICE "
                        f"candidate. As root: ip addr add {LOOPBACK_ALIAS}/8 dev lo (or run with --add-loopback)"
                    )
                for count in (1, CLIENTS):
                    joining = [client() for _ in range(count - len(clients))]
                    clients.extend(joining)  # closed at the end also when connect fails
                    try:
                        await asyncio.gather(*(joining_client.connect() for joining_client in joining))
                    except TimeoutError:
                        raise PhaseAborted(
                            f"stream: with {count} client(s), a control channel did not open within 15 s"
                        ) from None
                    await asyncio.sleep(args.warmup)
                    windows.append(await measure_window(server, count, args.seconds))
                    logger.info("stream: %d client(s) measured", count)

            ok = await phase("stream", stream)
            if windows:
                cutoff = time.monotonic()
                result["stream"] = {
                    "latency_method": LATENCY_METHOD,
                    "toggle_s": args.toggle,
                    "runs": [window_figures(clients, window, cutoff, args.toggle / 2) for window in windows],
                }
            save()
            if not ok:
                return

            run = ParamsRun(time.monotonic())
            ok = await phase("params", lambda: params_changes(clients, server, args, run))
            if "after_all" not in run.memory and server.process.poll() is None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(10):  # out of the reserve: the memory after what was done
                        run.memory["after_all"] = await memory_now(server)
            result["params"] = params_figures(run, clients, args)
            logger.info("params: %s", "done" if ok else "cut short")
            save()
        finally:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
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
    fps_in = [row["server_fps_in"] for row in four]
    figure: dict[str, Any] = {"fps_out": fps or None, "server_fps_in": fps_in or None}
    behind = [
        row["server_fps_in"]
        for row in four
        if row["server_fps_in"] is not None and row["server_fps_in"] < CAMERA_SHARE * row["camera_fps"]
    ]
    if behind:  # the clients' process did not keep its cameras' pace: a client figure, not the server's
        figure["note"] = (
            f"the server got {min(behind)} fps in from a {four[0]['camera_fps']:g} fps camera: the clients fell behind"
        )
    elif four and four[0]["camera_fps"] < TARGET_FPS:
        figure["note"] = f"the cameras send {four[0]['camera_fps']:g} fps only"
    add(
        f"{CLIENTS} clients: every one >= {TARGET_FPS:g} fps out",
        figure,
        len(fps) == CLIENTS and min(fps) >= TARGET_FPS,
    )
    one = runs.get(1, {}).get("per_client", [{}])[0]
    p95, seen, switches = one.get("latency_p95_ms"), one.get("switches_seen", 0), one.get("switches", 0)
    separation = one.get("scene_separation")
    add(
        f"1 client: glass-to-glass latency p95 <= {TARGET_P95_MS:g} ms, every switch seen, the scenes' outputs "
        f"told apart (separation >= {MIN_SEPARATION:g})",
        {"p95_ms": p95, "switches_seen": f"{seen}/{switches}", "separation": separation},
        p95 is not None
        and p95 <= TARGET_P95_MS
        and 0 < seen == switches
        and separation is not None
        and separation >= MIN_SEPARATION,
    )
    params = result.get("params", {})
    settings = result.get("settings", {})
    memory_growth = params.get("memory_growth")
    add(
        f"{params.get('sent', 0)} of {settings.get('changes')} changes: GPU memory (the larger of /stats and "
        f"nvidia-smi) within {TARGET_MEMORY_GROWTH:.0%} of after the first {settings.get('first_changes')}",
        {
            "growth": memory_growth,
            "stats": params.get("memory_growth_stats"),
            "nvidia_smi": params.get("memory_growth_nvidia_smi"),
        },
        memory_growth is not None
        and abs(memory_growth) <= TARGET_MEMORY_GROWTH
        and params.get("sent") == params.get("changes"),
    )
    gaps = params.get("max_gap_s")
    add(f"changes: no output gap over {TARGET_GAP_S:g} s", gaps, bool(gaps) and max(gaps) <= TARGET_GAP_S)
    stages = {row["stage"]: row for row in result.get("stages", {}).get("stages", [])}
    for name in JUDGED_STAGES:
        row = stages.get(name, {})
        difference = row.get("difference")
        add(
            f"{name}: engine stage time within {TARGET_STAGE_DIFFERENCE:.0%} of its CUDA-event work time "
            "(moving averages, same weight, same calls)",
            {"difference": difference, "engine_ms": row.get("engine_ms"), "work_ema_ms": row.get("work_ema_ms")},
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
    print(f"network: {result.get('network')}")
    print(f"model: {result.get('model', {})}")
    for name, command in result.get("commands", {}).items():
        print(f"command ({name}): {command}")
    print(f"phase seconds: {result.get('phase_seconds')}; budget {result.get('settings', {}).get('budget')} s")
    for phase, error in result.get("errors", {}).items():
        print(f"PHASE {phase} FAILED: {error.strip().splitlines()[-1] if error.strip() else error}")
    stages = result.get("stages")
    if stages:
        print(
            f"\n[stages] engine in-process, 1 session: {stages['fps']} fps, "
            f"load + warm-up {stages['load_and_warm_up_s']} s\n  events: {stages['events']}"
        )
        print(f"  model output: {stages['model_output']}")
        print(
            f"  {'stage':<8} {'engine':>7} {'work':>7} {'work':>7} {'host':>7} {'wake':>6} {'gap':>6} {'gap':>6}"
            f" {'calls':>6} {'batch':>5} {'diff':>7}\n"
            f"  {'':<8} {'EMA ms':>7} {'EMA ms':>7} {'mean':>7} {'mean':>7} {'mean':>6} {'mean':>6} {'max':>6}"
        )
        for row in stages["stages"]:
            difference = f"{row['difference']:+.1%}" if row["difference"] is not None else "-"
            note = "" if row["judged"] else "  (not judged: host work)"
            if not row["calls"]:
                note = "  (not a diffusion stage: no events)"
            if row["calls"] and row["calls"] != row["engine_batches"]:
                note += f"  (engine counted {row['engine_batches']} calls)"
            print(
                f"  {row['stage']:<8} {row['engine_ms']!s:>7} {row['work_ema_ms']!s:>7} {row['work_mean_ms']!s:>7}"
                f" {row['host_mean_ms']!s:>7} {row['final_wake_mean_ms']!s:>6} {row['gap_mean_ms']!s:>6}"
                f" {row['gap_max_ms']!s:>6} {row['calls']:>6} {row['mean_batch']!s:>5} {difference:>7}{note}"
            )
        print(
            "  work: entry to the final wait's event (GPU time to reach it); wake: host wake-up after the final "
            "wait minus work; gap: host - work (wake-up and host overhead)"
        )
    stream = result.get("stream")
    if stream:
        print(f"\n[stream] toggle {stream['toggle_s']} s; latency method: {stream['latency_method']}")
        print(
            f"  {'clients':>7} {'client':>6} {'fps out':>7} {'fps in':>6} {'p50 ms':>7} {'p95 ms':>7} {'seen':>7}"
            f" {'sep.':>5} {'in':>5} {'out':>5} {'skip':>5} {'drop':>5} {'gap s':>6}"
        )
        for run in stream["runs"]:
            for number, row in enumerate(run["per_client"], 1):
                print(
                    f"  {run['clients']:>7} {number:>6} {row['fps_out']:>7} {row['server_fps_in']!s:>6}"
                    f" {row['latency_p50_ms']!s:>7} {row['latency_p95_ms']!s:>7}"
                    f" {row['switches_seen']:>3}/{row['switches']:<3}"
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
            f"\n[params] {params['sent']} of {params['changes']} changes in {params['seconds']} s, replies "
            f"{params['replies']}; memory after {params['first_changes']} / after all: /stats "
            f"{params['memory_after_first_mb']} / {params['memory_after_all_mb']} MB "
            f"(growth {params['memory_growth_stats']}), nvidia-smi {params['nvidia_smi_after_first_mib']} / "
            f"{params['nvidia_smi_after_all_mib']} MiB (growth {params['memory_growth_nvidia_smi']}); judged on the "
            f"larger: {params['judged_after_first_mb']} / {params['judged_after_all_mb']} (growth "
            f"{params['memory_growth']})"
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
    parser.add_argument(
        "--load-seconds",
        dest="load_s",
        type=float,
        help=f"allowed for a model load and warm-up, in the phases' deadlines (default {FULL.load_s:g})",
    )
    parser.add_argument(
        "--budget",
        type=float,
        help=f"seconds for the whole run: every phase's deadline is cut to fit (default {FULL.budget:g}; "
        f"{RESERVE_S:g} of it is kept for the teardown and the report)",
    )
    parser.add_argument(
        "--add-loopback",
        action="store_true",
        help=f"where aioice finds no host address (only lo), put {LOOPBACK_ALIAS} on lo first (as root: ip, "
        "else an ioctl)",
    )
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


def in_thread(name: str, work: Callable[[], None], seconds: float) -> None:
    """Run `work` in a daemon thread for at most `seconds`; past that, raise PhaseAborted and
    leave it running (a Python thread cannot be stopped: main() then ends with os._exit)."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except BaseException as exc:  # raised again in the calling thread
            failure.append(exc)

    thread = threading.Thread(target=target, name=f"gpu-check-{name}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise PhaseAborted(f"{name}: stopped at its deadline of {seconds:.0f} s (its thread left running)")
    if failure:
        raise failure[0]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("aioice").setLevel(logging.WARNING)
    args = parse_args(argv)
    started = time.monotonic()
    budget = Budget(started + args.budget)
    caps = phase_caps(args)
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
        "phase_caps_s": caps,
        "environment": environment(args),
        "network": network(args.add_loopback),
        "errors": {},
        "phase_seconds": {},
    }
    skip = set(args.skip.split(",")) - {""}
    abandoned = False

    def save() -> None:
        result["total_s"] = round(time.monotonic() - started, 1)
        (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))

    def threaded(name: str, work: Callable[[], None]) -> None:
        nonlocal abandoned
        seconds = budget.left(caps[name])
        logger.info("phase %s (deadline %.0f s)", name, seconds)
        if seconds < MIN_PHASE_S:
            raise PhaseAborted(f"{name}: not started, {seconds:.0f} s left in the run's budget")
        try:
            in_thread(name, work, seconds)
        except PhaseAborted:
            abandoned = True
            raise

    phases: list[tuple[str, Callable[[], None]]] = [
        ("model", lambda: threaded("model", lambda: result.update(model=write_model(args))))
    ]
    if "stages" not in skip:
        phases.append(
            ("stages", lambda: threaded("stages", lambda: result.update(stages=engine_phase(args, server_args))))
        )
    if "server" not in skip:  # the server, stream and params phases, each with its deadline
        phases.append(("server", lambda: asyncio.run(server_phases(args, server_args, out, result, save, budget))))

    save()
    for name, run in phases:
        phase_started = time.monotonic()
        try:
            run()
        except PhaseAborted as exc:
            logger.error("phase %s: %s", name, exc)
            result["errors"][name] = str(exc)
        except Exception:
            logger.exception("phase %s failed", name)
            result["errors"][name] = traceback.format_exc()
        if name != "server":
            result["phase_seconds"][name] = round(time.monotonic() - phase_started, 1)
        save()
        if name == "model" and "model" in result["errors"]:
            break
    result["targets"] = judge(result)
    result["ok"] = all(target["ok"] for target in result["targets"]) and not result["errors"]
    result["total_s"] = round(time.monotonic() - started, 1)
    print_report(result)
    write_result(out / "gpu_check.json", json.loads(json.dumps(result, default=str)))
    if args.model_dir.parent.name.startswith(TEMPORARY_PREFIX):
        shutil.rmtree(args.model_dir.parent, ignore_errors=True)
    code = 0 if result["ok"] else 1
    if abandoned:  # a phase's thread may still be inside CUDA: do not wait for it at exit
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
