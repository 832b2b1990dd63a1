"""The transforms a server can run, by the name given in settings."""

from __future__ import annotations

from collections.abc import Callable

from settings import Settings
from transforms.base import Transform
from transforms.engine import FrameEngine
from transforms.filters import FILTERS, FilterTransform


def _filter_factory(name: str) -> Callable[[Settings], Transform]:
    def build(settings: Settings) -> Transform:
        return FilterTransform(name, FILTERS[name], settings.width, settings.height)

    return build


TRANSFORMS: dict[str, Callable[[Settings], Transform]] = {name: _filter_factory(name) for name in FILTERS}


def build_engine(settings: Settings) -> FrameEngine:
    """The configured transform inside a frame engine (not started yet)."""
    transform = TRANSFORMS[settings.transform](settings)
    return FrameEngine(transform, max_batch=settings.max_batch, delay_ms=settings.delay_ms)
