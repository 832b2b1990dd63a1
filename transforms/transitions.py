"""A session's look over time: a params change eases in over `transition_ms` instead of jumping.

The look leads from what the session showed when the change came (the middle of an earlier
transition, if one was under way) to the new params' conditioning, along a smoothstep curve
(no sudden start or stop). Guidance turned on or off on a model without a w-embedding eases
too (the unguided side runs as classic guidance at scale 1 for the while). The schedule
(steps, strength) cannot be half there: it changes at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from models.blending import blend
from models.stream import FrameCondition
from transforms.params import StyleParams

LOOK = "look"  # the session's Look, in EngineSession.carry

Lengthen = Callable[[FrameCondition, int], FrameCondition]  # pads text states to a length (LcmStream.lengthen)


@dataclass(frozen=True)
class Look:
    params: StyleParams  # the params the look leads to
    before: StyleParams | None  # the params of the look it took over from (frames still in flight)
    start: FrameCondition
    end: FrameCondition
    started_at: float  # seconds, on the transform's clock
    duration_s: float
    lengthen: Lengthen
    from_rest: bool = True  # False when it took over a moving look: it leaves at speed

    def progress(self, now: float) -> float:
        """0 at the start, 1 when done: smoothstep from rest, or ease-out when it took over a
        look still moving (a slider dragged sends a change every few frames: the picture keeps
        going instead of stopping at each one)."""
        if self.duration_s <= 0.0:
            return 1.0
        linear = min(max((now - self.started_at) / self.duration_s, 0.0), 1.0)
        if not self.from_rest:
            return 1.0 - (1.0 - linear) ** 2
        return linear * linear * (3.0 - 2.0 * linear)

    def at(self, now: float) -> FrameCondition:
        """The condition at `now`: the start, the end, or a blend of the two (prompts of
        different lengths are padded to the longer for it)."""
        progress = self.progress(now)
        if progress >= 1.0:
            return self.end
        start, end = self.start, self.end
        if start.classic != end.classic:
            start, end = _both_classic(start, end)
        tokens = max(start.tokens, end.tokens)
        return blend(self.lengthen(start, tokens), self.lengthen(end, tokens), progress)


def next_look(
    current: Look | None, params: StyleParams, end: FrameCondition, now: float, lengthen: Lengthen
) -> Look:
    """The look that eases from what `current` shows at `now` to `end` over params.transition_ms
    (at once when nothing in the conditioning changed, or when the two cannot be blended)."""
    start = current.at(now) if current is not None else end
    unchanged = all(a is b for a, b in zip(_parts(start), _parts(end), strict=True))
    if unchanged or start.noise.shape != end.noise.shape:
        start = end
    before = current.params if current is not None else None
    moving = current is not None and 0.0 < current.progress(now) < 1.0
    return Look(params, before, start, end, now, params.transition_ms / 1000.0, lengthen, from_rest=not moving)


def settled(params: StyleParams, condition: FrameCondition, lengthen: Lengthen) -> Look:
    """A look that shows `condition` and changes no more."""
    return Look(params, None, condition, condition, 0.0, 0.0, lengthen)


def _both_classic(start: FrameCondition, end: FrameCondition) -> tuple[FrameCondition, FrameCondition]:
    """Guidance turned on or off (a model without a w-embedding crossing scale 1): the unguided
    side as classic guidance at scale 1, which gives the same picture (u + 1 (c - u) = c) with
    the other side's negative prompt, so the scale can ease; one pass again once the look ends."""
    guided = start if start.classic else end
    scale, negative = guided.guidance, guided.negative
    assert scale is not None and negative is not None, "classic guidance has its scale and negative"

    def classic(condition: FrameCondition) -> FrameCondition:
        if condition.classic:
            return condition
        return dataclasses.replace(condition, negative=negative, guidance=torch.ones_like(scale))

    return classic(start), classic(end)


def _parts(condition: FrameCondition) -> tuple[object, ...]:
    return condition.prompt, condition.negative, condition.guidance, condition.noise
