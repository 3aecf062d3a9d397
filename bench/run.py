"""One bench run: start the processes, run the phases, report.

``python -m bench`` (``make bench``) runs every phase at full size;
``--quick`` is a small run of the same code for a minute or so; ``--only``
picks phases by letter. Results: the table on stdout and
``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import phases, procs, report
from bench.patched import EXPERIMENTS
from bench.phases import Bench, Config

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small smoke run: 1 s loads, 50,000 vs 5,000 backlog")
    p.add_argument("--backlog", type=int, help="large backlog for (e) (default 1,000,000)")
    p.add_argument("--small-backlog", type=int, help="reference backlog (default 10,000)")
    p.add_argument("--duration", type=float, help="seconds per req/s measurement (default 5)")
    p.add_argument("--e2e-duration", type=float, help="seconds of load for (d) (default 8)")
    p.add_argument("--sdk-duration", type=float, help="seconds for the SDK path (default 5)")
    p.add_argument("--sdk-threads", type=int, help="SDK sender threads (default 8)")
    p.add_argument("--levels", help="concurrent clients for /v1/track, e.g. 1,16,64")
    p.add_argument("--loader", choices=["auto", "wrk", "python"], default="auto",
                   help="load generator (auto: wrk when installed)")
    p.add_argument("--only", default="abcdefg",
                   help="phases to run, by letter (default abcdefg; a and b run together)")
    p.add_argument("--profile", action="store_true",
                   help="sample the sidecar with py-spy during the 16-client and batch loads")
    p.add_argument("--experiment", metavar="NAME[,NAME]",
                   help="run the sidecar with candidate changes patched in (bench.patched: "
                        f"{', '.join(EXPERIMENTS)})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a sidecar setting for every sidecar the bench starts, e.g. "
                        "mapping_workers=0 (repeatable)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "latest.json")
    p.add_argument("--workdir", type=Path, help="where databases and logs go (default: a temp dir)")
    p.add_argument("--no-install", action="store_true",
                   help="do not try to install wrk with apt-get when it is missing")
    args = p.parse_args(argv)
    if args.experiment and not set(args.experiment.split(",")) <= EXPERIMENTS.keys():
        p.error(f"--experiment: choose from {', '.join(EXPERIMENTS)}")
    c = Config()
    if args.quick:
        c = Config(duration=1.0, e2e_duration=2.0, sdk_duration=1.0, backlog=50_000,
                   small_backlog=5_000, warmup=0.5)
    overrides = {"backlog": args.backlog, "small_backlog": args.small_backlog,
                 "duration": args.duration, "e2e_duration": args.e2e_duration,
                 "sdk_duration": args.sdk_duration, "sdk_threads": args.sdk_threads}
    for key, value in overrides.items():
        if value is not None:
            setattr(c, key, value)
    if args.levels:
        c.levels = tuple(int(x) for x in args.levels.split(","))
    c.loader = args.loader
    c.profile = args.profile
    c.experiment = args.experiment
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--set: expected KEY=VALUE, got {item!r}")
        c.sidecar_settings[key.strip().lower()] = value
    c.phases = frozenset(args.only.lower())
    return c, args


def ensure_wrk(allow_install: bool) -> str:
    """wrk's path, installing Debian's package when missing and allowed (as root)."""
    found = shutil.which("wrk")
    if found or not allow_install or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found or ""
    print("bench: wrk is missing; installing it with apt-get", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        subprocess.run(install, env=env, capture_output=True, check=False)
    return shutil.which("wrk") or ""


def fsync_ms(directory: Path, rounds: int = 50) -> float:
    """Median latency of a 4 KiB write + fsync on the bench's disk (what FULL pays)."""
    path = directory / "fsync-probe"
    times = []
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
            times.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return statistics.median(times) * 1000


def machine(workdir: Path, wrk: str) -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "-"

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False, cwd=RESULTS_DIR.parent).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "sidecar"], capture_output=True,
                           text=True, check=False, cwd=RESULTS_DIR.parent).stdout.strip()
    return {
        "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
        "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        "aiohttp": version("aiohttp"), "uvloop": version("uvloop"), "orjson": version("orjson"),
        "facebook_business": version("facebook-business"),
        "loader": "wrk " + wrk if wrk else "python (aiohttp)",
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "fsync_4k_ms_median": round(fsync_ms(workdir), 3),
        "git_commit": commit, "sidecar_tree_dirty": bool(dirty),
    }


def run(config: Config, workdir: Path, out: Path | None = None) -> dict[str, Any]:
    """Run the configured phases; the results document (also written to ``out``)."""
    started = time.monotonic()
    wrk = shutil.which("wrk") or ""
    if config.loader == "auto":
        config.loader = "wrk" if wrk else "python"
    bench = Bench(config=config, workdir=workdir, results_dir=(out or RESULTS_DIR).parent)
    r = bench.results
    r["meta"] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(workdir, wrk),
                 "config": {k: (sorted(v) if isinstance(v, frozenset) else v)
                            for k, v in vars(config).items()},
                 "event_bytes": bench.workload.message_bytes,
                 "batch_bytes": len(bench.workload.batch("x"))}
    memory: dict[str, float] = {}
    r["memory"] = memory
    try:
        bench.graph = procs.start_graph(workdir)
        _load_phases(bench, memory)
        if "e" in config.phases:
            _report_progress("e: drain", started)
            phases.drain(bench)
            d = r["drain"]
            memory["backlog_small_hwm_mib"] = max(x["hwm_mib"] for x in d["small"]["runs"])
            memory["backlog_big_hwm_mib"] = d["big"]["hwm_mib"]
            memory["backlog_big_max_rss_mib"] = d["big"]["max_rss_mib"]
    finally:
        for proc in (bench.sidecar, bench.ceiling, bench.graph):
            if proc is not None:
                proc.stop()
    r["targets"] = report.targets(r)
    r["meta"]["elapsed_seconds"] = round(time.monotonic() - started, 1)
    r["meta"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    if out is not None:
        report.write(r, out)
    return r


def _load_phases(bench: Bench, memory: dict[str, float]) -> None:
    """(a)-(d), (f) and (g): one sidecar on a fresh outbox, the ceiling beside it."""
    c = bench.config
    started = time.monotonic()
    if not c.phases & set("abcdfg"):
        return
    bench.ceiling = procs.start_ceiling(bench.workdir)
    bench.sidecar = bench.start_sidecar("outbox.db")
    time.sleep(c.idle_settle)  # let start-up settle before the idle reading
    memory["idle_mib"] = bench.sidecar.memory()["rss_mib"]
    with procs.MemorySampler(bench.sidecar) as sampler:
        phases.warm_up(bench)
        if c.phases & set("ab"):
            _report_progress("a+b: ceiling and /v1/track", started)
            phases.ingest_single(bench)
        if "c" in c.phases:
            _report_progress("c: /v1/batch", started)
            phases.ingest_batch(bench)
        if "g" in c.phases:
            _report_progress("g: official SDK path", started)
            phases.sdk_path(bench)
        if "d" in c.phases:
            _report_progress("d: end to end", started)
            phases.end_to_end(bench)
    at_end = bench.sidecar.memory()
    memory["peak_mib"] = at_end["hwm_mib"]  # the server's peak plus each worker's
    memory["peak_workers_mib"] = at_end["children_hwm_mib"]
    memory["workers"] = at_end["children"]
    memory["peak_sampled_rss_mib"] = sampler.max_rss_mib
    bench.sidecar.stop()
    bench.sidecar = None
    bench.ceiling.stop()
    bench.ceiling = None


def _report_progress(what: str, started: float) -> None:
    print(f"bench: {what} (t+{time.monotonic() - started:.0f}s)", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    config, args = parse_args(argv)
    if config.loader in ("auto", "wrk"):
        ensure_wrk(allow_install=not args.no_install)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        results = run(config, args.workdir, args.out)
    else:
        with tempfile.TemporaryDirectory(prefix="capi-bench-") as tmp:
            results = run(config, Path(tmp), args.out)
    print(report.table(results))
    for name, prof in results.get("profiles", {}).items():
        print(f"\nprofile {name} ({prof['samples']} samples, {prof['file']}): top self time")
        for frame, pct in prof["self_pct"][:15]:
            print(f"  {pct:5.1f}%  {frame}")
    print(f"\nwritten: {args.out} (elapsed {results['meta']['elapsed_seconds']}s)")
    return 0
