"""The frame engine: one per process, owns the device, runs a transform's stages in threads.

Real time rules (DESIGN.md):
- Each session has one input slot; a newer camera frame replaces an older one that has
  not been admitted yet, so a slow model drops frames and never queues them.
- Admission is paced: a frame enters the pipeline just in time to reach every busy stage
  when that stage frees up, so it waits nowhere inside, and the frame admitted is the
  freshest one. Latency stays near one pass through the stages.
- Stages run in their own threads and overlap; a stage takes every job waiting for it
  (frames of all sessions) as one batch. The model stage, the bottleneck, runs at normal
  CPU priority and the others below it, so it waits less for a core.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transforms.base import DelayedStage, FrameJob, Stage, Transform
from transforms.meters import LatencyMeter, MovingAverage, RateMeter
from transforms.params import StyleParams
from transforms.priority import lower_this_thread_priority
from transforms.similarity import SimilarityFilter, SimilarityState

logger = logging.getLogger(__name__)

ADMIT_EARLY_S = 0.002  # admit this much before the just-in-time moment: absorbs jitter
ERROR_LOG_INTERVAL_S = 5.0  # a failing stage logs its traceback at most this often

ResultCallback = Callable[[FrameJob], None]
ErrorCallback = Callable[[str], None]


@dataclass(eq=False)
class EngineSession:
    """One stream's place in the engine: its input slot, params and counters.

    `on_result` and `on_error` are called from engine threads.
    """

    id: str
    params: StyleParams
    on_result: ResultCallback
    on_error: ErrorCallback
    frames_in: int = 0
    frames_dropped: int = 0
    frames_out: int = 0
    frames_skipped: int = 0
    errors: int = 0
    last_error: str | None = None
    closed: bool = False
    output_rate: RateMeter = field(default_factory=RateMeter)
    latency: LatencyMeter = field(default_factory=LatencyMeter)
    similarity: SimilarityState = field(default_factory=SimilarityState)
    last_output: Any = None
    carry: dict[str, Any] = field(default_factory=dict)  # what a transform keeps between frames
    _pending: deque[tuple[Any, float]] = field(default_factory=deque)
    _inflight: int = 0
    _queued: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "fps": round(self.output_rate.rate(), 2),
            "latency_ms": _rounded(self.latency.median()),
            "latency_p95_ms": _rounded(self.latency.percentile(0.95)),
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "dropped": self.frames_dropped,
            "skipped": self.frames_skipped,
            "errors": self.errors,
            "last_error": self.last_error,
        }


@dataclass
class _StageState:
    stage: Stage
    wakeup: threading.Condition
    queue: deque[FrameJob] = field(default_factory=deque)
    busy_until: float = 0.0
    duration: MovingAverage = field(default_factory=MovingAverage)
    batches: int = 0
    jobs: int = 0
    errors: int = 0
    last_error_log: float = float("-inf")


class FrameEngine:
    """Runs `transform` for every open session; start() before use, stop() at the end."""

    def __init__(
        self,
        transform: Transform,
        *,
        max_batch: int = 8,
        delay_ms: float = 0.0,
        max_inflight: int | None = None,
        frames_per_batch: int = 1,
        similarity: SimilarityFilter | None = None,
    ) -> None:
        """`frames_per_batch` consecutive camera frames of a session enter together (the
        `batch` setting): more throughput per model call, one batch more latency.
        `similarity` lets near-identical camera frames skip every stage."""
        self.transform = transform
        stages = transform.stages()
        if delay_ms > 0:
            stages = [
                DelayedStage(stage, delay_ms / 1000.0) if stage.name == transform.model_stage else stage
                for stage in stages
            ]
        self._lock = threading.Lock()
        self._stages = [_StageState(stage, threading.Condition(self._lock)) for stage in stages]
        self.frames_per_batch = frames_per_batch
        self._max_batch = max(max_batch, frames_per_batch)
        self._max_inflight = (max_inflight or len(stages)) * frames_per_batch
        self._sessions: dict[str, EngineSession] = {}
        self._turn = 0
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self.output_rate = RateMeter()
        self._similarity = similarity
        self.totals = {"frames_in": 0, "frames_dropped": 0, "frames_out": 0, "frames_skipped": 0, "errors": 0}

    def start(self) -> None:
        for index, state in enumerate(self._stages):
            thread = threading.Thread(
                target=self._run_stage, args=(index,), name=f"stylecam-{state.stage.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop all stage threads; safe to call more than once."""
        with self._lock:
            self._stopping = True
            for state in self._stages:
                state.wakeup.notify_all()
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def open_session(
        self, session_id: str, params: StyleParams, on_result: ResultCallback, on_error: ErrorCallback
    ) -> EngineSession:
        session = EngineSession(session_id, params, on_result, on_error)
        with self._lock:
            self._sessions[session_id] = session
        return session

    def close_session(self, session: EngineSession) -> None:
        """Forget the session and its queued frames; safe to call more than once."""
        with self._lock:
            if session.closed:
                return
            session.closed = True
            session._pending.clear()
            self._sessions.pop(session.id, None)
            for state in self._stages:
                kept = [job for job in state.queue if job.session is not session]
                state.queue.clear()
                state.queue.extend(kept)

    def submit(self, session: EngineSession, frame: Any, received_at: float | None = None) -> None:
        """Offer a camera frame; it replaces the session's frame not yet admitted."""
        received_at = time.monotonic() if received_at is None else received_at
        with self._lock:
            if session.closed:
                return
            session.frames_in += 1
            self.totals["frames_in"] += 1
            if len(session._pending) == self.frames_per_batch:
                session._pending.popleft()
                session.frames_dropped += 1
                self.totals["frames_dropped"] += 1
            session._pending.append((frame, received_at))
            self._stages[0].wakeup.notify()

    @property
    def session_count(self) -> int:
        with self._lock:
            return len(self._sessions)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            stages = {
                state.stage.name: {
                    "ms": round(state.duration.value * 1000.0, 2),
                    "batches": state.batches,
                    "frames": state.jobs,
                    "errors": state.errors,
                }
                for state in self._stages
            }
            totals = dict(self.totals)
        memory = self.transform.device_memory_bytes()
        return {
            "transform": self.transform.name,
            "fps": round(self.output_rate.rate(), 2),
            "stages": stages,
            "device_memory_mb": None if memory is None else round(memory / 2**20, 1),
            **totals,
        }

    def _run_stage(self, index: int) -> None:
        state = self._stages[index]
        if state.stage.name != self.transform.model_stage:
            lower_this_thread_priority()
        try:
            state.stage.open_thread()
            while True:
                jobs = self._next_batch(index)
                if jobs is None:
                    return
                self._process(index, jobs)
        except Exception:
            logger.exception("stage %s stopped by an unexpected error", state.stage.name)
            raise
        finally:
            logger.debug("stage %s exited", state.stage.name)

    def _next_batch(self, index: int) -> list[FrameJob] | None:
        state = self._stages[index]
        with self._lock:
            while not self._stopping:
                jobs = self._admit() if index == 0 else self._dequeue(index)
                if jobs:
                    state.busy_until = time.monotonic() + state.duration.value
                    for next_state in self._stages[index + 1 :]:
                        next_state.wakeup.notify()
                    return jobs
                state.wakeup.wait(timeout=self._admission_wait() if index == 0 else None)
            return None

    def _dequeue(self, index: int) -> list[FrameJob]:
        queue = self._stages[index].queue
        jobs = [queue.popleft() for _ in range(min(self._max_batch, len(queue)))]
        for job in jobs:
            job.session._queued -= 1
        if jobs:
            self._stages[0].wakeup.notify()
        return jobs

    def _admit(self) -> list[FrameJob]:
        """Jobs from the sessions whose newest frame may enter now (round robin)."""
        if self._admission_wait() != 0.0:
            return []
        sessions = list(self._sessions.values())
        self._turn = (self._turn + 1) % len(sessions)
        jobs: list[FrameJob] = []
        for session in sessions[self._turn :] + sessions[: self._turn]:
            if len(jobs) + self.frames_per_batch > self._max_batch:
                break
            if not self._admissible(session):
                continue
            while session._pending:
                frame, received_at = session._pending.popleft()
                session._inflight += 1
                jobs.append(FrameJob(session, received_at, session.params, frame))
        return jobs

    def _admission_wait(self) -> float | None:
        """Seconds until a frame admitted now would wait for no busy stage; None: nothing to admit.

        A stage is free at busy_until, one batch later if jobs already wait for it; a frame
        admitted now reaches stage i after the typical durations of the stages before it.
        """
        if not any(self._admissible(session) for session in self._sessions.values()):
            return None
        now = time.monotonic()
        ready_at = now
        travel = 0.0
        for state in self._stages:
            free_at = max(state.busy_until, now)
            if state.queue:
                free_at += state.duration.value
            ready_at = max(ready_at, free_at - travel)
            travel += state.duration.value
        wait = ready_at - now - ADMIT_EARLY_S
        return wait if wait > 0 else 0.0

    def _admissible(self, session: EngineSession) -> bool:
        """Its frames are ready, none of its frames is queued inside, and it is under its in-flight cap."""
        return (
            len(session._pending) == self.frames_per_batch
            and not session._queued
            and session._inflight + self.frames_per_batch <= self._max_inflight
        )

    def _process(self, index: int, jobs: list[FrameJob]) -> None:
        state = self._stages[index]
        started = time.monotonic()
        try:
            if index == 0 and self._similarity is not None:
                for job in jobs:
                    changing = self.transform.changing(job.session, job.params)
                    job.repeat = self._similarity.is_repeat(job.session.similarity, job.data, job.params, changing)
            work = [job for job in jobs if not job.repeat]
            if work:
                state.stage.process(work)
        except Exception as exc:
            self._fail(state, jobs, exc)
            return
        finished = time.monotonic()
        last = index == len(self._stages) - 1
        with self._lock:
            if work:
                state.duration.add(finished - started)
                state.batches += 1
                state.jobs += len(work)
            state.busy_until = finished
            if not last:
                live = [job for job in jobs if not job.session.closed]
                for job in live:
                    job.session._queued += 1
                self._stages[index + 1].queue.extend(live)
                self._stages[index + 1].wakeup.notify()
                for job in jobs:
                    if job.session.closed:
                        job.session._inflight -= 1
            else:
                for job in jobs:
                    job.session._inflight -= 1
            self._stages[0].wakeup.notify()
        if last:
            self._deliver(jobs, finished)

    def _deliver(self, jobs: list[FrameJob], now: float) -> None:
        for job in jobs:
            session = job.session
            if session.closed:
                continue
            if job.repeat:
                if session.last_output is None:
                    continue
                job.data = session.last_output
                session.frames_skipped += 1
                self.totals["frames_skipped"] += 1
            session.last_output = job.data
            session.frames_out += 1
            self.totals["frames_out"] += 1
            session.output_rate.tick(now)
            session.latency.add(now - job.received_at)
            self.output_rate.tick(now)
            session.on_result(job)

    def _fail(self, state: _StageState, jobs: list[FrameJob], exc: Exception) -> None:
        """A failed batch is dropped, counted and reported; the stage goes on."""
        message = f"{state.stage.name} failed: {type(exc).__name__}: {exc}"
        now = time.monotonic()
        with self._lock:
            state.errors += 1
            state.busy_until = now
            log_traceback = now - state.last_error_log >= ERROR_LOG_INTERVAL_S
            if log_traceback:
                state.last_error_log = now
            for job in jobs:
                job.session._inflight -= 1
                job.session.errors += 1
                self.totals["errors"] += 1
                job.session.last_error = message
            self._stages[0].wakeup.notify()
        if log_traceback:
            logger.error("%s (dropping %d frame(s))", message, len(jobs), exc_info=exc)
        for session in {job.session for job in jobs if not job.session.closed}:
            session.on_error(message)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
