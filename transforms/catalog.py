"""The transforms a server can run, by the name given in settings."""

from __future__ import annotations

import logging
from collections.abc import Callable

from settings import Settings
from transforms.base import Transform
from transforms.engine import FrameEngine
from transforms.filters import FILTERS, FilterTransform
from transforms.host import TransformLoadError
from transforms.similarity import SimilarityFilter

logger = logging.getLogger(__name__)


def _filter_factory(name: str) -> Callable[[Settings], Transform]:
    def build(settings: Settings) -> Transform:
        return FilterTransform(name, FILTERS[name], settings.width, settings.height)

    return build


def build_diffusion(settings: Settings) -> Transform:
    """Load the model (minutes on a first download) and wrap it as a transform."""
    # Imported here: torch and diffusers take seconds to import, and --help, a settings
    # error or a filter transform should not wait for them.
    from models.accelerators import Accelerators, accelerate, share_cpu_threads
    from models.loading import ModelLoadError, load_model
    from models.stream import LcmStream
    from transforms.diffusion import DiffusionTransform

    try:
        model = load_model(settings.model, settings.vae, settings.lora, settings.device, settings.dtype)
    except ModelLoadError as exc:
        raise TransformLoadError(str(exc)) from exc
    accelerate(
        model,
        Accelerators(channels_last=settings.channels_last, compile=settings.compile, stable_fast=settings.stable_fast),
    )
    stream = LcmStream(model, cuda_graphs=settings.cuda_graphs)
    transform = DiffusionTransform(stream, settings.width, settings.height, stream_batch=settings.stream_batch)
    if model.device.type == "cpu":
        share_cpu_threads(len(transform.stages()), settings.cpu_threads)
    logger.info("warming up the model")
    transform.warm_up()
    return transform


TRANSFORMS: dict[str, Callable[[Settings], Transform]] = {
    "diffusion": build_diffusion,
    **{name: _filter_factory(name) for name in FILTERS},
}


def build_engine(settings: Settings) -> FrameEngine:
    """The configured transform inside a frame engine (not started yet)."""
    transform = TRANSFORMS[settings.transform](settings)
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
