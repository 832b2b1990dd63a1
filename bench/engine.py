"""The frame engine on its own, no WebRTC: does pipelining pay, and how fast is a transform?

1. Stage overlap with stages of known, equal cost (sleeps): throughput should follow the
   slowest stage, not the sum.
2. The real transform of a server's settings, fed synthetic 640x480 camera frames as fast
   as it takes them, serial (one frame in flight) and pipelined: the engine's own fps,
   which bench/stream.py compares the end-to-end fps with.

    python -m bench.engine
    python -m bench.engine --seconds 10 -- --model tiny --width 256 --height 256
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from av import VideoFrame

from bench.results import RESULTS, write_result
from settings import Settings, load_settings
from transforms.base import FrameJob, Stage, Transform
from transforms.catalog import build_engine
from transforms.engine import FrameEngine
from transforms.params import StyleParams

logger = logging.getLogger("bench.engine")


class SleepStage(Stage):
    def __init__(self, name: str, seconds: float) -> None:
        self.name = name
        self._seconds = seconds

    def process(self, jobs: Sequence[FrameJob]) -> None:
        time.sleep(self._seconds)


class EqualStages(Transform):
    name = "equal-stages"
    model_stage = "b"

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    def stages(self) -> list[Stage]:
        return [SleepStage(name, self._seconds) for name in ("a", "b", "c")]


def engine_fps(engine: FrameEngine, frame: Any, seconds: float) -> float:
    """Frames per second out of `engine` when a camera offers a new frame every millisecond."""
    done = threading.Event()
    delivered: list[float] = []
    engine.start()
    try:
        session = engine.open_session(
            "bench", StyleParams(), lambda job: delivered.append(time.monotonic()), lambda error: logger.warning(error)
        )
        started = time.monotonic()
        while time.monotonic() - started < seconds and not done.is_set():
            engine.submit(session, frame)
            time.sleep(0.001)
        engine.close_session(session)
    finally:
        engine.stop()
    warm = [at for at in delivered if at > started + min(1.0, seconds / 4)]
    return (len(warm) - 1) / (warm[-1] - warm[0]) if len(warm) > 2 else 0.0


def camera_frame() -> VideoFrame:
    """A 640x480 camera frame in yuv420p, as the VP8 decoder hands frames to the engine."""
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    return VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    stage_s = args.stage_ms / 1000
    serial = engine_fps(FrameEngine(EqualStages(stage_s), max_inflight=1), object(), args.seconds)
    pipelined = engine_fps(FrameEngine(EqualStages(stage_s)), object(), args.seconds)
    settings = without_similarity(
        load_settings(args.server_args) if args.server_args else Settings(transform="diffusion", model="tiny")
    )
    real_serial = engine_fps(single_flight(settings), camera_frame(), args.seconds)
    real_pipelined = engine_fps(build_engine(settings), camera_frame(), args.seconds)
    return {
        "benchmark": "engine",
        "date": datetime.date.today().isoformat(),
        "command": "python -m bench.engine " + " ".join(args.argv),
        "equal_stages": {
            "stage_ms": args.stage_ms,
            "serial_fps": round(serial, 2),
            "pipelined_fps": round(pipelined, 2),
            "speedup": round(pipelined / serial, 2),
        },
        "transform": {
            "settings": settings.model_dump(mode="json", include={"transform", "model", "width", "height", "device"}),
            "serial_fps": round(real_serial, 2),
            "pipelined_fps": round(real_pipelined, 2),
            "speedup": round(real_pipelined / real_serial, 2) if real_serial else None,
        },
    }


def without_similarity(settings: Settings) -> Settings:
    """The synthetic camera repeats one frame; the similarity filter would skip the model."""
    return settings.model_copy(update={"similarity_threshold": 0.0})


def single_flight(settings: Settings) -> FrameEngine:
    """The configured engine, but with one frame in flight: its stages cannot overlap."""
    engine = build_engine(settings)
    return FrameEngine(engine.transform, max_batch=settings.max_batch, max_inflight=1)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.engine",
        description=(__doc__ or "").split("\n\n")[0],
        epilog="Arguments after -- are server.py settings for the real transform (default: --model tiny).",
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="time per measurement (default 8)")
    parser.add_argument("--stage-ms", type=float, default=30.0, help="cost of each equal stage (default 30)")
    parser.add_argument("--json", type=Path, default=RESULTS / "engine.json", help="JSON result file")
    parser.add_argument("server_args", nargs="*", help="server.py settings, after --")
    args = parser.parse_args(argv)
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = measure(args)
    stages, real = result["equal_stages"], result["transform"]
    print(result["command"])
    print(
        f"3 equal stages of {stages['stage_ms']} ms: serial {stages['serial_fps']} fps, "
        f"pipelined {stages['pipelined_fps']} fps ({stages['speedup']}x)"
    )
    print(
        f"{real['settings']}: serial {real['serial_fps']} fps, pipelined {real['pipelined_fps']} fps "
        f"({real['speedup']}x)"
    )
    write_result(args.json, result)


if __name__ == "__main__":
    main()
