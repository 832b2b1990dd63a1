"""Prometheus metrics, read from the engine and the sessions when scraped (nothing on the hot path)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from signaling.registry import SessionRegistry
from transforms.host import EngineHost

HOST_STATUSES = ("loading", "ok", "error")


class StylecamCollector(Collector):
    def __init__(self, host: EngineHost, sessions: SessionRegistry) -> None:
        self._host = host
        self._sessions = sessions

    def collect(self) -> Iterator[Metric]:
        status = GaugeMetricFamily("stylecam_up", "1 for the transform's current state", labels=["status"])
        for name in HOST_STATUSES:
            status.add_metric([name], 1.0 if self._host.status == name else 0.0)
        yield status
        yield GaugeMetricFamily("stylecam_sessions", "open sessions", value=len(self._sessions))
        yield GaugeMetricFamily("stylecam_session_capacity", "session limit", value=self._sessions.capacity)
        engine = self._host.engine
        if engine is None:
            return
        snapshot = engine.snapshot()
        yield GaugeMetricFamily("stylecam_output_fps", "frames per second out, all sessions", value=snapshot["fps"])
        memory = engine.transform.device_memory_bytes()
        if memory is not None:
            yield GaugeMetricFamily("stylecam_device_memory_bytes", "device memory held by the model", value=memory)
        for key, help_text in (
            ("frames_in", "camera frames received"),
            ("frames_dropped", "camera frames replaced by a newer one before processing"),
            ("frames_out", "stylized frames delivered"),
            ("errors", "frames lost to a stage error"),
        ):
            yield CounterMetricFamily(f"stylecam_{key}", help_text, value=snapshot[key])
        seconds = GaugeMetricFamily(
            "stylecam_stage_seconds", "typical time of one stage call (moving average)", labels=["stage"]
        )
        batches = CounterMetricFamily("stylecam_stage_batches", "stage calls", labels=["stage"])
        frames = CounterMetricFamily("stylecam_stage_frames", "frames through a stage", labels=["stage"])
        for name, stage in snapshot["stages"].items():
            seconds.add_metric([name], stage["ms"] / 1000.0)
            batches.add_metric([name], stage["batches"])
            frames.add_metric([name], stage["frames"])
        yield from (seconds, batches, frames)


def metrics_registry(host: EngineHost, sessions: SessionRegistry) -> CollectorRegistry:
    """A registry of our own, so several apps in one process (tests) never collide."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StylecamCollector(host, sessions))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
