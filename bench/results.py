"""Where the benchmarks write their JSON results (bench/results/, ignored by git)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write one benchmark's result as JSON and say where it went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
