"""Optional speed-ups, each behind a setting; where one cannot apply it says why and does nothing."""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass

import torch

from models.loading import DiffusionModel, ModelLoadError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Accelerators:
    channels_last: bool = True
    compile: bool = False
    stable_fast: bool = False


def accelerate(model: DiffusionModel, wanted: Accelerators) -> list[str]:
    """Apply what `wanted` asks for and the machine allows; returns the names applied.

    Raises ModelLoadError for stable-fast where it cannot run (settings.py refuses it without
    its package, or together with --compile)."""
    applied = []
    on_gpu = model.device.type == "cuda"
    if wanted.channels_last:
        # CUDA's and the CPU's (oneDNN) convolutions both prefer it: on the CPU VM the tiny
        # TAESD decodes in 12.5 instead of 20 ms at 256 px.
        for module in (model.unet, model.autoencoder):
            module.to(memory_format=torch.channels_last)
        applied.append("channels_last")
    if wanted.stable_fast:
        if not on_gpu:
            raise ModelLoadError(f"--stable-fast compiles for CUDA; on {model.device} leave it off")
        _stable_fast(model)
        applied.append("stable_fast")
    if wanted.compile:
        for module in (model.unet, model.autoencoder.encoder, model.autoencoder.decoder):
            module.compile(dynamic=False)
        applied.append("compile")
    logger.info("accelerators applied: %s", ", ".join(applied) or "none")
    return applied


def share_cpu_threads(stage_count: int, requested: int | None = None) -> None:
    """Set torch's intra-op threads for the engine's stage threads on the CPU.

    Each stage thread that runs torch ops gets its own pool of that many threads, and the
    stages run at once: torch's default (every core for each pool) oversubscribes the cores,
    and a parallel op then waits for its slowest, descheduled thread. One share of the cores
    per stage keeps them busy without that (2 cores, tiny model, engine alone: 19-24 instead
    of 17-18 fps, BENCHMARKS.md). Called before the stage threads start: they take the count then.
    """
    cores = available_cores()
    threads = requested or max(1, cores // max(1, stage_count))
    torch.set_num_threads(threads)
    logger.info("CPU: %d torch thread(s) per stage for %d stages on %d cores", threads, stage_count, cores)


def available_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _stable_fast(model: DiffusionModel) -> None:
    """stable-fast's last release predates torch 2.2: a build that does not fit the installed
    torch fails at import or at compile, which the user hears as a load error."""
    try:
        _stable_fast_compile(model)
    except Exception as exc:
        raise ModelLoadError(
            f"--stable-fast failed ({type(exc).__name__}: {exc}); it needs a stable-fast build for the installed "
            "torch. --compile is the supported alternative."
        ) from exc


def _stable_fast_compile(model: DiffusionModel) -> None:
    from sfast.compilers.diffusion_pipeline_compiler import CompilationConfig, compile_unet, compile_vae

    config = CompilationConfig.Default()
    config.enable_cuda_graph = False  # stylecam captures each stage itself (models/graphs.py)
    config.enable_xformers = importlib.util.find_spec("xformers") is not None
    config.enable_triton = importlib.util.find_spec("triton") is not None
    model.unet = compile_unet(model.unet, config)
    model.autoencoder = compile_vae(model.autoencoder, config)
