"""`python server.py --check`: a user's first test of a setup, and the image build's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.serve import ROOT
from models import devices
from transforms.engine import FrameEngine
from transforms.filters import FilterTransform, ImageFilter
from transforms.selfcheck import CheckReport, run_check


def check(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "server.py", "--check", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **env},
    )


def test_check_runs_frames_through_the_model_and_reports_figures() -> None:
    result = check("--model", "tiny", "--width", "64", "--height", "64")
    assert result.returncode == 0, result.stdout + result.stderr
    report = result.stdout
    assert report.startswith("stylecam check: ok")
    for line in ("transform    diffusion", "device       cpu", "model        tiny", "about 64x64 pixels"):
        assert line in report
    frames = next(line for line in report.splitlines() if line.strip().startswith("frames"))
    assert " 30 in " in frames and "fps" in frames
    stages = next(line for line in report.splitlines() if "stage times" in line)
    for stage in ("prepare", "encode", "denoise", "decode"):
        assert stage in stages


def test_check_fails_with_the_reason_when_the_model_cannot_load() -> None:
    result = check("--model", "someone/not-in-the-cache", HF_HUB_OFFLINE="1")
    assert result.returncode != 0
    assert "stylecam check: FAILED" in result.stderr and "someone/not-in-the-cache" in result.stderr
    assert "seconds per frame" in result.stderr, "a full-size model on the CPU is called slow at start"
    assert "Traceback" not in result.stderr


def run_filter_check(image_filter: ImageFilter, warnings: list[str]) -> CheckReport:
    engine = FrameEngine(FilterTransform("test", image_filter, 64, 64))
    engine.start()
    try:
        return run_check(engine, {}, warnings)
    finally:
        engine.stop()


def test_a_model_that_gives_flat_pictures_fails_the_check() -> None:
    """NaN out of a model becomes black frames: frames come out, but there is no picture."""
    report = run_filter_check(np.zeros_like, [])
    assert report.frames > 0
    assert report.failure is not None and "flat" in report.failure


def test_what_loading_warned_of_fails_the_check() -> None:
    """`docker run --gpus all stylecam --check` with a torch the driver cannot run must not pass on the CPU."""
    working = run_filter_check(lambda image: image, [])
    assert working.failure is None, working.render()
    warned = run_filter_check(lambda image: image, ["an NVIDIA driver is loaded but PyTorch cannot use it"])
    assert warned.failure is not None and "cannot use it" in warned.failure
    assert "warning      an NVIDIA driver" in warned.render()


def test_a_driver_torch_cannot_use_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05\nGCC version: 12\n")
    monkeypatch.setattr(devices, "NVIDIA_DRIVER_VERSION", version)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = devices.unusable_gpu()
    assert reason is not None and "535.104.05" in reason and torch.__version__ in reason
    monkeypatch.setattr(devices, "NVIDIA_DRIVER_VERSION", tmp_path / "absent")
    assert devices.unusable_gpu() is None, "no driver, nothing to say"
