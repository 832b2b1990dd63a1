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

import dataclasses
import itertools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial

import numpy as np
import torch

from models import devices
from models.cache import BoundedCache
from models.graphs import GraphCache
from models.lcm import LcmSchedule, draw_noise, guidance_embedding, lcm_schedule
from models.loading import DiffusionModel
from models.prompts import PromptEncoder, WeightedPrompts

logger = logging.getLogger(__name__)

NOISE_CACHE_SIZE = 32  # (seed, size) pairs kept on the device
GUIDANCE_CACHE_SIZE = 64  # guidance scales kept on the device (a slider moves in 0.1 steps)
GRAPHED_STAGES = ("encode", "denoise", "decode")  # one graph cache each: each runs in its own thread
STEP_COEFFICIENTS = ("sqrt_alpha", "sqrt_beta", "c_out", "c_skip", "sqrt_alpha_next", "sqrt_beta_next")


@dataclass(frozen=True)
class FrameCondition:
    """What one frame is denoised with: its session's prompt, guidance and noise, on the device.

    `guidance` is the w-embedding row (1, dim) of an LCM-distilled model, or the scale as a
    (1, 1, 1, 1) tensor for classic guidance (then `negative` is set too), or None.
    """

    prompt: torch.Tensor
    negative: torch.Tensor | None
    guidance: torch.Tensor | None
    noise: torch.Tensor

    @property
    def classic(self) -> bool:
        return self.negative is not None

    @property
    def tokens(self) -> int:
        """Text states' length: 77 per chunk of the longer of the prompt and the negative."""
        return max(self.prompt.shape[1], 0 if self.negative is None else self.negative.shape[1])


class LcmStream:
    """The per-frame math of StableDiffusionImg2ImgPipeline + LCMScheduler, batched and cached."""

    def __init__(self, model: DiffusionModel, cuda_graphs: bool = False) -> None:
        """`cuda_graphs` replays each stage as a CUDA graph per shape and schedule (CUDA only)."""
        self.model = model
        graphed = cuda_graphs and model.device.type == "cuda"
        if cuda_graphs and not graphed:
            logger.info("cuda_graphs: skipped on %s (CUDA only)", model.device)
        self.graphs = {stage: GraphCache(enabled=graphed) for stage in GRAPHED_STAGES}
        self.prompts = PromptEncoder(model)
        self._schedule = lru_cache(maxsize=64)(self._compute_schedule)
        self._noise: BoundedCache[tuple[int, int, int], torch.Tensor] = BoundedCache(NOISE_CACHE_SIZE)
        self._guidance: BoundedCache[float, torch.Tensor | None] = BoundedCache(GUIDANCE_CACHE_SIZE)
        self._schedule_inputs = lru_cache(maxsize=None)(self._make_schedule_inputs)
        self._scaling = float(model.autoencoder.config.scaling_factor)

    def classic_guidance(self, guidance_scale: float) -> bool:
        """Only models without a w-embedding need a second, unconditional UNet pass."""
        return guidance_scale > 1.0 and self.model.guidance_embedding_dim is None

    def schedule(self, steps: int, strength: float) -> LcmSchedule:
        return self._schedule(steps, strength)

    def noise(self, seed: int, height: int, width: int) -> torch.Tensor:
        """The session's fixed noise for a picture of height x width, on the device."""

        def draw() -> torch.Tensor:
            shape = (self.model.unet.config.in_channels, *self.latent_size(height, width))
            noise = draw_noise(seed, shape).to(self.model.device, self.model.dtype)
            devices.finish_work(self.model.device)  # ready before another thread can find it
            return noise

        return self._noise.get((seed, height, width), draw)

    def guidance(self, guidance_scale: float) -> torch.Tensor | None:
        """The scale as the UNet takes it, made once per scale: a w-embedding row for LCM-distilled
        models, a (1, 1, 1, 1) factor for classic guidance, None when there is nothing to guide."""

        def make() -> torch.Tensor | None:
            dim = self.model.guidance_embedding_dim
            device, dtype = self.model.device, self.model.dtype
            tensor = None
            if dim is not None:
                tensor = guidance_embedding([guidance_scale], dim).to(device, dtype)
            elif self.classic_guidance(guidance_scale):
                tensor = torch.full((1, 1, 1, 1), guidance_scale, dtype=dtype, device=device)
            devices.finish_work(device)  # ready before another thread can find it
            return tensor

        return self._guidance.get(guidance_scale, make)

    def condition(
        self,
        prompt: str | WeightedPrompts,
        negative_prompt: str,
        guidance_scale: float,
        seed: int,
        height: int,
        width: int,
    ) -> FrameCondition:
        """A frame's conditioning: `prompt` is one prompt or weighted prompts to blend."""
        states = self.prompts(prompt) if isinstance(prompt, str) else self.prompts.blend(prompt)
        negative = self.prompts(negative_prompt) if self.classic_guidance(guidance_scale) else None
        condition = FrameCondition(states, negative, self.guidance(guidance_scale), self.noise(seed, height, width))
        return self.lengthen(condition, condition.tokens)

    def lengthen(self, condition: FrameCondition, tokens: int) -> FrameCondition:
        """`condition` with its text states (and negatives) padded to `tokens` (compel's way:
        chunks of the empty prompt): a prompt and its negative, or two looks blended, must be
        of one length. Padding changes the picture a little: frames are never padded to batch."""
        negative = condition.negative
        if condition.prompt.shape[1] == tokens and (negative is None or negative.shape[1] == tokens):
            return condition
        negative = None if negative is None else self.prompts.pad(negative, tokens)
        return dataclasses.replace(condition, prompt=self.prompts.pad(condition.prompt, tokens), negative=negative)

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
        return self.graphs["encode"].run(tuple(pixels.shape), self._encode, pixels)

    def denoise(
        self, latents: torch.Tensor, schedule: LcmSchedule, conditions: Sequence[FrameCondition]
    ) -> torch.Tensor:
        """Run the whole schedule on a batch (all with classic guidance, or none)."""
        batch = Conditioning.of(conditions)
        count = len(schedule.steps)
        key = ("denoise", tuple(latents.shape), count, batch.classic, batch.tokens)
        run = partial(self._run_schedule, count, batch.classic)
        return self.graphs["denoise"].run(key, run, latents, *self.schedule_inputs(schedule), *batch.tensors())

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
        count = len(schedule.steps)
        batch = Conditioning.of(conditions, repeat=count)
        key = ("stream", tuple(latents.shape), count, batch.classic, batch.tokens)
        run = partial(self._run_stream_step, count, batch.classic)
        both = self.graphs["denoise"].run(
            key, run, latents, pending, *self.schedule_inputs(schedule), *batch.tensors()
        )
        return both[:, 0], both[:, 1:]

    def stream_prime(
        self, latents: torch.Tensor, schedule: LcmSchedule, conditions: Sequence[FrameCondition]
    ) -> torch.Tensor:
        """The first `pending` of a stream: the frame itself after 1..n-1 steps (run once)."""
        count = len(schedule.steps)
        batch = Conditioning.of(conditions)
        states = self._schedule_states(count, batch.classic, latents, *self.schedule_inputs(schedule), *batch.tensors())
        return torch.stack(list(itertools.islice(states, count - 1)), dim=1)

    def schedule_inputs(self, schedule: LcmSchedule) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The schedule as tensors on the device, made once: graph inputs, so schedules of the
        same length (any steps and strength) replay one graph. See _make_schedule_inputs."""
        return self._schedule_inputs(schedule)

    def _make_schedule_inputs(self, schedule: LcmSchedule) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(timesteps (n,), per step its coefficients (n, 6) in STEP_COEFFICIENTS' order, the
        noise coefficients of the entry (2,)). A schedule's are never freed: there are at most
        36 schedules (steps 1..8, evaluations 1..steps), and a graph may hold their addresses."""
        device, dtype = self.model.device, self.model.dtype
        timesteps = torch.tensor(schedule.timesteps, dtype=torch.long, device=device)
        rows = [[getattr(step, name) for name in STEP_COEFFICIENTS] for step in schedule.steps]
        coefficients = torch.tensor(rows, dtype=dtype, device=device)
        entry = torch.tensor([schedule.noise_sqrt_alpha, schedule.noise_sqrt_beta], dtype=dtype, device=device)
        devices.finish_work(device)
        return timesteps, coefficients, entry

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._scaling * self.model.autoencoder.encode(pixels).latents

    def _unet(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        classic: bool,
        text: torch.Tensor,
        guidance: torch.Tensor | None,
    ) -> torch.Tensor:
        """The noise prediction; classic guidance adds the unconditional pass and blends the two
        with each frame's scale, LCM-distilled models take `guidance` as their w-embedding."""
        if not classic:
            return self.model.unet(
                latents, timestep, encoder_hidden_states=text, timestep_cond=guidance, return_dict=False
            )[0]
        assert guidance is not None, "classic guidance needs its scales"
        if timestep.dim() > 0:
            timestep = torch.cat([timestep, timestep])
        eps = self.model.unet(torch.cat([latents, latents]), timestep, encoder_hidden_states=text, return_dict=False)[0]
        unconditional, conditional = eps.chunk(2)
        return unconditional + guidance * (conditional - unconditional)

    def _schedule_states(
        self,
        count: int,
        classic: bool,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        coefficients: torch.Tensor,
        entry: torch.Tensor,
        text: torch.Tensor,
        noise: torch.Tensor,
        guidance: torch.Tensor | None = None,
    ) -> Iterator[torch.Tensor]:
        """Noise at the first timestep, then per timestep the UNet and scheduler.step's update;
        yields the latents after each step (renoised for the next, the last one denoised)."""
        latents = entry[0] * latents + entry[1] * noise[0]
        for index in range(count):
            sqrt_alpha, sqrt_beta, c_out, c_skip, alpha_next, beta_next = coefficients[index].unbind()
            eps = self._unet(latents, timesteps[index], classic, text, guidance)
            denoised = lcm_update(latents, eps, sqrt_alpha, sqrt_beta, c_out, c_skip)
            if index == count - 1:
                yield denoised
            else:
                latents = alpha_next * denoised + beta_next * noise[index + 1]
                yield latents

    def _run_schedule(self, count: int, classic: bool, *tensors: torch.Tensor) -> torch.Tensor:
        *_, finished = self._schedule_states(count, classic, *tensors)
        return finished

    def _run_stream_step(
        self,
        count: int,
        classic: bool,
        latents: torch.Tensor,
        pending: torch.Tensor,
        timesteps: torch.Tensor,
        coefficients: torch.Tensor,
        entry: torch.Tensor,
        text: torch.Tensor,
        noise: torch.Tensor,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One stream-batch call; returns (B, n, C, h, w): the finished latents, then the new pending."""
        sessions = latents.shape[0]
        entering = entry[0] * latents + entry[1] * noise[0]
        samples = torch.cat([entering[:, None], pending], dim=1).flatten(0, 1)
        # Sample s * n + i is session s at step i: each step's coefficient, repeated per session.
        sqrt_alpha, sqrt_beta, c_out, c_skip, alpha_next, beta_next = (
            column.view(-1, 1, 1, 1).repeat(sessions, 1, 1, 1) for column in coefficients.unbind(dim=1)
        )
        eps = self._unet(samples, timesteps.repeat(sessions), classic, text, guidance)
        denoised = lcm_update(samples, eps, sqrt_alpha, sqrt_beta, c_out, c_skip).unflatten(0, (sessions, count))
        alpha_next = alpha_next.unflatten(0, (sessions, count))[:, :-1]
        beta_next = beta_next.unflatten(0, (sessions, count))[:, :-1]
        advanced = alpha_next * denoised[:, :-1] + beta_next * noise[1:count].transpose(0, 1)
        return torch.cat([denoised[:, -1:], advanced], dim=1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> (B, 3, H, W) pictures in [0, 1] on the device."""
        return self.graphs["decode"].run(tuple(latents.shape), self._decode, latents)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        pixels = self.model.autoencoder.decode(latents / self._scaling).sample
        return (pixels / 2 + 0.5).clamp(0, 1)

    @staticmethod
    def to_uint8(pictures: torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8 on the host, rounded as diffusers rounds."""
        return devices.to_host(pictures.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous())

    def _compute_schedule(self, steps: int, strength: float) -> LcmSchedule:
        return lcm_schedule(self.model.scheduler_config, steps, strength)


@dataclass(frozen=True)
class Conditioning:
    """A batch's conditioning as the UNet takes it: text states (negatives first for classic
    guidance), noise (MAX_STEPS, B, C, h, w) and each frame's guidance (see FrameCondition)."""

    text: torch.Tensor
    noise: torch.Tensor
    guidance: torch.Tensor | None
    classic: bool

    @property
    def tokens(self) -> int:
        return int(self.text.shape[1])

    @classmethod
    def of(cls, conditions: Sequence[FrameCondition], repeat: int = 1) -> Conditioning:
        """`repeat` > 1 gives each frame's text and guidance to that many consecutive samples."""
        classic = conditions[0].classic
        if any(condition.classic != classic for condition in conditions):
            raise ValueError("a batch is all classic guidance or none of it")
        if len({condition.tokens for condition in conditions}) > 1:
            raise ValueError("a batch's text states are of one length (padding changes cross-attention)")
        cached = [c.prompt for c in conditions] + [c.noise for c in conditions]
        text = torch.cat([condition.prompt for condition in conditions])
        if classic:
            negatives = [c.negative for c in conditions if c.negative is not None]
            cached += negatives
            text = torch.cat([torch.cat(negatives), text])
        guidance = None
        rows = [c.guidance for c in conditions if c.guidance is not None]
        if rows:
            cached += rows
            guidance = torch.cat(rows).repeat_interleave(repeat, dim=0)
        devices.keep_until_used(cached)
        return cls(
            text=text.repeat_interleave(repeat, dim=0),
            noise=torch.stack([condition.noise for condition in conditions], dim=1),
            guidance=guidance,
            classic=classic,
        )

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The graph inputs, in the order the runners take them."""
        extra = (self.guidance,) if self.guidance is not None else ()
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
