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

import itertools
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial

import numpy as np
import torch

from models.graphs import GraphCache
from models.lcm import LcmSchedule, draw_noise, guidance_embedding, lcm_schedule
from models.loading import DiffusionModel
from models.prompts import PromptEncoder

logger = logging.getLogger(__name__)

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

    def __init__(self, model: DiffusionModel, cuda_graphs: bool = False) -> None:
        """`cuda_graphs` replays each stage as a CUDA graph per shape and schedule (CUDA only)."""
        self.model = model
        self._graphs = GraphCache(enabled=cuda_graphs and model.device.type == "cuda")
        if cuda_graphs and not self._graphs.enabled:
            logger.info("cuda_graphs: skipped on %s (CUDA only)", model.device)
        self.prompts = PromptEncoder(model)
        self._schedule = lru_cache(maxsize=64)(self._compute_schedule)
        self._noise: dict[tuple[int, int, int], torch.Tensor] = {}
        self._timesteps: dict[int, torch.Tensor] = {}
        self._columns: dict[LcmSchedule, dict[str, torch.Tensor]] = {}
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
        return self._graphs.run(("encode", tuple(pixels.shape)), self._encode, pixels)

    def denoise(
        self, latents: torch.Tensor, schedule: LcmSchedule, conditions: Sequence[FrameCondition]
    ) -> torch.Tensor:
        """Run the whole schedule on a batch (with classic guidance all share one scale)."""
        batch = Conditioning.of(self, conditions)
        key = ("denoise", tuple(latents.shape), schedule, batch.classic_scale)
        run = partial(self._run_schedule, schedule, batch.classic_scale)
        return self._graphs.run(key, run, latents, *batch.tensors())

    def stream_denoise(
        self,
        latents: torch.Tensor,
        pending: torch.Tensor,
        schedule: LcmSchedule,
        conditions: Sequence[FrameCondition],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stream batch: the new frame takes the first step while the n-1 frames before it,
        partly denoised (`pending`, (B, n-1, C, h, w)), each take their next one, all in one
        UNet call of n samples per session. A frame costs one UNet call at n-step quality and
        comes out n-1 calls later. Returns (finished latents, new pending)."""
        batch = Conditioning.of(self, conditions, repeat=len(schedule.steps))
        key = ("stream", tuple(latents.shape), schedule, batch.classic_scale)
        run = partial(self._run_stream_step, schedule, batch.classic_scale)
        both = self._graphs.run(key, run, latents, pending, *batch.tensors())
        return both[:, 0], both[:, 1:]

    def stream_prime(
        self, latents: torch.Tensor, schedule: LcmSchedule, conditions: Sequence[FrameCondition]
    ) -> torch.Tensor:
        """The first `pending` of a stream: the frame itself after 1..n-1 steps (run once)."""
        batch = Conditioning.of(self, conditions)
        states = self._schedule_states(schedule, batch.classic_scale, latents, *batch.tensors())
        return torch.stack(list(itertools.islice(states, len(schedule.steps) - 1)), dim=1)

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._scaling * self.model.autoencoder.encode(pixels).latents

    def _unet(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        classic_scale: float | None,
        text: torch.Tensor,
        timestep_cond: torch.Tensor | None,
    ) -> torch.Tensor:
        """The noise prediction, with classic guidance's unconditional pass where asked."""
        if classic_scale is not None:
            latents, timestep = torch.cat([latents, latents]), torch.cat([timestep.view(-1)] * 2)
        eps = self.model.unet(
            latents, timestep, encoder_hidden_states=text, timestep_cond=timestep_cond, return_dict=False
        )[0]
        if classic_scale is None:
            return eps
        unconditional, conditional = eps.chunk(2)
        return unconditional + classic_scale * (conditional - unconditional)

    def _schedule_states(
        self,
        schedule: LcmSchedule,
        classic_scale: float | None,
        latents: torch.Tensor,
        text: torch.Tensor,
        noise: torch.Tensor,
        timestep_cond: torch.Tensor | None = None,
    ) -> Iterator[torch.Tensor]:
        """Noise at the first timestep, then per timestep the UNet and scheduler.step's update;
        yields the latents after each step (renoised for the next, the last one denoised)."""
        latents = schedule.noise_sqrt_alpha * latents + schedule.noise_sqrt_beta * noise[0]
        last = len(schedule.steps) - 1
        for index, step in enumerate(schedule.steps):
            eps = self._unet(latents, self._timestep(step.timestep), classic_scale, text, timestep_cond)
            denoised = lcm_update(latents, eps, step.sqrt_alpha, step.sqrt_beta, step.c_out, step.c_skip)
            if index == last:
                yield denoised
            else:
                latents = step.sqrt_alpha_next * denoised + step.sqrt_beta_next * noise[index + 1]
                yield latents

    def _run_schedule(self, schedule: LcmSchedule, classic_scale: float | None, *tensors: torch.Tensor) -> torch.Tensor:
        *_, finished = self._schedule_states(schedule, classic_scale, *tensors)
        return finished

    def _run_stream_step(
        self,
        schedule: LcmSchedule,
        classic_scale: float | None,
        latents: torch.Tensor,
        pending: torch.Tensor,
        text: torch.Tensor,
        noise: torch.Tensor,
        timestep_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One stream-batch call; returns (B, n, C, h, w): the finished latents, then the new pending."""
        count, sessions = len(schedule.steps), latents.shape[0]
        entering = schedule.noise_sqrt_alpha * latents + schedule.noise_sqrt_beta * noise[0]
        samples = torch.cat([entering[:, None], pending], dim=1).flatten(0, 1)
        column = {name: values.repeat(sessions, 1, 1, 1) for name, values in self._step_columns(schedule).items()}
        eps = self._unet(samples, column["timestep"].flatten(), classic_scale, text, timestep_cond)
        denoised = lcm_update(
            samples, eps, column["sqrt_alpha"], column["sqrt_beta"], column["c_out"], column["c_skip"]
        ).unflatten(0, (sessions, count))
        alpha_next = column["sqrt_alpha_next"].unflatten(0, (sessions, count))[:, :-1]
        beta_next = column["sqrt_beta_next"].unflatten(0, (sessions, count))[:, :-1]
        advanced = alpha_next * denoised[:, :-1] + beta_next * noise[1:count].transpose(0, 1)
        return torch.cat([denoised[:, -1:], advanced], dim=1)

    def _step_columns(self, schedule: LcmSchedule) -> dict[str, torch.Tensor]:
        """Each step coefficient as an (n, 1, 1, 1) tensor in the model's dtype, and the timesteps."""
        columns = self._columns.get(schedule)
        if columns is None:
            device, dtype = self.model.device, self.model.dtype
            columns = {
                name: torch.tensor([getattr(step, name) for step in schedule.steps], dtype=dtype, device=device).view(
                    -1, 1, 1, 1
                )
                for name in ("sqrt_alpha", "sqrt_beta", "c_out", "c_skip", "sqrt_alpha_next", "sqrt_beta_next")
            }
            columns["timestep"] = torch.tensor(schedule.timesteps, device=device).view(-1, 1, 1, 1)
            self._columns[schedule] = columns
        return columns

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> (B, 3, H, W) pictures in [0, 1] on the device."""
        return self._graphs.run(("decode", tuple(latents.shape)), self._decode, latents)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
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


@dataclass(frozen=True)
class Conditioning:
    """A batch's conditioning as the UNet takes it: text states (negatives first for classic
    guidance), noise (MAX_STEPS, B, C, h, w) and the w-embedding of LCM-distilled models."""

    text: torch.Tensor
    noise: torch.Tensor
    timestep_cond: torch.Tensor | None
    classic_scale: float | None

    @classmethod
    def of(cls, stream: LcmStream, conditions: Sequence[FrameCondition], repeat: int = 1) -> Conditioning:
        """`repeat` > 1 gives each frame's text and w-embedding to that many consecutive samples."""
        text = torch.cat([condition.prompt for condition in conditions])
        classic = conditions[0].negative is not None
        if classic:
            text = torch.cat([torch.cat([c.negative for c in conditions if c.negative is not None]), text])
        timestep_cond = None
        dim = stream.model.guidance_embedding_dim
        if dim is not None:
            scales = [condition.guidance_scale for condition in conditions]
            timestep_cond = guidance_embedding(scales, dim).to(stream.model.device, stream.model.dtype)
            timestep_cond = timestep_cond.repeat_interleave(repeat, dim=0)
        return cls(
            text=text.repeat_interleave(repeat, dim=0),
            noise=torch.stack([condition.noise for condition in conditions], dim=1),
            timestep_cond=timestep_cond,
            classic_scale=conditions[0].guidance_scale if classic else None,
        )

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The graph inputs, in the order the runners take them."""
        extra = (self.timestep_cond,) if self.timestep_cond is not None else ()
        return (self.text, self.noise, *extra)


def lcm_update(
    latents: torch.Tensor,
    eps: torch.Tensor,
    sqrt_alpha: float | torch.Tensor,
    sqrt_beta: float | torch.Tensor,
    c_out: float | torch.Tensor,
    c_skip: float | torch.Tensor,
) -> torch.Tensor:
    """LCMScheduler.step's denoised sample for epsilon prediction: the predicted clean latents,
    blended with the input by the boundary-condition scalings."""
    original = (latents - sqrt_beta * eps) / sqrt_alpha
    return c_out * original + c_skip * latents
