"""The frame engine on its own: newest frame wins, stages overlap, errors stay contained."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pytest

from transforms.base import FrameJob, Stage, Transform
from transforms.engine import EngineSession, FrameEngine
from transforms.params import StyleParams
from transforms.priority import SUPPORTING_STAGE_NICE
from transforms.similarity import SimilarityFilter


class SleepStage(Stage):
    """Stands for work of a known duration; records the batches it saw."""

    def __init__(self, name: str, seconds: float, fail_every: int = 0) -> None:
        self.name = name
        self.seconds = seconds
        self.fail_every = fail_every
        self.calls = 0
        self.batch_sizes: list[int] = []

    def process(self, jobs: Sequence[FrameJob]) -> None:
        self.calls += 1
        self.batch_sizes.append(len(jobs))
        time.sleep(self.seconds)
        if self.fail_every and self.calls % self.fail_every == 0:
            raise RuntimeError("simulated stage failure")


class SleepTransform(Transform):
    name = "sleep"
    model_stage = "b"

    def __init__(self, *stages: SleepStage) -> None:
        self._stages = list(stages)

    def stages(self) -> list[Stage]:
        return list(self._stages)


class Collector:
    def __init__(self) -> None:
        self.results: list[tuple[float, FrameJob]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def on_result(self, job: FrameJob) -> None:
        with self._lock:
            self.results.append((time.monotonic(), job))

    def on_error(self, message: str) -> None:
        self.errors.append(message)


@contextmanager
def running(engine: FrameEngine) -> Iterator[FrameEngine]:
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


def open_session(engine: FrameEngine, name: str = "s") -> tuple[EngineSession, Collector]:
    collector = Collector()
    return engine.open_session(name, StyleParams(), collector.on_result, collector.on_error), collector


def feed(engine: FrameEngine, sessions: list[EngineSession], seconds: float, fps: float = 30.0) -> None:
    """Submit numbered frames to every session at a camera's pace."""
    start = time.monotonic()
    for index in range(int(seconds * fps)):
        time.sleep(max(0.0, start + index / fps - time.monotonic()))
        for session in sessions:
            engine.submit(session, index)


def throughput(max_inflight: int | None) -> float:
    stages = [SleepStage(name, 0.03) for name in ("a", "b", "c")]
    engine = FrameEngine(SleepTransform(*stages), max_inflight=max_inflight)
    with running(engine):
        session, collector = open_session(engine)
        feed(engine, [session], seconds=1.5, fps=100)
        time.sleep(0.2)
    return len(collector.results) / 1.5


def test_three_equal_stages_overlap() -> None:
    serial = throughput(max_inflight=1)
    pipelined = throughput(max_inflight=None)
    assert pipelined >= 1.8 * serial, f"pipelined {pipelined:.1f} fps vs serial {serial:.1f} fps"


def test_a_slow_stage_drops_old_frames_and_keeps_latency_near_one_pass() -> None:
    """Regression: frames must not queue in front of the slow stage (latency would double)."""
    stages = [SleepStage("a", 0.005), SleepStage("b", 0.1), SleepStage("c", 0.01)]
    engine = FrameEngine(SleepTransform(*stages))
    with running(engine):
        session, collector = open_session(engine)
        feed(engine, [session], seconds=3)
        time.sleep(0.3)
    assert 20 <= len(collector.results) <= 32, "the slow stage sets the pace, about 9 fps"
    assert session.frames_dropped > 50
    latencies = [done - job.received_at for done, job in collector.results[5:]]
    assert statistics.median(latencies) < 0.16, f"median latency {statistics.median(latencies):.3f} s"
    frames = [job.data for _, job in collector.results]
    assert frames == sorted(frames), "frames come out in camera order"


def test_frames_of_several_sessions_share_a_batch() -> None:
    stage = SleepStage("b", 0.1)
    engine = FrameEngine(SleepTransform(stage))
    with running(engine):
        first, first_results = open_session(engine, "first")
        second, second_results = open_session(engine, "second")
        feed(engine, [first, second], seconds=2)
        time.sleep(0.2)
    assert max(stage.batch_sizes) == 2
    assert statistics.mean(stage.batch_sizes) > 1.5
    assert abs(len(first_results.results) - len(second_results.results)) <= 2


def test_a_failing_stage_drops_that_batch_and_the_stream_goes_on() -> None:
    stages = [SleepStage("a", 0.01), SleepStage("b", 0.01, fail_every=3)]
    engine = FrameEngine(SleepTransform(*stages))
    with running(engine):
        session, collector = open_session(engine)
        feed(engine, [session], seconds=1)
        time.sleep(0.2)
    assert session.errors >= 5 and collector.errors
    assert "simulated stage failure" in (session.last_error or "")
    assert len(collector.results) >= 10
    assert engine.snapshot()["stages"]["b"]["errors"] == session.errors


def test_a_closed_session_gets_nothing_more() -> None:
    engine = FrameEngine(SleepTransform(SleepStage("a", 0.05), SleepStage("b", 0.05)))
    with running(engine):
        session, collector = open_session(engine)
        feed(engine, [session], seconds=0.5)
        engine.close_session(session)
        delivered = len(collector.results)
        engine.submit(session, 999)
        time.sleep(0.3)
        assert len(collector.results) <= delivered + 1
        assert engine.session_count == 0
    assert all(job.data != 999 for _, job in collector.results)


class NiceStage(SleepStage):
    """Records the CPU priority (nice) of the thread it runs in."""

    def __init__(self, name: str) -> None:
        super().__init__(name, 0.0)
        self.nice: int | None = None

    def process(self, jobs: Sequence[FrameJob]) -> None:
        self.nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_the_model_stage_keeps_its_priority_and_the_others_yield_to_it() -> None:
    """On a busy CPU the model stage (the bottleneck) gets a core first; the process's own
    priority is left alone (the event loop, which carries the WebRTC traffic, keeps it)."""
    stages = [NiceStage(name) for name in ("a", "b", "c")]
    own = os.getpriority(os.PRIO_PROCESS, 0)
    with running(FrameEngine(SleepTransform(*stages))) as engine:
        session, collector = open_session(engine)
        feed(engine, [session], seconds=0.3)
        time.sleep(0.1)
    assert collector.results
    lowered = min(own + SUPPORTING_STAGE_NICE, 19)
    assert [stage.nice for stage in stages] == [lowered, own, lowered]
    assert os.getpriority(os.PRIO_PROCESS, 0) == own


def test_delay_ms_slows_the_model_stage() -> None:
    engine = FrameEngine(SleepTransform(SleepStage("a", 0.0), SleepStage("b", 0.0)), delay_ms=100)
    with running(engine):
        session, collector = open_session(engine)
        feed(engine, [session], seconds=1.5)
        time.sleep(0.2)
    assert 10 <= len(collector.results) <= 17
    assert engine.snapshot()["stages"]["b"]["ms"] >= 95


def test_frames_per_batch_trades_latency_for_throughput() -> None:
    """The `batch` setting: k camera frames of a session share each model call."""
    results = {}
    for frames_per_batch in (1, 3):
        stage = SleepStage("b", 0.1)
        engine = FrameEngine(SleepTransform(stage), frames_per_batch=frames_per_batch)
        with running(engine):
            session, collector = open_session(engine)
            feed(engine, [session], seconds=2)
            time.sleep(0.3)
        latencies = [done - job.received_at for done, job in collector.results[3:]]
        results[frames_per_batch] = (len(collector.results), statistics.median(latencies), stage.batch_sizes)
    (single, single_latency, _), (batched, batched_latency, sizes) = results[1], results[3]
    assert set(sizes) == {3}
    assert batched >= 2.5 * single
    assert batched_latency > single_latency


class StillOrMoving:
    """A noisy camera (+-3 gray levels on every pixel) of a still picture, or of one in which a
    1% region (55 x 55 px of 640 x 480) moves 4 px a frame."""

    def __init__(self, moving: bool) -> None:
        self.moving = moving
        self.index = 0
        self.rng = np.random.default_rng(0)

    def next(self) -> object:
        from av import VideoFrame

        picture = np.full((480, 640, 3), 90, np.int16)
        if self.moving:
            left = 100 + 4 * self.index
            picture[200:255, left : left + 55] = 230
        self.index += 1
        picture += self.rng.integers(-3, 4, picture.shape, dtype=np.int16)
        return VideoFrame.from_ndarray(np.clip(picture, 0, 255).astype(np.uint8), format="rgb24")


@pytest.mark.parametrize("moving", [False, True])
def test_similarity_filter_skips_a_still_scene_never_motion(moving: bool) -> None:
    stage = SleepStage("b", 0.01)
    engine = FrameEngine(SleepTransform(stage), similarity=SimilarityFilter(threshold=5.0, max_skips=5))
    camera = StillOrMoving(moving)
    with running(engine):
        session, collector = open_session(engine)
        start = time.monotonic()
        for index in range(60):
            time.sleep(max(0.0, start + index / 30 - time.monotonic()))
            engine.submit(session, camera.next())
        time.sleep(0.2)
    delivered = len(collector.results)
    assert delivered >= 50, "every frame still gets an answer"
    if moving:
        assert session.frames_skipped == 0 and stage.calls == delivered
    else:
        assert session.frames_skipped >= 0.75 * delivered, "a still scene costs a fraction"
        assert stage.calls >= delivered / 6, "but is recomputed after max_skips"
