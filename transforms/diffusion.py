"""The diffusion transform: LCM img2img with TAESD as five engine stages.

prepare (camera frame -> pixels on the device) -> encode (TAESD) -> denoise (UNet, LCM
steps, one batched call per step for all frames waiting, each with its own session's
prompt, guidance and noise) -> decode (TAESD -> RGB on the host) -> finish (VideoFrame).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch
from av import VideoFrame

from models import devices
from models.lcm import LcmSchedule
from models.stream import FrameCondition, LcmStream
from transforms.base import FrameJob, Stage, Transform
from transforms.engine import EngineSession
from transforms.finish import FinishStage
from transforms.frames import PictureSize, frame_to_rgb
from transforms.params import StyleParams
from transforms.transitions import LOOK, Look, next_look, settled

GroupKey = tuple[LcmSchedule, bool, int, tuple[int, ...]]
With = TypeVar("With")
PENDING = "stream_batch_pending"  # a session's partly denoised latents (stream batch)
SIZE = "picture_size"  # (width, height) a session's camera pictures are processed at
USUAL_CAMERA = (640, 480)  # what a session's size is taken to be before its first frame


class DiffusionStage(Stage):
    """A stage that runs torch work without autograd bookkeeping, in its own thread, on its
    own CUDA stream; a call returns when its device work is done (models/devices.py)."""

    def __init__(self, stream: LcmStream) -> None:
        self.stream = stream

    def open_thread(self) -> None:
        devices.bind_thread(self.stream.model.device)
        devices.use_own_stream(self.stream.model.device)

    def process(self, jobs: Sequence[FrameJob]) -> None:
        # Held until the device is done with them (also when run fails): freed sooner, their
        # memory could be given to another stage's stream while this stage's kernels read it.
        inputs = [job.data for job in jobs]
        try:
            with torch.inference_mode():
                self.run(jobs)
        finally:
            devices.finish_work(self.stream.model.device)
            del inputs

    def run(self, jobs: Sequence[FrameJob]) -> None:
        raise NotImplementedError


class PrepareStage(DiffusionStage):
    """Camera frames -> pixels on the device, each at its camera's processing size; the size is
    remembered per session (SIZE) for the params it prepares next."""

    name = "prepare"

    def __init__(self, stream: LcmStream, size: PictureSize) -> None:
        super().__init__(stream)
        self._size = size

    def run(self, jobs: Sequence[FrameJob]) -> None:
        for job in jobs:
            job.data = frame_to_rgb(job.data, self._size)
            job.session.carry[SIZE] = (job.data.shape[1], job.data.shape[0])
        for group in by_shape(jobs):
            pixels = self.stream.to_input(np.stack([job.data for job in group]))
            for job, tensor in zip(group, pixels.split(1), strict=True):
                job.data = tensor


class EncodeStage(DiffusionStage):
    name = "encode"

    def run(self, jobs: Sequence[FrameJob]) -> None:
        for group in by_shape(jobs):
            latents = self.stream.encode(torch.cat([job.data for job in group]))
            for job, latent in zip(group, latents.split(1), strict=True):
                job.data = latent


class DenoiseStage(DiffusionStage):
    """Frames that share a schedule (and, with classic guidance, a scale) share UNet calls."""

    name = "denoise"

    def __init__(self, stream: LcmStream, stream_batch: bool, clock: Callable[[], float]) -> None:
        super().__init__(stream)
        self._stream_batch = stream_batch
        self._clock = clock

    def run(self, jobs: Sequence[FrameJob]) -> None:
        groups: dict[GroupKey, list[tuple[FrameJob, FrameCondition]]] = defaultdict(list)
        for job in jobs:
            frame_condition = self._condition(job)
            groups[self._group_key(job, frame_condition)].append((job, frame_condition))
        for (schedule, *_), group in groups.items():
            if self._stream_batch and len(schedule.steps) > 1:
                for round_ in one_frame_per_session(group):
                    self._stream_step(round_, schedule)
            else:
                self._denoise(group, schedule)

    def _condition(self, job: FrameJob) -> FrameCondition:
        """The session's look now, when the frame carries the params the look leads to and is of
        its size; a frame admitted before the change went live shows where the look started;
        any other (a new camera's size) gets its own params' look."""
        look: Look | None = job.session.carry.get(LOOK)
        latent_size = tuple(job.data.shape[-2:])
        if look is not None and tuple(look.end.noise.shape[-2:]) == latent_size:
            if look.params == job.params:
                return look.at(self._clock())
            if look.before == job.params:
                return look.start  # what was on screen when the change came, not the old target
        factor = self.stream.model.latent_downscale
        return condition(self.stream, job.params, latent_size[1] * factor, latent_size[0] * factor)

    def _denoise(self, group: list[tuple[FrameJob, FrameCondition]], schedule: LcmSchedule) -> None:
        jobs, conditions = zip(*group, strict=True)
        latents = self.stream.denoise(torch.cat([job.data for job in jobs]), schedule, conditions)
        for job, latent in zip(jobs, latents.split(1), strict=True):
            job.data = latent

    def _stream_step(self, group: list[tuple[FrameJob, FrameCondition]], schedule: LcmSchedule) -> None:
        """Stream batch: each session's partly denoised frames advance together with the new one.
        A session's first frame (or first after a params change or a new camera size) primes
        its pipeline."""
        jobs, conditions = zip(*group, strict=True)
        latents = torch.cat([job.data for job in jobs])
        pending = []
        for job, latent, frame_condition in zip(jobs, latents.split(1), conditions, strict=True):
            carried = job.session.carry.get(PENDING)
            if carried is None or carried[0] != job.params or carried[1].shape[-2:] != latent.shape[-2:]:
                carried = (job.params, self.stream.stream_prime(latent, schedule, [frame_condition]))
            pending.append(carried[1])
        finished, advanced = self.stream.stream_denoise(latents, torch.cat(pending), schedule, conditions)
        for job, latent, carried_on in zip(jobs, finished.split(1), advanced.split(1), strict=True):
            job.data = latent
            job.session.carry[PENDING] = (job.params, carried_on)

    def _group_key(self, job: FrameJob, condition: FrameCondition) -> GroupKey:
        """Equal schedules (strengths that round to the same steps) share UNet calls; classic
        guidance's two passes cannot share a call with one pass, nor text states of different
        lengths (padding would change the shorter one's cross-attention), nor pictures of
        different sizes."""
        schedule = self.stream.schedule(job.params.steps, job.params.strength)
        return schedule, condition.classic, condition.tokens, tuple(job.data.shape)


class DecodeStage(DiffusionStage):
    """TAESD -> RGB arrays on the host (the finish stage makes VideoFrames of them)."""

    name = "decode"

    def run(self, jobs: Sequence[FrameJob]) -> None:
        for group in by_shape(jobs):
            pictures = self.stream.to_uint8(self.stream.decode(torch.cat([job.data for job in group])))
            for job, picture in zip(group, pictures, strict=True):
                job.data = picture


def by_shape(jobs: Sequence[FrameJob]) -> list[list[FrameJob]]:
    """The jobs in groups of one data shape (sessions' cameras differ in aspect), in order."""
    groups: dict[tuple[int, ...], list[FrameJob]] = defaultdict(list)
    for job in jobs:
        groups[tuple(job.data.shape)].append(job)
    return list(groups.values())


def one_frame_per_session(group: list[tuple[FrameJob, With]]) -> list[list[tuple[FrameJob, With]]]:
    """Rounds in which each session has at most one frame (with what goes with it), in order: a
    session's frames in one stream-batch call would all advance from the same carried latents."""
    rounds: list[list[tuple[FrameJob, With]]] = []
    seen: dict[str, int] = {}
    for job, extra in group:
        index = seen.get(job.session.id, -1) + 1
        seen[job.session.id] = index
        if index == len(rounds):
            rounds.append([])
        rounds[index].append((job, extra))
    return rounds


def condition(stream: LcmStream, params: StyleParams, width: int, height: int) -> FrameCondition:
    """A frame's conditioning; every part comes from the stream's caches once prepared."""
    prompts = [(params.prompt, params.prompt_weight), *((extra.text, extra.weight) for extra in params.prompts)]
    return stream.condition(prompts, params.negative_prompt, params.guidance_scale, params.seed, height, width)


class DiffusionTransform(Transform):
    name = "diffusion"
    model_stage = DenoiseStage.name

    def __init__(
        self,
        stream: LcmStream,
        width: int,
        height: int,
        stream_batch: bool = False,
        clock: Callable[[], float] = time.monotonic,
        keep_aspect: bool = False,
    ) -> None:
        """`keep_aspect`: each camera's aspect at about width x height pixels (PictureSize);
        `clock` times the transitions between looks (tests give their own)."""
        self.stream = stream
        self.device = str(stream.model.device)
        self._size = PictureSize(width, height, keep_aspect)
        self._stream_batch = stream_batch
        self._clock = clock

    def stages(self) -> list[Stage]:
        return [
            PrepareStage(self.stream, self._size),
            EncodeStage(self.stream),
            DenoiseStage(self.stream, stream_batch=self._stream_batch, clock=self._clock),
            DecodeStage(self.stream),
            FinishStage(),
        ]

    def device_memory_bytes(self) -> int | None:
        device = self.stream.model.device
        return int(torch.cuda.memory_reserved(device)) if device.type == "cuda" else None

    def details(self) -> dict[str, str]:
        model = self.stream.model
        device = str(model.device)
        if model.device.type == "cuda":
            device += f" ({torch.cuda.get_device_name(model.device)})"
        graphs = "on" if self.stream.graphs["denoise"].enabled else "off"
        return {
            "device": device,
            "model": model.name,
            "precision": str(model.dtype).removeprefix("torch."),
            "size": self._size.describe(),
            "cuda graphs": graphs,
            "stream batch": "on" if self._stream_batch else "off",
        }

    def _current_look(self, session: EngineSession, end: FrameCondition) -> Look | None:
        """The session's look, remade at the size of `end` when its camera turned out to be of
        another size than the look was made for (its frames have shown its params' own look)."""
        look: Look | None = session.carry.get(LOOK)
        if look is None or look.end.noise.shape == end.noise.shape:
            return look
        height, width = (side * self.stream.model.latent_downscale for side in end.noise.shape[-2:])
        return settled(look.params, condition(self.stream, look.params, width, height), self.stream.lengthen)

    def changing(self, session: EngineSession, params: StyleParams) -> bool:
        look: Look | None = session.carry.get(LOOK)
        return look is not None and look.params == params and look.progress(self._clock()) < 1.0

    def prepare_params(self, session: EngineSession, params: StyleParams) -> None:
        """Encode the prompt, draw the noise and compute the schedule before the params go live,
        in the calling worker thread, so the stream never stalls on a prompt change; then the
        session's look starts easing towards them."""
        device = self.stream.model.device
        devices.bind_thread(device)
        with torch.inference_mode():
            self.stream.schedule_inputs(self.stream.schedule(params.steps, params.strength))
            width, height = session.carry.get(SIZE) or self._size.for_camera(*USUAL_CAMERA)
            end = condition(self.stream, params, width, height)
            look = next_look(self._current_look(session, end), params, end, self._clock(), self.stream.lengthen)
        devices.finish_work(device)
        session.carry[LOOK] = look

    def warm_up(self) -> None:
        """Two frames of the usual camera through every stage before any session: kernels load
        and the CUDA graphs for one session with the default params are captured while nothing
        else runs (a key captures on its second call)."""
        params = StyleParams()
        session = EngineSession("warm-up", params, on_result=lambda job: None, on_error=lambda message: None)
        self.prepare_params(session, params)
        width, height = USUAL_CAMERA
        gray = VideoFrame.from_ndarray(np.full((height, width, 3), 128, np.uint8), format="rgb24")
        stages = self.stages()
        for _ in range(2):
            jobs = [FrameJob(session, 0.0, params, gray)]
            for stage in stages:
                stage.process(jobs)
