"""Load test of `vlmkit serve`: token throughput and latency for 1, 4 and 8 concurrent streaming clients.

Starts the server (a subprocess, `vlmkit serve` on 127.0.0.1, a free port) with a small model: `--model DIR`, or by
default the llava-tiny preset with a deeper language model (`SMALL_LM`), saved to a temporary directory (random
weights: answers are noise, their lengths are fixed with the `ignore_eos` extension). Each client sends `--requests` streaming chat requests with an image, one
after another; every level is bounded in request count and by `--deadline` seconds overall.

Prints per level and round: requests, completion tokens, tokens/s, p50 / p95 request latency, then each level's
best round (`--rounds`, default 5: the CPU may be shared with other work); the LAST line is
`serve_throughput_8_vs_1: <x>x (target: >= 4x)` and the exit status is 1 when the target is missed.

    python bench/serve_load.py [--model DIR] [--clients 1,4,8] [--requests 3] [--max-tokens 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

TARGET = 4.0
# The default model: llava-tiny with a deeper language model (3.5M parameters in all), so that one decode step
# costs more than the per-token HTTP work, as with real models; the 2-layer toy LM alone is all overhead.
SMALL_LM = ["language.num_layers=16", "language.hidden_size=128", "language.intermediate_size=344"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model directory (default: llava-tiny saved to a temp dir)")
    p.add_argument("--preset", default="llava-tiny", help="preset built when no --model is given")
    p.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE",
                   help=f"preset override (repeatable; default: {' '.join(SMALL_LM)})")
    p.add_argument("--clients", default="1,4,8", help="concurrency levels (default 1,4,8)")
    p.add_argument("--requests", type=int, default=3, help="requests per client per level and round (default 3)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per answer (default 64)")
    p.add_argument("--max-batch", type=int, default=8, help="server --max-batch (default 8)")
    p.add_argument("--threads", type=int, default=1, help="server --threads (default 1)")
    p.add_argument("--device", default="cpu", help="server --device (default cpu)")
    p.add_argument("--rounds", type=int, default=5,
                   help="repeat all levels this often and keep each level's best round (default 5; CPUs shared "
                        "with other work make single rounds noisy)")
    p.add_argument("--deadline", type=float, default=600.0, help="seconds for the whole run (default 600)")
    return p.parse_args()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_model_dir(root: Path, preset: str, overrides: list[str]) -> Path:
    import torch

    import vlmkit

    torch.manual_seed(0)
    model, processor = vlmkit.build(preset, overrides)
    print(f"model: {preset} {' '.join(overrides)} "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, random weights)", flush=True)
    return vlmkit.save(model, processor, root / "model")


def image_url() -> str:
    img = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(img).ellipse((10, 12, 40, 42), fill="red")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def start_server(model: str, port: int, args: argparse.Namespace) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vlmkit.cli.main", "serve", "--model", model, "--host", "127.0.0.1",
           "--port", str(port), "--max-batch", str(args.max_batch), "--threads", str(args.threads),
           "--device", args.device, "--log-level", "warning"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(cmd, env=env)


def wait_ready(url: str, server: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become ready in time")


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> tuple[float, int]:
    """One streaming request: (latency until [DONE], completion tokens from the usage chunk)."""
    start = time.perf_counter()
    tail = b""
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise SystemExit(f"request failed: {r.status_code} {(await r.aread())[:300]!r}")
        async for piece in r.aiter_raw():  # only the end is parsed: the client shares the CPU with the server
            tail = (tail + piece)[-4096:]
    latency = time.perf_counter() - start
    events = [e for e in tail.decode("utf-8", "replace").split("\n\n") if '"usage":{' in e]
    if not events or not tail.rstrip().endswith(b"data: [DONE]"):
        raise SystemExit(f"the stream did not end with usage and [DONE]: {tail[-300:]!r}")
    return latency, json.loads(events[-1].split("data: ", 1)[1])["usage"]["completion_tokens"]


async def level(url: str, clients: int, args: argparse.Namespace, body: dict, deadline: float) -> dict:
    async def client_loop(client: httpx.AsyncClient) -> list[tuple[float, int]]:
        return [await one_request(client, url, body) for _ in range(args.requests)]

    limits = httpx.Limits(max_connections=clients + 2)
    timeout = httpx.Timeout(max(deadline - time.monotonic(), 1.0))
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        start = time.perf_counter()
        try:
            runs = await asyncio.wait_for(asyncio.gather(*(client_loop(client) for _ in range(clients))),
                                          timeout=max(deadline - time.monotonic(), 1.0))
        except asyncio.TimeoutError:
            raise SystemExit(f"the {clients}-client level ran past the deadline") from None
        wall = time.perf_counter() - start
    latencies = sorted(lat for run in runs for lat, _ in run)
    tokens = sum(tok for run in runs for _, tok in run)
    return {"clients": clients, "requests": len(latencies), "tokens": tokens, "seconds": wall,
            "tokens_per_s": tokens / wall, "p50": percentile(latencies, 50), "p95": percentile(latencies, 95)}


def row(label: str, r: dict) -> str:
    return (f"{label:>5} {r['clients']:>7} {r['requests']:>8} {r['tokens']:>7} {r['seconds']:>8.2f} "
            f"{r['tokens_per_s']:>9.1f} {r['p50']:>7.3f} {r['p95']:>7.3f} {r['server_cpu']:>10.2f} "
            f"{r['client_cpu']:>10.2f}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc), 0 when unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def run(args: argparse.Namespace, model: str) -> int:
    deadline = time.monotonic() + args.deadline
    levels = [int(c) for c in args.clients.split(",")]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(model, port, args)
    try:
        wait_ready(url, server, min(180.0, args.deadline))
        body = {"model": "vlmkit", "max_tokens": args.max_tokens, "stream": True, "ignore_eos": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": [{"type": "text", "text": "How many circles?"},
                                                          {"type": "image_url", "image_url": {"url": image_url()}}]}]}
        asyncio.run(level(url, 1, argparse.Namespace(**{**vars(args), "requests": 1}), body, deadline))  # warm-up
        print(f"{'round':>5} {'clients':>7} {'requests':>8} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} "
              f"{'p50 s':>7} {'p95 s':>7} {'server cpu':>10} {'client cpu':>10}")
        results: dict[int, dict] = {}
        for round_ in range(1, args.rounds + 1):
            for c in levels:
                cpu = cpu_seconds(server.pid), time.process_time()
                r = asyncio.run(level(url, c, args, body, deadline))
                r["server_cpu"] = cpu_seconds(server.pid) - cpu[0]
                r["client_cpu"] = time.process_time() - cpu[1]
                print(row(str(round_), r), flush=True)
                if c not in results or r["tokens_per_s"] > results[c]["tokens_per_s"]:
                    results[c] = r
        print("best round per level:")
        for c in levels:
            print(row("best", results[c]))
        health = httpx.get(f"{url}/health", timeout=5).json()
        print(f"server: peak batch {health['peak_batch']}, decode steps {health['steps']}, "
              f"prefills {health['prefills']}")
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
    lo, hi = min(levels), max(levels)
    speedup = results[hi]["tokens_per_s"] / results[lo]["tokens_per_s"]
    print(f"serve_throughput_{hi}_vs_{lo}: {speedup:.2f}x (target: >= {TARGET:g}x)")
    return 0 if speedup >= TARGET else 1


def main() -> int:
    args = parse_args()
    if args.model is not None:
        return run(args, args.model)
    with tempfile.TemporaryDirectory() as tmp:
        overrides = SMALL_LM if args.overrides is None else args.overrides
        return run(args, str(small_model_dir(Path(tmp), args.preset, overrides)))


if __name__ == "__main__":
    sys.exit(main())
