"""`server.py --check`: the configured transform through the real engine, no network.

A user runs it before opening the page (and the image build runs it) to see that the model
loads, frames come out and how fast: the same engine, stages and threads as a live session,
fed a synthetic moving camera faster than any model takes it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
from av import VideoFrame

from transforms.base import FrameJob
from transforms.engine import FrameEngine
from transforms.params import StyleParams

CHECK_FRAMES = 30  # frames timed after the first one (which may capture graphs or compile)
CHECK_SECONDS = 10.0  # or this long, whichever comes first, once a second frame is out
FRAME_TIMEOUT_S = 600.0  # compiling, or a full-size model on a CPU, can take minutes a frame
CAMERA_SIZE = (640, 480)
CAMERA_FRAMES = 16  # distinct pictures cycled: consecutive ones differ, so none is skipped as a repeat
OFFER_INTERVAL_S = 0.002  # the camera offers a frame this often: faster than any model takes them
FLAT_PICTURE_STD = 1.0  # gray levels: a picture this even is one colour (NaN from the model turns black)


@dataclass
class CheckReport:
    transform: str
    details: dict[str, str]
    frames: int = 0
    seconds: float = 0.0
    first_frame_s: float | None = None
    stages_ms: dict[str, float] = field(default_factory=dict)
    latency_ms: float | None = None
    picture_std: float | None = None  # of the last picture out, in gray levels
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def failure(self) -> str | None:
        """Why the check failed, or None when frames came out without an error."""
        if self.errors:
            return f"{len(self.errors)} frame error(s), the first: {self.errors[0]}"
        if self.first_frame_s is None:
            return f"no frame came out within {FRAME_TIMEOUT_S:.0f} s"
        if self.frames == 0:
            return f"only the first frame came out, none within {FRAME_TIMEOUT_S:.0f} s after it"
        if self.picture_std is not None and self.picture_std < FLAT_PICTURE_STD:
            return "the pictures come out flat, all one colour: the model gives no picture (NaN or broken weights?)"
        if self.warnings:
            return f"it runs, but: {self.warnings[0]}"
        return None

    def render(self) -> str:
        lines = [f"stylecam check: {'ok' if self.failure is None else 'FAILED: ' + self.failure}"]
        lines.append(f"  transform    {self.transform}")
        lines += [f"  {name:<12} {value}" for name, value in self.details.items()]
        if self.first_frame_s is not None:
            lines.append(f"  first frame  {self.first_frame_s:.2f} s (one-time set-up included)")
        if self.frames:
            latency = f", latency p50 {self.latency_ms:.0f} ms" if self.latency_ms is not None else ""
            lines.append(f"  frames       {self.frames} in {self.seconds:.2f} s: {self.fps:.1f} fps{latency}")
        if self.stages_ms:
            stages = ", ".join(f"{name} {ms:.1f} ms" for name, ms in self.stages_ms.items())
            lines.append(f"  stage times  {stages}")
        lines += [f"  warning      {warning}" for warning in self.warnings]
        return "\n".join(lines)


def moving_camera(count: int = CAMERA_FRAMES) -> list[VideoFrame]:
    """A bright square moving over a gradient, as a camera's yuv420p frames."""
    width, height = CAMERA_SIZE
    frames = []
    for index in range(count):
        picture = np.zeros((height, width, 3), np.uint8)
        picture[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)
        picture[..., 2] = np.linspace(255, 0, height, dtype=np.uint8)[:, None]
        left = (index * width // count) % (width - 120)
        picture[180:300, left : left + 120] = (250, 220, 60)
        frames.append(VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p"))
    return frames


def run_check(engine: FrameEngine, details: dict[str, str], warnings: list[str]) -> CheckReport:
    """Push the moving camera through a started engine; time CHECK_FRAMES after the first frame.
    `warnings` (what loading the transform warned of) fail the check: the setup needs attention."""
    report = CheckReport(engine.transform.name, details, warnings=list(warnings))
    outputs: list[float] = []
    last_picture: list[VideoFrame] = []
    arrived = threading.Condition()

    def on_result(job: FrameJob) -> None:
        with arrived:
            outputs.append(time.monotonic())
            last_picture[:] = [job.data]
            arrived.notify_all()

    def on_error(message: str) -> None:
        with arrived:
            report.errors.append(message)
            arrived.notify_all()

    session = engine.open_session("check", StyleParams(), on_result, on_error)
    engine.transform.prepare_params(session, session.params)
    camera = moving_camera()
    started = time.monotonic()
    try:
        index = 0
        while True:
            with arrived:
                if _finished(outputs, report, started):
                    break
                arrived.wait(OFFER_INTERVAL_S)
            engine.submit(session, camera[index % len(camera)])
            index += 1
    finally:
        engine.close_session(session)
    if outputs:
        report.first_frame_s = outputs[0] - started
        timed = outputs[1 : CHECK_FRAMES + 1]
        report.frames = len(timed)
        report.seconds = timed[-1] - outputs[0] if timed else 0.0
    if last_picture:
        report.picture_std = float(last_picture[0].to_ndarray(format="gray").std())
    report.latency_ms = session.latency.median()
    report.stages_ms = {name: stage["ms"] for name, stage in engine.snapshot()["stages"].items()}
    return report


def _finished(outputs: list[float], report: CheckReport, started: float) -> bool:
    """Stop at an error, at CHECK_FRAMES timed frames, or CHECK_SECONDS after the first frame
    once a second one is out (a slow CPU still passes); give up when a frame takes too long."""
    now = time.monotonic()
    if report.errors:
        return True
    if len(outputs) < 2:
        return now - (outputs[-1] if outputs else started) > FRAME_TIMEOUT_S
    return len(outputs) > CHECK_FRAMES or now - outputs[0] > CHECK_SECONDS
