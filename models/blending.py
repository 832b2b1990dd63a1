"""Blending two frame conditions: how a params change eases in instead of jumping.

Text states and guidance move linearly; the fixed noise moves along the great circle between
the old seed's and the new one's (slerp), so it stays noise of the same scale the whole way: a
straight line between two independent Gaussian draws passes through a weaker, blurrier one.
"""

from __future__ import annotations

import torch

from models import devices
from models.stream import FrameCondition

PARALLEL_COSINE = 0.9995  # nearer than this, slerp is a straight line (and sin(angle) ~ 0)


def blend(start: FrameCondition, end: FrameCondition, progress: float) -> FrameCondition:
    """The condition `progress` (0..1) of the way from `start` to `end`. Both must use classic
    guidance or both not (a second UNet pass cannot be half there)."""
    if progress <= 0.0:
        return start
    if progress >= 1.0 or start is end:
        return end
    if start.classic != end.classic:
        raise ValueError("a blend is between two classic-guidance conditions or two without")
    devices.keep_until_used([tensor for tensor in (*_tensors(start), *_tensors(end)) if tensor is not None])
    return FrameCondition(
        prompt=torch.lerp(start.prompt, end.prompt, progress),
        negative=_lerp_optional(start.negative, end.negative, progress),
        guidance=_lerp_optional(start.guidance, end.guidance, progress),
        noise=slerp(start.noise, end.noise, progress),
    )


def slerp(start: torch.Tensor, end: torch.Tensor, progress: float) -> torch.Tensor:
    """Spherical interpolation of each row (one noise draw per step) of two (N, ...) tensors."""
    a, b = start.flatten(1).float(), end.flatten(1).float()
    cosine = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
    angle = torch.arccos(cosine.clamp(-1.0, 1.0))
    sine = torch.sin(angle)
    nearly_parallel = cosine.abs() > PARALLEL_COSINE
    start_weight = torch.where(nearly_parallel, 1.0 - progress, torch.sin((1.0 - progress) * angle) / sine)
    end_weight = torch.where(nearly_parallel, progress, torch.sin(progress * angle) / sine)
    mixed = start_weight[:, None] * a + end_weight[:, None] * b
    return mixed.view_as(start).to(start.dtype)


def _lerp_optional(start: torch.Tensor | None, end: torch.Tensor | None, progress: float) -> torch.Tensor | None:
    if start is None or end is None:
        return end
    return torch.lerp(start, end, progress)


def _tensors(condition: FrameCondition) -> tuple[torch.Tensor | None, ...]:
    return condition.prompt, condition.negative, condition.guidance, condition.noise
