"""Temporal steadiness: how much the stylized picture changes from frame to frame.

The engine of a server's settings, in this process, fed a 30 fps camera: a still scene with
+-3 gray levels of sensor noise, and the same scene with a square drifting 1 px a frame. A
style change (prompt and seed) comes every 2 s. Flicker is the mean absolute change between
consecutive output frames (gray levels, 0-255), away from the changes; a change's largest
frame-to-frame step shows whether it jumps or eases in. Each scene runs with the similarity
filter on and off, and with transitions (500 ms) and without (0).

    python -m bench.flicker -- --model tiny --width 256 --height 256
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import logging
import statistics
import sys
import threading
import time
from typing import Any

import numpy as np
from av import VideoFrame

from bench.results import RESULTS, write_result
from settings import load_settings
from transforms.base import FrameJob
from transforms.catalog import build_engine
from transforms.params import StyleParams

logger = logging.getLogger("bench.flicker")

CAMERA_FPS = 30
CHANGE_EVERY_S = 2.0
SETTLE_S = 1.0  # frames this soon after a change count for its step, not for flicker
LOOKS = [("a watercolor portrait, soft light", 1), ("a claymation figure, studio light", 2)]


def camera_frame(index: int, moving: bool, rng: np.random.Generator) -> VideoFrame:
    picture = np.full((480, 640, 3), 100, np.int16)
    picture[..., 0] += np.linspace(0, 90, 640, dtype=np.int16)
    left = 200 + (index if moving else 0)
    picture[180:300, left : left + 120] = (220, 180, 140)
    picture += rng.integers(-3, 4, picture.shape, dtype=np.int16)
    return VideoFrame.from_ndarray(np.clip(picture, 0, 255).astype(np.uint8), format="rgb24")


def run(server_args: list[str], moving: bool, similarity: bool, transition_ms: int, seconds: float) -> dict[str, Any]:
    settings = load_settings(server_args)
    if not similarity:
        settings = settings.model_copy(update={"similarity_threshold": 0.0})
    engine = build_engine(settings)
    outputs: list[tuple[float, np.ndarray]] = []
    lock = threading.Lock()

    def keep(job: FrameJob) -> None:
        with lock:
            outputs.append((time.monotonic(), job.data.to_ndarray(format="gray").astype(np.float32)))

    engine.start()
    rng = np.random.default_rng(0)
    session = engine.open_session("flicker", StyleParams(transition_ms=transition_ms), keep, lambda message: None)
    engine.transform.prepare_params(session, session.params)
    changes: list[float] = []
    started = time.monotonic()
    try:
        for index in itertools.count():
            now = time.monotonic()
            if now - started > seconds:
                break
            if now - started >= CHANGE_EVERY_S * (len(changes) + 1):
                prompt, seed = LOOKS[(len(changes) + 1) % len(LOOKS)]
                params = session.params.updated({"prompt": prompt, "seed": seed})
                engine.transform.prepare_params(session, params)
                session.params = params
                changes.append(time.monotonic())
            engine.submit(session, camera_frame(index, moving, rng))
            time.sleep(max(0.0, started + (index + 1) / CAMERA_FPS - time.monotonic()))
    finally:
        engine.stop()
    steady: list[float] = []
    stepping: list[float] = []
    for (_, before), (at, after) in itertools.pairwise(outputs):
        step = float(np.abs(after - before).mean())
        near_change = any(0 <= at - change < SETTLE_S for change in changes)
        (stepping if near_change else steady).append(step)
    return {
        "scene": "slow motion (1 px a frame)" if moving else "still, sensor noise",
        "similarity_filter": similarity,
        "transition_ms": transition_ms,
        "frames_out": len(outputs),
        "flicker": round(statistics.mean(steady), 2) if steady else None,
        "largest_step_at_a_change": round(max(stepping), 2) if stepping else None,
        "skipped": session.frames_skipped,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="per configuration (default 8)")
    parser.add_argument("--json", type=str, help="where to write the result (default bench/results/flicker.json)")
    parser.add_argument("server_args", nargs="*", help="server settings after --, e.g. -- --model tiny")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = [
        run(args.server_args, moving, similarity, transition_ms, args.seconds)
        for moving in (False, True)
        for similarity in (True, False)
        for transition_ms in (500, 0)
    ]
    print(f"python -m bench.flicker {' '.join(sys.argv[1:])}")
    columns = ("frames", "flicker", "step at change", "skipped")
    print(f"{'scene':<28} {'filter':<7} {'trans ms':>8} " + " ".join(f"{name:>{len(name) + 1}}" for name in columns))
    for row in rows:
        print(
            f"{row['scene']:<28} {'on' if row['similarity_filter'] else 'off':<7} {row['transition_ms']:>8} "
            f"{row['frames_out']:>7} {row['flicker']!s:>8} {row['largest_step_at_a_change']!s:>15} {row['skipped']:>8}"
        )
    result = {"date": datetime.date.today().isoformat(), "server_args": args.server_args, "rows": rows}
    write_result(RESULTS / "flicker.json" if args.json is None else RESULTS.parent / args.json, result)


if __name__ == "__main__":
    main()
