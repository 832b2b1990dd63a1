"""LCM img2img arithmetic, computed once per parameter change instead of once per frame.

It reproduces StableDiffusionImg2ImgPipeline with LCMScheduler: `set_timesteps(steps)`, then
int(steps * strength) UNet evaluations (at least one) from index steps - that on, noise
added at the first of them, and LCMScheduler.step's boundary-condition update after each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import LCMScheduler

MAX_STEPS = 8  # the live parameter's upper bound; noise is drawn for this many steps


@dataclass(frozen=True)
class LcmStep:
    """Coefficients of one LCMScheduler.step at `timestep`, as the scheduler computes them."""

    timestep: int
    sqrt_alpha: float
    sqrt_beta: float
    c_skip: float
    c_out: float
    sqrt_alpha_next: float
    sqrt_beta_next: float


@dataclass(frozen=True)
class LcmSchedule:
    steps: tuple[LcmStep, ...]
    noise_sqrt_alpha: float  # add_noise at the first timestep: sqrt(alpha) x + sqrt(1 - alpha) noise
    noise_sqrt_beta: float

    @property
    def timesteps(self) -> tuple[int, ...]:
        return tuple(step.timestep for step in self.steps)


def unet_evaluations(steps: int, strength: float) -> int:
    """How many UNet calls a frame costs: int(steps * strength), but never none."""
    return max(1, min(int(steps * strength), steps))


def lcm_schedule(scheduler_config: dict[str, Any], steps: int, strength: float) -> LcmSchedule:
    """The schedule for (steps, strength), from a private scheduler (schedulers keep state)."""
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be within 1..{MAX_STEPS}, got {steps}")
    scheduler = LCMScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(steps)
    full = [int(t) for t in scheduler.timesteps]
    start = steps - unet_evaluations(steps, strength)
    alphas = scheduler.alphas_cumprod
    run = []
    for index in range(start, steps):
        timestep = full[index]
        following = full[index + 1] if index + 1 < steps else timestep
        alpha, alpha_next = alphas[timestep], alphas[following]
        c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(timestep)
        run.append(
            LcmStep(
                timestep=timestep,
                sqrt_alpha=float(alpha.sqrt()),
                sqrt_beta=float((1 - alpha).sqrt()),
                c_skip=float(c_skip),
                c_out=float(c_out),
                sqrt_alpha_next=float(alpha_next.sqrt()),
                sqrt_beta_next=float((1 - alpha_next).sqrt()),
            )
        )
    first = alphas[full[start]]
    return LcmSchedule(tuple(run), float(first**0.5), float((1 - first) ** 0.5))


def draw_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Noise for one session: row 0 is added to the image latents, row i is the re-noising
    after step i. Drawn on the CPU, one latent at a time and in that order, as the pipeline
    draws from a generator, so the same seed gives the same pictures on any device."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.cat([torch.randn((1, *shape), generator=generator) for _ in range(MAX_STEPS)])


def guidance_embedding(scales: list[float], dim: int) -> torch.Tensor:
    """The w-embedding of LCM-distilled UNets, one row per guidance scale: sinusoids of
    (scale - 1) * 1000, computed as LatentConsistencyModelPipeline.get_guidance_scale_embedding."""
    w = torch.tensor([scale - 1 for scale in scales]) * 1000.0
    half = dim // 2
    exponent = torch.log(torch.tensor(10000.0)) / (half - 1)
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32) * -exponent)
    angles = w[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2 == 1:
        embedding = torch.nn.functional.pad(embedding, (0, 1))
    return embedding
