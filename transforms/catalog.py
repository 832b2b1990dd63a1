"""The transforms a server can run, by the name given in settings."""

from __future__ import annotations

import logging
from collections.abc import Callable

from settings import Settings
from transforms.base import Transform
from transforms.engine import FrameEngine
from transforms.filters import FILTERS, FilterTransform
from transforms.host import TransformLoadError, Warn
from transforms.similarity import SimilarityFilter

logger = logging.getLogger(__name__)

SLOW_ON_CPU = (
    "Running on the CPU: a full-size model takes seconds per frame here. For a live picture run stylecam "
    "on an NVIDIA GPU, or choose --transform cartoon (OpenCV filters, no model) or --model tiny (the "
    "diffusion code path with a tiny test model: fast, but noise, not art)."
)


def _filter_factory(name: str) -> Callable[[Settings, Warn], Transform]:
    def build(settings: Settings, warn: Warn) -> Transform:
        return FilterTransform(
            name, FILTERS[name], settings.width, settings.height, keep_aspect=settings.aspect == "camera"
        )

    return build


def build_diffusion(settings: Settings, warn: Warn) -> Transform:
    """Load the model (minutes on a first download) and wrap it as a transform."""
    # Imported here: torch and diffusers take seconds to import, and --help, a settings
    # error or a filter transform should not wait for them.
    from models.accelerators import Accelerators, accelerate, share_cpu_threads
    from models.devices import unusable_gpu
    from models.loading import TINY_MODELS, ModelLoadError, load_model, resolve_device
    from models.stream import LcmStream
    from transforms.diffusion import DiffusionTransform

    try:
        on_cpu = resolve_device(settings.device).type == "cpu"
    except ModelLoadError as exc:
        raise TransformLoadError(str(exc)) from exc
    unusable = unusable_gpu() if on_cpu and settings.device == "auto" else None
    if unusable:
        warn(f"{unusable}: running on the CPU. Install a torch built for this driver (README: Docker, TORCH).")
    if on_cpu and settings.model not in TINY_MODELS:
        warn(SLOW_ON_CPU)

    wanted = Accelerators(
        channels_last=settings.channels_last, compile=settings.compile, stable_fast=settings.stable_fast
    )
    try:
        model = load_model(
            settings.model, settings.vae, settings.lora, settings.device, settings.dtype, settings.model_file_config
        )
        accelerate(model, wanted)
    except ModelLoadError as exc:
        raise TransformLoadError(str(exc)) from exc
    stream = LcmStream(model, cuda_graphs=settings.cuda_graphs)
    transform = DiffusionTransform(
        stream,
        settings.width,
        settings.height,
        stream_batch=settings.stream_batch,
        keep_aspect=settings.aspect == "camera",
    )
    if model.device.type == "cpu":
        share_cpu_threads(len(transform.stages()), settings.cpu_threads)
    logger.info("warming up the model")
    transform.warm_up()
    return transform


TRANSFORMS: dict[str, Callable[[Settings, Warn], Transform]] = {
    "diffusion": build_diffusion,
    **{name: _filter_factory(name) for name in FILTERS},
}


def build_engine(settings: Settings, warn: Warn = logger.warning) -> FrameEngine:
    """The configured transform inside a frame engine (not started yet); `warn` hears what a
    user should know about the choice (e.g. a full-size model on a CPU)."""
    transform = TRANSFORMS[settings.transform](settings, warn)
    similarity = (
        SimilarityFilter(settings.similarity_threshold, settings.max_skips) if settings.similarity_threshold else None
    )
    return FrameEngine(
        transform,
        max_batch=settings.max_batch,
        delay_ms=settings.delay_ms,
        frames_per_batch=settings.batch,
        similarity=similarity,
    )
