"""End-to-end benchmark over WebRTC on loopback: N aiortc clients against `python server.py`.

Each client sends a 640x480 synthetic camera at --fps for --seconds; the figures are per
client: frames out per second, glass-to-glass latency p50/p95 (from the frame index in the
pixels for structure-keeping transforms; with --scene toggle, per scene switch for any
deterministic transform), and the frames the server dropped; plus the server process's CPU
use. Prints a table and writes JSON.

    python -m bench.stream -- --transform passthrough --width 640 --height 480
    python -m bench.stream --clients 4 --seconds 30 -- --transform invert --delay-ms 50
    python -m bench.stream --scene toggle -- --model tiny --width 256 --height 256
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench.client import StreamClient, scene_switch_latencies, switch_latencies
from bench.engine import camera_frame, engine_fps, without_similarity
from bench.results import RESULTS, write_result
from bench.serve import ServerProcess
from settings import load_settings
from transforms.catalog import build_engine
from transforms.priority import lower_priority

logger = logging.getLogger("bench.stream")

WARMUP_S = 2.0  # codec start and the first keyframe are not steady state


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def client_figures(client: StreamClient, start: float, end: float) -> dict[str, Any]:
    frames = [frame for frame in client.received if start <= frame.at < end]
    if client.scene == "toggle":
        timed = switch_latencies(client.received, client.camera.switched_at)
        latencies_ms = [latency * 1000 for switched, latency in timed if start <= switched < end]
    elif client.scene == "switch":
        seen, _ = scene_switch_latencies(client.received, client.camera.switched_at, client.toggle_s / 2)
        latencies_ms = [latency * 1000 for switched, latency in seen if latency is not None and start <= switched < end]
    else:
        latencies_ms = [frame.latency_s * 1000 for frame in frames if frame.latency_s is not None]
    last_stats = client.stats[-1] if client.stats else {}
    p50, p95 = percentile(latencies_ms, 0.5), percentile(latencies_ms, 0.95)
    return {
        "fps_out": round(len(frames) / (end - start), 2),
        "latency_p50_ms": round(p50, 1) if p50 is not None else None,
        "latency_p95_ms": round(p95, 1) if p95 is not None else None,
        "frames_sent": client.camera.frames_sent,
        "frames_received": len(client.received),
        "server_dropped": last_stats.get("dropped"),
        "server_latency_ms": last_stats.get("latency_ms"),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    server_args = [*args.server_args]
    server = ServerProcess(*server_args)
    try:
        health = await server.ready()
        if health["status"] != "ok":
            raise SystemExit(f"server failed to start: {health.get('error')}")
        process = psutil.Process(server.process.pid)
        if args.client_nice:
            lower_client_priority(args.client_nice)
        clients = [StreamClient(server.url, fps=args.fps, scene=args.scene) for _ in range(args.clients)]
        await asyncio.gather(*(client.connect() for client in clients))
        await asyncio.sleep(WARMUP_S)
        process.cpu_percent()
        start = time.monotonic()
        await asyncio.sleep(args.seconds)
        end = time.monotonic()
        cpu = process.cpu_percent()
        async with aiohttp.ClientSession() as http, http.get(f"{server.url}/stats") as response:
            server_stats = await response.json()
        figures = [client_figures(client, start, end) for client in clients]
        await asyncio.gather(*(client.close() for client in clients))
    finally:
        await server.stop()
    result = {
        "benchmark": "stream",
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(),
        "command": "python -m bench.stream " + " ".join(args.argv),
        "server_args": server_args,
        "clients": args.clients,
        "camera_fps": args.fps,
        "client_nice": args.client_nice,
        "seconds": args.seconds,
        "server_cpu_percent": round(cpu, 1),
        "engine": server_stats["engine"],
        "per_client": figures,
    }
    if args.efficiency:
        engine = build_engine(without_similarity(load_settings(server_args)))
        alone = await asyncio.to_thread(engine_fps, engine, camera_frame(), args.seconds)
        total = sum(row["fps_out"] for row in figures)
        result["engine_alone_fps"] = round(alone, 2)
        result["efficiency"] = round(total / alone, 3) if alone else None
    return result


def lower_client_priority(nice: int) -> None:
    """Lower every thread of this process (the clients; the server is its own process) by `nice`;
    threads started later inherit it. On a machine shared with the server the clients then take
    only the CPU the server leaves, as browsers on other machines would."""
    for thread in psutil.Process().threads():
        lower_priority(thread.id, nice)


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{platform.system()} {cpu}, {psutil.cpu_count()} cores, Python {platform.python_version()}"


def print_table(result: dict[str, Any]) -> None:
    print(f"{result['command']}\n{result['machine']}, server CPU {result['server_cpu_percent']}%")
    if "efficiency" in result:
        print(f"engine alone {result['engine_alone_fps']} fps; end-to-end efficiency {result['efficiency']}")
    print(f"{'client':>6} {'fps out':>8} {'p50 ms':>8} {'p95 ms':>8} {'dropped':>8} {'server ms':>9}")
    for number, row in enumerate(result["per_client"], 1):
        print(
            f"{number:>6} {row['fps_out']:>8} {row['latency_p50_ms']!s:>8} {row['latency_p95_ms']!s:>8}"
            f" {row['server_dropped']!s:>8} {row['server_latency_ms']!s:>9}"
        )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.stream",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Arguments after -- go to server.py unchanged (e.g. -- --transform invert --delay-ms 100).",
    )
    parser.add_argument("--clients", type=int, default=1, help="concurrent aiortc clients (default 1)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time (default 20)")
    parser.add_argument("--fps", type=float, default=30.0, help="camera frame rate per client (default 30)")
    parser.add_argument(
        "--scene",
        choices=["index", "toggle", "switch"],
        default="index",
        help="index: latency of every frame from the index in its pixels (passthrough, invert); "
        "toggle: the camera switches scene every second and latency is timed per switch (any transform); "
        "switch: as toggle, with a brightness that moves every frame so that no frame is skipped as a repeat",
    )
    parser.add_argument(
        "--efficiency",
        action="store_true",
        help="also time the same transform with no WebRTC (in this process, as long) and report fps out / that",
    )
    parser.add_argument(
        "--client-nice",
        type=int,
        default=0,
        choices=range(20),
        metavar="0-19",
        help="run the clients this much below the server's CPU priority once it is up (default 0: equal); "
        "on one machine they then stand for browsers on other machines",
    )
    parser.add_argument("--json", type=Path, default=RESULTS / "stream.json", help="JSON result file")
    parser.add_argument("server_args", nargs="*", help="server.py arguments, after --")
    args = parser.parse_args(argv)
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    result = asyncio.run(run(args))
    print_table(result)
    write_result(args.json, result)


if __name__ == "__main__":
    main()
