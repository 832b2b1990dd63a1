"""What a transform is to the engine: a list of stages, and per-session hooks."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from transforms.params import StyleParams

if TYPE_CHECKING:
    from transforms.engine import EngineSession


@dataclass(eq=False)
class FrameJob:
    """One camera frame on its way through the stages; each stage replaces `data`."""

    session: EngineSession
    received_at: float
    params: StyleParams
    data: Any
    repeat: bool = False  # the similarity filter found it unchanged: stages skip it, the last output goes out


class Stage(ABC):
    """One step of a transform, run by its own engine thread on batches of jobs."""

    name: str

    def open_thread(self) -> None:
        """Called once in the stage's own thread before its first batch (e.g. to bind the
        thread to the device)."""

    @abstractmethod
    def process(self, jobs: Sequence[FrameJob]) -> None:
        """Replace each job's data with this stage's result (the jobs may come from several
        sessions, each with its own params). Raising drops the whole batch."""


@dataclass
class DelayedStage(Stage):
    """A stage that takes `delay_s` longer per call: models a slower GPU in tests and benches."""

    inner: Stage
    delay_s: float
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.inner.name

    def open_thread(self) -> None:
        self.inner.open_thread()

    def process(self, jobs: Sequence[FrameJob]) -> None:
        self.inner.process(jobs)
        time.sleep(self.delay_s)


class Transform(ABC):
    """A frame transform: its stages (in order) and what it precomputes for new params.

    `model_stage` names the stage that stands for the model; `delay_ms` is added there.
    """

    name: str
    model_stage: str
    device: str = "cpu"

    @abstractmethod
    def stages(self) -> list[Stage]:
        """The stages every frame passes, first to last; the last yields an av.VideoFrame."""

    def device_memory_bytes(self) -> int | None:
        """Device memory the transform holds (CUDA's caching allocator, graph pools included);
        None where the device does not say (the CPU)."""
        return None

    def details(self) -> dict[str, str]:
        """What a user checking the setup wants to see (`server.py --check`)."""
        return {"device": self.device}

    def changing(self, session: EngineSession, params: StyleParams) -> bool:
        """True while frames made with `params` change on their own, the camera still (a
        transition under way): the similarity filter then repeats nothing."""
        return False

    def prepare_params(self, session: EngineSession, params: StyleParams) -> None:
        """Precompute what `params` need (prompt embeddings) before they go live.

        Called from a worker thread, never on the event loop; raising refuses the params.
        """
