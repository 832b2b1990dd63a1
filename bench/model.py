"""Time per frame: our stream loop against diffusers' img2img pipeline called once per frame.

Both get the same components, device, dtype, size, steps, strength, guidance and fixed
noise, and both go from a camera picture in host memory to a picture in host memory. The
architectures need no download: `tiny` (the test model), `sd15` (SD 1.5's UNet with an
LCM w-embedding, TAESD and CLIP ViT-L text encoder) or `sd21` (SD 2.1's, as 1-step SD-Turbo
has it), built from their configs with random weights: the real speed, not the real
pictures. Also counts the FLOPs of one frame and, given --peak-tflops, the time the hardware
allows at best. Prints a table, writes JSON.

    python -m bench.model --arch tiny
    python -m bench.model --arch sd15 --device cuda --size 512 --peak-tflops 790
    python -m bench.model --arch sd21 --device cuda --size 512 --steps 2 --strength 0.5 --peak-tflops 790
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import LCMScheduler, StableDiffusionImg2ImgPipeline
from diffusers.models.attention_processor import Attention
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from bench.results import RESULTS, write_result
from bench.sd15 import sd15_components, sd15_tokenizer
from models.accelerators import Accelerators, accelerate
from models.lcm import unet_evaluations
from models.loading import DiffusionModel, load_model, resolve_device, resolve_dtype
from models.stream import LcmStream
from models.tiny import SCHEDULER_CONFIG, TURBO_SCHEDULER_CONFIG

PROMPT = "a watercolor portrait, soft light"
SEED = 42

FrameRunner = Callable[[list[np.ndarray]], None]


def build_sd15(device: torch.device, dtype: torch.dtype, architecture: str = "sd15") -> DiffusionModel:
    """SD 1.5's architecture (as LCM-Dreamshaper-v7: with a w-embedding) with random weights,
    or SD 2.1's ("sd21", as SD-Turbo) with Euler's scheduler settings."""
    components = sd15_components(device, architecture=architecture)
    for module in components.modules():
        module.to(dtype=dtype)
    return DiffusionModel(
        unet=components.unet,
        text_encoder=components.text_encoder,
        tokenizer=sd15_tokenizer(Path(tempfile.mkdtemp(prefix="stylecam-bench-"))),
        scheduler_config=dict(TURBO_SCHEDULER_CONFIG if architecture == "sd21" else SCHEDULER_CONFIG),
        autoencoder=components.autoencoder,
        device=device,
        dtype=dtype,
        name=architecture,
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_frames(runner: FrameRunner, frames: list[np.ndarray], batch: int, count: int, warmup: int) -> float:
    """Seconds per call of `runner` on `batch` frames, after `warmup` calls."""
    for index in range(warmup):
        runner([frames[(index + k) % len(frames)] for k in range(batch)])
    started = time.perf_counter()
    for index in range(count):
        runner([frames[(index + k) % len(frames)] for k in range(batch)])
    return (time.perf_counter() - started) / count


def reference_pipeline(model: DiffusionModel) -> StableDiffusionImg2ImgPipeline:
    """diffusers' own img2img pipeline with LCMScheduler, on the model's components."""
    pipeline = StableDiffusionImg2ImgPipeline(
        vae=model.autoencoder,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=LCMScheduler.from_config(model.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def stock_pipeline(model: DiffusionModel, args: argparse.Namespace) -> FrameRunner:
    """What a user would write: the img2img pipeline, once per frame."""
    pipeline = reference_pipeline(model)

    def run(frames: list[np.ndarray]) -> None:
        generator = torch.Generator(model.device).manual_seed(SEED)
        pipeline(
            PROMPT,
            image=Image.fromarray(frames[0]),
            strength=args.strength,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            generator=generator,
        ).images[0].tobytes()

    return run


def our_loop(stream: LcmStream, args: argparse.Namespace, stream_batch: bool = False) -> FrameRunner:
    """Our stages back to back for a batch of frames (one session each)."""
    schedule = stream.schedule(args.steps, args.strength)
    condition = stream.condition(PROMPT, "", args.guidance, SEED, args.size, args.size)
    pending: dict[int, torch.Tensor] = {}

    @torch.inference_mode()
    def run(frames: list[np.ndarray]) -> None:
        latents = stream.encode(stream.to_input(np.stack(frames)))
        conditions = [condition] * len(frames)
        if stream_batch and len(schedule.steps) > 1:
            if len(frames) not in pending:
                pending[len(frames)] = stream.stream_prime(latents, schedule, conditions)
            latents, pending[len(frames)] = stream.stream_denoise(latents, pending[len(frames)], schedule, conditions)
        else:
            latents = stream.denoise(latents, schedule, conditions)
        stream.to_uint8(stream.decode(latents))

    return run


def stage_times(stream: LcmStream, frames: list[np.ndarray], args: argparse.Namespace) -> dict[str, float]:
    """Milliseconds per stage for one frame, each synchronized (eager)."""
    schedule = stream.schedule(args.steps, args.strength)
    condition = stream.condition(PROMPT, "", args.guidance, SEED, args.size, args.size)
    device = stream.model.device
    times: dict[str, list[float]] = {"prepare": [], "encode": [], "denoise": [], "decode": []}
    with torch.inference_mode():
        for index in range(args.frames // 2 + 2):
            marks = [time.perf_counter()]
            pixels = stream.to_input(frames[index % len(frames)][None])
            synchronize(device)
            marks.append(time.perf_counter())
            latents = stream.encode(pixels)
            synchronize(device)
            marks.append(time.perf_counter())
            latents = stream.denoise(latents, schedule, [condition])
            synchronize(device)
            marks.append(time.perf_counter())
            stream.to_uint8(stream.decode(latents))
            marks.append(time.perf_counter())
            if index >= 2:
                for name, start, end in zip(times, marks, marks[1:], strict=False):
                    times[name].append((end - start) * 1000)
    return {name: round(float(np.median(values)), 3) for name, values in times.items()}


def frame_flops(stream: LcmStream, frame: np.ndarray, args: argparse.Namespace) -> dict[str, float]:
    """FLOPs of one frame (encode, denoise, decode). torch's counter misses attention on some
    devices, so attention is counted from the shapes: 2 * B * Lq * Lk * inner for QK^T and for AV."""
    attention_flops = [0.0]

    def count_attention(module: Attention, inputs: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        hidden: torch.Tensor = kwargs["hidden_states"] if "hidden_states" in kwargs else inputs[0]
        context = kwargs.get("encoder_hidden_states")
        batch, queries = hidden.shape[0], hidden.shape[-1] * hidden.shape[-2] if hidden.dim() == 4 else hidden.shape[1]
        keys = context.shape[1] if context is not None else queries
        attention_flops[0] += 4.0 * batch * queries * keys * module.to_q.out_features

    hooks = [
        module.register_forward_hook(count_attention, with_kwargs=True)
        for module in (*stream.model.unet.modules(), *stream.model.autoencoder.modules())
        if isinstance(module, Attention)
    ]
    schedule = stream.schedule(args.steps, args.strength)
    condition = stream.condition(PROMPT, "", args.guidance, SEED, args.size, args.size)
    counter = FlopCounterMode(display=False)
    try:
        with torch.inference_mode(), counter:
            latents = stream.encode(stream.to_input(frame[None]))
            latents = stream.denoise(latents, schedule, [condition])
            stream.decode(latents)
    finally:
        for hook in hooks:
            hook.remove()
    counted = counter.get_flop_counts().get("Global", {})
    attention_ops = sum(flops for op, flops in counted.items() if "attention" in str(op))
    other = counter.get_total_flops() - attention_ops
    return {"conv_linear_gflop": other / 1e9, "attention_gflop": attention_flops[0] / 1e9}


def camera_frames(size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(8)]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.arch == "tiny":
        model = load_model("tiny", "", None, str(device), args.dtype)
    else:
        model = build_sd15(device, dtype, args.arch)
    accelerate(model, Accelerators(channels_last=args.channels_last, compile=args.compile))
    frames = camera_frames(args.size)
    eager, graphed = LcmStream(model), LcmStream(model, cuda_graphs=True)
    fastest = graphed if device.type == "cuda" else eager
    suffix = " + CUDA graphs" if device.type == "cuda" else ""
    runners: dict[str, tuple[str, Callable[[], FrameRunner], int]] = {
        "diffusers img2img pipeline": ("stock", lambda: stock_pipeline(model, args), 1),
        "ours": ("eager", lambda: our_loop(eager, args), 1),
        "ours + CUDA graphs": ("graphs", lambda: our_loop(graphed, args), 1),
        f"ours{suffix} + stream batch": ("stream", lambda: our_loop(fastest, args, stream_batch=True), 1),
        f"ours{suffix}, {args.sessions} sessions batched": (
            "sessions",
            lambda: our_loop(fastest, args),
            args.sessions,
        ),
        f"ours{suffix} + stream batch, {args.sessions} sessions": (
            "stream-sessions",
            lambda: our_loop(fastest, args, stream_batch=True),
            args.sessions,
        ),
    }
    wanted = set(args.modes.split(","))
    if device.type != "cuda":
        wanted.discard("graphs")
    rows: list[dict[str, Any]] = []
    for name, (mode, make_runner, batch) in runners.items():
        if mode not in wanted:
            continue
        runner = make_runner()
        seconds = time_frames(runner, frames, batch, args.frames, args.warmup)
        rows.append({"mode": name, "ms_per_call": seconds * 1000, "frames_per_call": batch, "fps": batch / seconds})
        logging.info("%s: %.2f ms per call", name, seconds * 1000)
    stock = [row["ms_per_call"] for row in rows if row["mode"] == "diffusers img2img pipeline"]
    for row in rows:
        row["speedup_vs_stock"] = stock[0] * row["frames_per_call"] / row["ms_per_call"] if stock else None
    result: dict[str, Any] = {
        "benchmark": "model",
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(device),
        "command": "python -m bench.model " + " ".join(args.argv),
        "arch": args.arch,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "size": args.size,
        "steps": args.steps,
        "strength": args.strength,
        "unet_evaluations_per_frame": unet_evaluations(args.steps, args.strength),
        "guidance_scale": args.guidance,
        "compiled": args.compile,
        "stage_ms": stage_times(eager, frames, args),
        "stage_ms_fastest": stage_times(fastest, frames, args),
        "rows": rows,
    }
    if not args.no_flops:
        flops = frame_flops(eager, frames[0], args)
        total = flops["conv_linear_gflop"] + flops["attention_gflop"]
        result["flops_per_frame"] = {**flops, "total_gflop": total}
        if args.peak_tflops:
            floor_ms = total / args.peak_tflops  # GFLOP / (TFLOP/s) = ms
            best = min(row["ms_per_call"] / row["frames_per_call"] for row in rows)
            result["floor"] = {
                "peak_tflops": args.peak_tflops,
                "floor_ms": floor_ms,
                "best_ms": best,
                "times_floor": best / floor_ms,
            }
    return result


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return f"{cpu} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def print_table(result: dict[str, Any]) -> None:
    print(
        f"{result['command']}\n{result['machine']}; {result['arch']} {result['size']}px {result['dtype']}, "
        f"{result['steps']} steps, strength {result['strength']} "
        f"({result['unet_evaluations_per_frame']} UNet evaluations per frame)"
    )
    print(f"{'mode':<48} {'ms/call':>9} {'frames':>6} {'fps':>8} {'vs stock':>8}")
    for row in result["rows"]:
        speedup = f"{row['speedup_vs_stock']:>7.2f}x" if row["speedup_vs_stock"] else ""
        print(f"{row['mode']:<48} {row['ms_per_call']:>9.2f} {row['frames_per_call']:>6} {row['fps']:>8.1f} {speedup}")
    print("stage ms, one frame, eager:", result["stage_ms"], "fastest:", result["stage_ms_fastest"])
    if "flops_per_frame" in result:
        flops = result["flops_per_frame"]
        print(
            f"GFLOP per frame: {flops['total_gflop']:.1f} "
            f"(conv/linear {flops['conv_linear_gflop']:.1f}, attention {flops['attention_gflop']:.1f})"
        )
    if "floor" in result:
        floor = result["floor"]
        print(
            f"floor at {floor['peak_tflops']} TFLOP/s: {floor['floor_ms']:.2f} ms/frame; "
            f"best here {floor['best_ms']:.2f} ms/frame = {floor['times_floor']:.1f}x the floor"
        )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.model", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--arch",
        choices=["tiny", "sd15", "sd21"],
        default="tiny",
        help="model architecture: tiny, sd15 (LCM-Dreamshaper's), sd21 (SD-Turbo's: --steps 2 --strength 0.5)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"])
    parser.add_argument("--size", type=int, default=512, help="square picture size in px (default 512)")
    parser.add_argument("--steps", type=int, default=4, help="LCM steps (default 4)")
    parser.add_argument("--strength", type=float, default=0.5, help="img2img strength (default 0.5)")
    parser.add_argument("--guidance", type=float, default=1.0, help="guidance scale (default 1.0)")
    parser.add_argument("--sessions", type=int, default=4, help="frames batched across sessions (default 4)")
    parser.add_argument("--frames", type=int, default=30, help="timed calls per mode (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls first (default 5)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last layout (the server default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet and TAESD first")
    parser.add_argument(
        "--modes",
        default="stock,eager,graphs,stream,sessions,stream-sessions",
        help="comma-separated subset of: stock, eager, graphs, stream, sessions, stream-sessions",
    )
    parser.add_argument("--peak-tflops", type=float, help="the device's dense fp16 peak, for the FLOP floor")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    parser.add_argument("--json", type=Path, help="result file (default bench/results/model-ARCH-DEVICE.json)")
    args = parser.parse_args(argv)
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    result = measure(args)
    print_table(result)
    path = args.json or RESULTS / f"model-{args.arch}-{result['device'].split(':')[0]}.json"
    write_result(path, result)


if __name__ == "__main__":
    main()
