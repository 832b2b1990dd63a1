"""Small thread-safe meters for the figures the server reports (fps, latency, stage times)."""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque

RATE_WINDOW_S = 2.0  # long enough to smooth jitter, short enough to follow a prompt change
LATENCY_SAMPLES = 120  # about four seconds of frames at 30 fps
EMA_WEIGHT = 0.2  # follows a change of speed within ~10 samples


class RateMeter:
    """Events per second over the last RATE_WINDOW_S seconds."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self._window_s = window_s
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._times.append(now)
            self._forget(now)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._forget(now)
            if len(self._times) < 2:
                return 0.0
            span = max(now - self._times[0], 1e-6)
            return len(self._times) / max(span, self._window_s / 2)

    def _forget(self, now: float) -> None:
        while self._times and now - self._times[0] > self._window_s:
            self._times.popleft()


class LatencyMeter:
    """Percentiles of the last LATENCY_SAMPLES durations, in milliseconds."""

    def __init__(self, samples: int = LATENCY_SAMPLES) -> None:
        self._values: deque[float] = deque(maxlen=samples)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._values.append(seconds * 1000.0)

    def percentile(self, fraction: float) -> float | None:
        with self._lock:
            values = sorted(self._values)
        if not values:
            return None
        return values[min(len(values) - 1, int(fraction * len(values)))]

    def median(self) -> float | None:
        with self._lock:
            return statistics.median(self._values) if self._values else None


class MovingAverage:
    """Exponential moving average; the engine paces admissions with it."""

    def __init__(self, weight: float = EMA_WEIGHT) -> None:
        self._weight = weight
        self.value = 0.0
        self.count = 0

    def add(self, sample: float) -> None:
        self.value = sample if self.count == 0 else self.value + self._weight * (sample - self.value)
        self.count += 1
