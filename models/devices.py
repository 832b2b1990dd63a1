"""Threads and the device: CUDA's current device and current stream are per thread.

A thread that never calls set_device works on device 0: with `--device cuda:1` its side
streams, graph captures and device-less tensors would land on the wrong GPU. Every thread
that touches the model binds itself first (the loader, each stage thread, the workers that
prepare params). Each stage thread also gets a CUDA stream of its own, so the stages' GPU
work can overlap, and it waits for that work at the end of a call: the stage's time is then
the GPU's time (admission pacing and /stats depend on it), and what it hands over is ready.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

NVIDIA_DRIVER_VERSION = Path("/proc/driver/nvidia/version")  # present where the NVIDIA driver is loaded


def bind_thread(device: torch.device) -> None:
    """Make `device` the calling thread's current CUDA device; nothing to do elsewhere."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


def use_own_stream(device: torch.device) -> None:
    """Give the calling thread a CUDA stream of its own on `device` (after bind_thread)."""
    if device.type == "cuda":
        torch.cuda.set_stream(torch.cuda.Stream(device))


def finish_work(device: torch.device) -> None:
    """Wait until the work this thread queued on `device` has run, asleep: by default CUDA
    spins a core while a thread waits (one context, several cores), a core the event loop's
    VP8 work and the other stages need."""
    if device.type == "cuda":
        done = torch.cuda.Event(blocking=True)
        done.record(torch.cuda.current_stream(device))
        done.synchronize()


def keep_until_used(tensors: list[torch.Tensor]) -> None:
    """Tensors another thread may free (cache entries) while this thread's stream still reads
    them: the allocator then waits for this stream before it reuses their memory."""
    for tensor in tensors:
        if tensor.device.type == "cuda":
            tensor.record_stream(torch.cuda.current_stream(tensor.device))


def to_host(tensor: torch.Tensor) -> np.ndarray:
    """A device tensor as a host array: through pinned memory, waiting asleep (finish_work)."""
    if tensor.device.type != "cuda":
        return tensor.numpy()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    finish_work(tensor.device)
    return host.numpy()


def unusable_gpu() -> str | None:
    """Why PyTorch runs on the CPU although an NVIDIA driver is loaded (a CPU build of torch, or
    one built for a newer CUDA than the driver), or None when there is no such GPU."""
    if torch.cuda.is_available() or not NVIDIA_DRIVER_VERSION.is_file():
        return None
    driver = NVIDIA_DRIVER_VERSION.read_text().splitlines()[0].strip()
    built_for = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA: a CPU build"
    return f"an NVIDIA driver is loaded ({driver}) but PyTorch {torch.__version__} ({built_for}) cannot use it"
