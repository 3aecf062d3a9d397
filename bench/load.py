"""Load generators, always a separate process from the server they load.

``wrk`` (C, with the Lua script from :mod:`bench.workload`) is preferred: on a
2-core machine a Python client spends about as much CPU per request as the
server it measures. The Python loader (aiohttp + uvloop, ``python -m
bench.load``) is the fallback when wrk is missing, and what the smoke test
uses. Both answer with the same :class:`LoadResult`; latency is per request,
from sending it to reading the whole answer, on keep-alive connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.workload import BATCH_PATH, TRACK_PATH, Workload

MAX_REQUESTS_PER_RUN = 5_000_000


@dataclass
class LoadResult:
    tool: str
    connections: int
    requests: int  # answered, any status
    ok: int  # answered 200
    non_2xx: int
    errors: int  # connection errors, timeouts
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    events_per_request: int
    started_at: float  # Unix time the load began (for end-to-end timing)
    loader_cpu_s: float = 0.0  # CPU the load generator itself used

    @property
    def rps(self) -> float:
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def events_per_s(self) -> float:
        return self.rps * self.events_per_request

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rps"] = self.rps
        out["events_per_s"] = self.events_per_s
        return out


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_load(url: str, *, batch: bool, connections: int, duration: float, tag: str,
             workload: Workload, workdir: Path, tool: str = "auto") -> LoadResult:
    """Load ``url`` for ``duration`` seconds from a separate process."""
    use_wrk = tool == "wrk" or (tool == "auto" and have_wrk())
    before = _children_cpu()
    if use_wrk:
        result = _run_wrk(url, batch=batch, connections=connections, duration=duration, tag=tag,
                          workload=workload, workdir=workdir)
    else:
        result = _run_python(url, batch=batch, connections=connections, duration=duration,
                             tag=tag, workload=workload)
    result.loader_cpu_s = _children_cpu() - before
    return result


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_wrk(url: str, *, batch: bool, connections: int, duration: float, tag: str,
             workload: Workload, workdir: Path) -> LoadResult:
    script = workdir / ("wrk-batch.lua" if batch else "wrk-track.lua")
    if not script.exists():
        script.write_text(workload.lua_script(batch=batch))
    # One wrk thread: it needs a fraction of a core even at 64 connections,
    # and the other core belongs to the server.
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
            "-s", str(script), url, "--", tag]
    started = time.time()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60,
                          check=False)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("{")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    raw = json.loads(line)
    requests = int(raw["requests"])
    return LoadResult(
        tool="wrk", connections=connections, requests=requests,
        ok=requests - int(raw["non_2xx"]), non_2xx=int(raw["non_2xx"]),
        errors=int(raw["errors"]), duration_s=raw["duration_us"] / 1e6,
        p50_ms=raw["p50_us"] / 1000, p90_ms=raw["p90_us"] / 1000, p99_ms=raw["p99_us"] / 1000,
        mean_ms=raw["mean_us"] / 1000, max_ms=raw["max_us"] / 1000,
        events_per_request=workload.batch_size if batch else 1, started_at=started,
    )


def _run_python(url: str, *, batch: bool, connections: int, duration: float, tag: str,
                workload: Workload) -> LoadResult:
    argv = [sys.executable, "-m", "bench.load", "--url", url, "--connections", str(connections),
            "--duration", str(duration), "--tag", tag, "--timestamp",
            workload.message["timestamp"], "--batch-size", str(workload.batch_size)]
    if batch:
        argv.append("--batch")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"python loader failed ({done.returncode}): {done.stderr[-2000:]}")
    return LoadResult(**json.loads(done.stdout.strip().splitlines()[-1]))


# ----------------------------------------------------------- the Python loader


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def _python_load(args: argparse.Namespace) -> LoadResult:
    import aiohttp

    workload = Workload(args.timestamp, batch_size=args.batch_size)
    path = BATCH_PATH if args.batch else TRACK_PATH
    target = args.url.rstrip("/") + path
    latencies: list[float] = []
    counts = {"ok": 0, "non_2xx": 0, "errors": 0}
    headers = {"Content-Type": "application/json"}
    started_wall = time.time()
    started = time.perf_counter()
    deadline = started + args.duration
    per_worker = MAX_REQUESTS_PER_RUN // args.connections

    async def worker(session: aiohttp.ClientSession, wid: int) -> None:
        for n in range(per_worker):
            if time.perf_counter() >= deadline:
                return
            ident = f"{args.tag}-{wid}-{n}"
            body = workload.batch(ident) if args.batch else workload.single(ident)
            sent = time.perf_counter()
            try:
                async with session.post(target, data=body, headers=headers) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError):
                counts["errors"] += 1
                continue
            latencies.append(time.perf_counter() - sent)
            counts["ok" if status == 200 else "non_2xx"] += 1

    connector = aiohttp.TCPConnector(limit=args.connections)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session, w) for w in range(args.connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    ms = [v * 1000 for v in latencies]
    return LoadResult(
        tool="python", connections=args.connections, requests=counts["ok"] + counts["non_2xx"],
        ok=counts["ok"], non_2xx=counts["non_2xx"], errors=counts["errors"], duration_s=elapsed,
        p50_ms=_percentile(ms, 50), p90_ms=_percentile(ms, 90), p99_ms=_percentile(ms, 99),
        mean_ms=sum(ms) / len(ms) if ms else 0.0, max_ms=ms[-1] if ms else 0.0,
        events_per_request=args.batch_size if args.batch else 1, started_at=started_wall,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Python load generator (loopback only)")
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--tag", default="py")
    parser.add_argument("--timestamp", default=None)
    parser.add_argument("--batch", action="store_true")
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    if not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        parser.error("the loader sends to loopback addresses only")
    import uvloop

    result = uvloop.run(_python_load(args))
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
