"""The LCM img2img stream loop, split into the stages of a real-time pipeline.

1. to_input: camera pixels (uint8) -> model input on the device, in [-1, 1]
2. encode:   TAESD encoder -> latents
3. denoise:  noise added at the first timestep, then per timestep one batched UNet call
             and the LCM boundary-condition update; each frame brings its own prompt
             embeddings, guidance and fixed noise
4. decode:   TAESD decoder -> pixels

Everything that does not change from frame to frame (prompt embeddings, schedule
coefficients, noise, guidance embeddings) is computed once and cached.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from models.lcm import LcmSchedule, draw_noise, guidance_embedding, lcm_schedule
from models.loading import DiffusionModel
from models.prompts import PromptEncoder

NOISE_CACHE_SIZE = 32  # (seed, size) pairs kept on the device


@dataclass(frozen=True)
class FrameCondition:
    """What one frame is denoised with: its session's prompt, guidance and noise."""

    prompt: torch.Tensor
    negative: torch.Tensor | None
    guidance_scale: float
    noise: torch.Tensor


class LcmStream:
    """The per-frame math of StableDiffusionImg2ImgPipeline + LCMScheduler, batched and cached."""

    def __init__(self, model: DiffusionModel) -> None:
        self.model = model
        self.prompts = PromptEncoder(model)
        self._schedule = lru_cache(maxsize=64)(self._compute_schedule)
        self._noise: dict[tuple[int, int, int], torch.Tensor] = {}
        self._timesteps: dict[int, torch.Tensor] = {}
        self._lock = threading.Lock()
        self._scaling = float(model.autoencoder.config.scaling_factor)

    def classic_guidance(self, guidance_scale: float) -> bool:
        """Only models without a w-embedding need a second, unconditional UNet pass."""
        return guidance_scale > 1.0 and self.model.guidance_embedding_dim is None

    def schedule(self, steps: int, strength: float) -> LcmSchedule:
        return self._schedule(steps, strength)

    def noise(self, seed: int, height: int, width: int) -> torch.Tensor:
        """The session's fixed noise for a picture of height x width, on the device."""
        key = (seed, height, width)
        with self._lock:
            noise = self._noise.get(key)
            if noise is None:
                shape = (self.model.unet.config.in_channels, *self.latent_size(height, width))
                noise = draw_noise(seed, shape).to(self.model.device, self.model.dtype)
                if len(self._noise) >= NOISE_CACHE_SIZE:
                    self._noise.pop(next(iter(self._noise)))
                self._noise[key] = noise
            return noise

    def condition(
        self, prompt: str, negative_prompt: str, guidance_scale: float, seed: int, height: int, width: int
    ) -> FrameCondition:
        negative = self.prompts(negative_prompt) if self.classic_guidance(guidance_scale) else None
        return FrameCondition(self.prompts(prompt), negative, guidance_scale, self.noise(seed, height, width))

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        factor = self.model.latent_downscale
        return height // factor, width // factor

    def to_input(self, images: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, H, W) in [-1, 1]; the bytes travel, the floats are made there."""
        pixels = torch.from_numpy(images)
        if self.model.device.type == "cuda":
            pixels = pixels.pin_memory().to(self.model.device, non_blocking=True)
        pixels = pixels.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        return (2.0 * pixels - 1.0).to(self.model.dtype)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._scaling * self.model.autoencoder.encode(pixels).latents

    def denoise(
        self, latents: torch.Tensor, schedule: LcmSchedule, conditions: Sequence[FrameCondition]
    ) -> torch.Tensor:
        """Run the schedule on a batch; with classic guidance all conditions share one scale."""
        classic = conditions[0].negative is not None
        text = torch.cat([condition.prompt for condition in conditions])
        if classic:
            text = torch.cat([torch.cat([c.negative for c in conditions if c.negative is not None]), text])
        timestep_cond = self._guidance_condition(conditions)
        noise = torch.stack([condition.noise for condition in conditions], dim=1)
        latents = schedule.noise_sqrt_alpha * latents + schedule.noise_sqrt_beta * noise[0]
        last = len(schedule.steps) - 1
        for index, step in enumerate(schedule.steps):
            model_input = torch.cat([latents, latents]) if classic else latents
            eps = self.model.unet(
                model_input,
                self._timestep(step.timestep),
                encoder_hidden_states=text,
                timestep_cond=timestep_cond,
                return_dict=False,
            )[0]
            if classic:
                unconditional, conditional = eps.chunk(2)
                eps = unconditional + conditions[0].guidance_scale * (conditional - unconditional)
            original = (latents - step.sqrt_beta * eps) / step.sqrt_alpha
            denoised = step.c_out * original + step.c_skip * latents
            if index == last:
                latents = denoised
            else:
                latents = step.sqrt_alpha_next * denoised + step.sqrt_beta_next * noise[index + 1]
        return latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> (B, 3, H, W) pictures in [0, 1] on the device."""
        pixels = self.model.autoencoder.decode(latents / self._scaling).sample
        return (pixels / 2 + 0.5).clamp(0, 1)

    @staticmethod
    def to_uint8(pictures: torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8 on the host, rounded as diffusers rounds."""
        return pictures.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    def _compute_schedule(self, steps: int, strength: float) -> LcmSchedule:
        return lcm_schedule(self.model.scheduler_config, steps, strength)

    def _timestep(self, timestep: int) -> torch.Tensor:
        tensor = self._timesteps.get(timestep)
        if tensor is None:
            tensor = torch.tensor(timestep, dtype=torch.long, device=self.model.device)
            self._timesteps[timestep] = tensor
        return tensor

    def _guidance_condition(self, conditions: Sequence[FrameCondition]) -> torch.Tensor | None:
        dim = self.model.guidance_embedding_dim
        if dim is None:
            return None
        scales = [condition.guidance_scale for condition in conditions]
        return guidance_embedding(scales, dim).to(self.model.device, self.model.dtype)
