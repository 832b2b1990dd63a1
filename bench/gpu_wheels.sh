#!/usr/bin/env bash
# The Python wheels the GPU machine (device kind nvidia-h200) lacks for the server and
# bench/gpu_check.py, downloaded into .whl/ (ignored through the git dir's info/exclude, also
# from a worktree) for the device tool to carry: run(carry=[".whl"], timeout_s=420,
# command="<bench/gpu_check.py's DEVICE_COMMAND>").
#
# That machine runs Python 3.12 on x86-64 (manylinux), reaches no network, and already holds
# aiohttp, numpy, opencv-python-headless, pillow, prometheus-client, safetensors,
# huggingface-hub (1.33), transformers (5.17), peft, torch (2.11+cu130), psutil, zipp,
# filelock, regex, requests and more (/work/.library/device/KINDS.md). What it lacks is named
# below with whatever each one needs (its Requires-Dist) that it lacks too: pip downloads with
# --no-deps, so nothing comes unasked, one version of each (two would stop the install). The
# versions are the project venv's, the ones the CPU dry run used. typing-extensions is there,
# but pydantic-core needs >= 4.16, newer than the image may have. The script then checks every
# wheel's needs against the wheels and, where this workplace has it, KINDS.md's package list.
#
#   bench/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
    # WebRTC: aiortc and its needs
    aiortc==1.16.0 aioice==0.13.0 av==18.1.0 pylibsrtp==1.0.0 pyee==13.0.1 google-crc32c==1.9.0
    ifaddr==0.2.0 dnspython==2.9.2 pyopenssl==26.4.0 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12
    # the model: diffusers and its needs; compel (prompt weighting, models/prompts.py: needs
    # diffusers, pyparsing, torch and transformers, the last three on the machine)
    diffusers==0.42.1 importlib-metadata==10.2.0 lazy-importer==0.1.0 compel==2.5.1
    # settings and the protocol: pydantic, pydantic-settings and their needs
    pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 annotated-types==0.8.0
    typing-inspection==0.4.5 typing-extensions==4.16.0 python-dotenv==1.2.4
)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_17_x86_64
    manylinux2014_x86_64 manylinux1_x86_64)
KINDS=/work/.library/device/KINDS.md

EXCLUDE=$(git rev-parse --git-path info/exclude) # .git/info/exclude, also from a worktree
mkdir -p "$(dirname "$EXCLUDE")"
touch "$EXCLUDE"
grep -qxF '/.whl/' "$EXCLUDE" || echo '/.whl/' >>"$EXCLUDE"
rm -rf .whl
mkdir .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]/#/--platform=}" --dest .whl "${WHEELS[@]}" 2> >(grep -v "is ignored: it is neither" >&2)

PYTHON=python3
[ -x .venv/bin/python ] && PYTHON=.venv/bin/python
"$PYTHON" - "$KINDS" <<'EOF'
"""Each wheel's needs (Requires-Dist, for CPython 3.12 on Linux, no extras): in the wheels or on the machine."""
import re
import sys
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


kinds = Path(sys.argv[1])
there = set()
if kinds.is_file():
    text = kinds.read_text()
    listed = text[text.index("## Python packages already there") :].split("Packages:", 1)[1].split("\n")[0]
    there = {canonical(name.strip(" .")) for name in listed.split(",")}
environment = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
               "platform_python_implementation": "CPython", "implementation_name": "cpython", "sys_platform": "linux",
               "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}
wheels = sorted(Path(".whl").glob("*.whl"))
names = {canonical(wheel.name.split("-")[0]) for wheel in wheels}
problems = []
for wheel in wheels:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = Requirement(line.split(":", 1)[1].strip())
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = canonical(requirement.name)
        if name not in names and name not in there:
            problems.append(f"{wheel.name} needs {requirement}: neither a wheel here nor on the machine")
total = sum(wheel.stat().st_size for wheel in wheels)
for wheel in wheels:
    print(f"{wheel.stat().st_size / 2**20:8.2f} MiB  {wheel.name}")
print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB in .whl/" + ("" if there else f" ({sys.argv[1]} not found: needs unchecked)"))
for problem in problems:
    print("MISSING:", problem)
sys.exit(1 if problems else 0)
EOF
