"""`python server.py --check`: a user's first test of a setup, and the image build's."""

from __future__ import annotations

import os
import subprocess
import sys

from bench.serve import ROOT


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
    for line in ("transform    diffusion", "device       cpu", "model        tiny", "size         64x64"):
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
