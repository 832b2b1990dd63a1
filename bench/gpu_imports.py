"""Would bench/gpu_check.py find every package it imports on the GPU machine?

Runs the check here (arguments after -- go to it, e.g. a CPU dry run), imports the server's
modules too (its subprocess imports those), then names the distribution of every module
loaded and checks it against what the GPU machine has: the wheels in .whl/
(bench/gpu_wheels.sh) and the image's package list (/work/.library/device/KINDS.md, where
this workplace has it). Exits 1 if any is neither.

    python -m bench.gpu_imports -- --quick --arch tiny --out /tmp/gpu-check
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement

from bench.serve import ROOT

KINDS = Path("/work/.library/device/KINDS.md")
SERVER_MODULES = ("server", "signaling.app", "transforms.catalog", "transforms.diffusion", "models.loading")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def machine_packages(kinds: Path, wheels: Path) -> tuple[set[str], set[str]]:
    """(the image's packages, the carried wheels' packages)."""
    carried = {canonical(wheel.name.split("-")[0]) for wheel in wheels.glob("*.whl")}
    image = set()
    if kinds.is_file():
        text = kinds.read_text()
        listed = text[text.index("## Python packages already there") :].split("Packages:", 1)[1].split("\n")[0]
        image = {canonical(name.strip(" .")) for name in listed.split(",")}
    return image, carried


def requirers(distribution: str, among: set[str]) -> set[str]:
    """The distributions in `among` (installed here) that require `distribution` (extras aside)."""
    found = set()
    for name in among:
        try:
            requirements = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requirements:
            requirement = Requirement(line)
            wanted = requirement.marker is None or requirement.marker.evaluate({"extra": ""})
            if wanted and canonical(requirement.name) == distribution:
                found.add(name)
    return found


def loaded_distributions() -> tuple[dict[str, set[str]], set[str]]:
    """{distribution: its loaded top-level modules}, and the loaded modules no distribution owns
    that are neither the standard library's nor this repository's."""
    owners = importlib.metadata.packages_distributions()
    local = {path.stem for path in ROOT.iterdir() if path.suffix == ".py" or (path / "__init__.py").exists()}
    used: dict[str, set[str]] = {}
    unknown = set()
    for module in {name.split(".")[0] for name in list(sys.modules)}:
        if module in sys.stdlib_module_names or module in local or module in sys.builtin_module_names:
            continue
        distributions = owners.get(module)
        if not distributions:
            unknown.add(module)
        for distribution in distributions or []:
            used.setdefault(canonical(distribution), set()).add(module)
    return used, unknown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_imports", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("check_args", nargs="*", help="bench.gpu_check arguments, after --")
    parser.add_argument("--no-run", action="store_true", help="only import, do not run the check")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not args.no_run:
        from bench import gpu_check

        gpu_check.main(args.check_args)
    else:
        importlib.import_module("bench.gpu_check")
    for module in SERVER_MODULES:
        importlib.import_module(module)
    image, carried = machine_packages(KINDS, ROOT / ".whl")
    if not image:
        print(f"{KINDS} not found: the image's packages are unknown here")
    used, unknown = loaded_distributions()
    absent = {name: modules for name, modules in used.items() if name not in image | carried}
    # A package the image has in another version (huggingface-hub 2.x here needs httpx2, the image's
    # 1.x needs httpx) is excused what only it, or what only excused ones, need here.
    excused: dict[str, set[str]] = {}
    changed = True
    while changed:
        changed = False
        for name in absent.keys() - excused.keys():
            needed_by = requirers(name, set(used) - {name})
            if needed_by and needed_by <= (image - carried) | excused.keys():
                excused[name] = needed_by
                changed = True
    missing = {name: modules for name, modules in absent.items() if name not in excused}
    print(f"\ndistributions imported: {len(used)}; in the image: {len(used.keys() & image)}, ", end="")
    print(f"carried: {len(used.keys() & carried)}")
    print("  " + ", ".join(sorted(used)))
    for name, needed_by in sorted(excused.items()):
        print(f"  {name}: needed here only by {', '.join(sorted(needed_by))} (the image has its own version of those)")
    for name, modules in sorted(missing.items()):
        print(f"NOT ON THE GPU MACHINE: {name} (modules {', '.join(sorted(modules))})")
    if unknown:
        print(f"modules of no installed distribution (left unchecked): {', '.join(sorted(unknown))}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
