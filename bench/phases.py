"""The measurements, one function per letter of the benchmark issue.

Each phase loads a server from a separate process and records the figure
next to its reference measured moments before in the same run (the ceiling
for ingest, the SDK path for end-to-end, the small backlog for the large
one), because on a shared 2-core machine only ratios travel.

Between measurements the bench waits until the sidecar has delivered what it
accepted ("quiet": the stand-in's count stops moving), so one phase's
background delivery does not tax the next phase's reference.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procs
from bench.load import LoadResult, run_load
from bench.prefill import prefill
from bench.procs import MemorySampler, Proc, http_json
from bench.workload import Workload


@dataclass
class Config:
    """Sizes of one run; the defaults are the full run (< 10 minutes on 2 cores)."""

    duration: float = 5.0  # seconds per req/s measurement
    levels: tuple[int, ...] = (1, 16, 64)  # concurrent clients for /v1/track
    batch_connections: int = 4
    e2e_duration: float = 8.0
    sdk_duration: float = 5.0
    sdk_threads: int = 8
    backlog: int = 1_000_000
    small_backlog: int = 10_000
    small_runs: int = 3
    warmup: float = 1.0
    loader: str = "auto"  # auto (wrk when installed), wrk, python
    prefill_workers: int = 2
    profile: bool = False
    experiment: str | None = None  # bench.patched experiment for the sidecar
    sidecar_settings: dict[str, str] = field(default_factory=dict)  # --set: CAPI_* overrides
    settle_timeout: float = 120.0
    quiet_seconds: float = 1.0  # no new delivery for this long = delivered everything
    idle_settle: float = 2.0  # seconds after start-up before the idle memory reading
    phases: frozenset[str] = frozenset("abcdefg")


@dataclass
class Bench:
    """What a run holds: its config, processes, workload and results so far."""

    config: Config
    workdir: Path
    results_dir: Path
    workload: Workload = field(default_factory=Workload)
    graph: Proc | None = None
    ceiling: Proc | None = None
    sidecar: Proc | None = None
    results: dict[str, Any] = field(default_factory=dict)
    _tags: Iterator[int] = field(default_factory=itertools.count)

    def tag(self, what: str) -> str:
        return f"{what}{next(self._tags)}-{int(time.time() * 1000) % 10**8}"

    # ------------------------------------------------------ the stand-in's view
    @property
    def graph_url(self) -> str:
        assert self.graph is not None
        return self.graph.url

    def graph_cpu(self) -> float:
        assert self.graph is not None
        return self.graph.cpu_seconds()

    def delivered(self) -> int:
        return int(http_json("GET", self.graph_url + "/_sandbox/health")["events_total"])

    def timeline(self, since: int = 0) -> list[tuple[float, int]]:
        got = http_json("GET", f"{self.graph_url}/_bench/timeline?since={since}")
        return [(float(t), int(n)) for t, n in got]

    def timeline_length(self) -> int:
        return len(http_json("GET", f"{self.graph_url}/_bench/timeline?since=0"))

    def wait_quiet(self, at_least: int, *, stable: float | None = None,
                   timeout: float | None = None) -> int:
        """Wait until the stand-in has ``at_least`` events and its count stops moving."""
        stable = self.config.quiet_seconds if stable is None else stable
        deadline = time.monotonic() + (timeout or self.config.settle_timeout)
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            total = self.delivered()
            if total != last:
                last, last_change = total, time.monotonic()
            elif total >= at_least and time.monotonic() - last_change >= stable:
                return total
            time.sleep(0.05)
        return last

    def load(self, url: str, *, batch: bool, connections: int, duration: float,
             what: str) -> LoadResult:
        return run_load(url, batch=batch, connections=connections, duration=duration,
                        tag=self.tag(what), workload=self.workload, workdir=self.workdir,
                        tool=self.config.loader)

    def start_sidecar(self, db_name: str, name: str = "sidecar") -> Proc:
        return procs.start_sidecar(self.workdir, self.workdir / db_name, self.graph_url,
                                   name=name, experiment=self.config.experiment,
                                   **self.config.sidecar_settings)


# ----------------------------------------------------------------- profiling


@contextlib.contextmanager
def profiled(bench: Bench, proc: Proc, name: str, seconds: float) -> Iterator[None]:
    """Sample ``proc`` with py-spy while the block runs (``--profile`` only)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not bench.config.profile or not Path(spy).exists():
        if bench.config.profile:
            print("bench: py-spy is missing (pip install -e '.[bench]'); not profiling",
                  file=sys.stderr)
        yield
        return
    out = bench.results_dir / f"profile-{name}.txt"
    argv = [spy, "record", "--pid", str(proc.pid), "--duration", str(max(1, int(seconds))),
            "--rate", "250", "--format", "raw", "--output", str(out), "--nonblocking",
            "--gil"]
    spy_proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        try:
            spy_proc.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            spy_proc.kill()
            spy_proc.wait(5)
        if out.exists():
            bench.results.setdefault("profiles", {})[name] = summarize_profile(out)


def summarize_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive shares of the hottest functions in a py-spy raw file."""
    own: dict[str, int] = {}
    total_in: dict[str, int] = {}
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        samples += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            total_in[frame] = total_in.get(frame, 0) + count

    def rank(table: dict[str, int]) -> list[tuple[str, float]]:
        best = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [(name, round(100 * n / max(samples, 1), 1)) for name, n in best]

    return {"file": str(path), "samples": samples, "self_pct": rank(own),
            "inclusive_pct": rank(total_in)}


def _frame(frame: str) -> str:
    # "handle (sidecar/ingest.py:85)" -> "handle (sidecar/ingest.py)"
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


# -------------------------------------------------------------------- phases


def warm_up(bench: Bench) -> None:
    c = bench.config
    assert bench.ceiling is not None and bench.sidecar is not None
    before = bench.delivered()
    bench.load(bench.ceiling.url, batch=False, connections=16, duration=c.warmup, what="warm")
    got = bench.load(bench.sidecar.url, batch=False, connections=16, duration=c.warmup,
                     what="warm")
    bench.wait_quiet(before + got.ok)


def _measure_sidecar(bench: Bench, *, batch: bool, connections: int, duration: float,
                     what: str) -> tuple[LoadResult, dict[str, float]]:
    """Load the sidecar, then wait until it delivered it all; CPU per event both ways."""
    assert bench.sidecar is not None
    sidecar = bench.sidecar
    before = bench.delivered()
    cpu0 = sidecar.cpu_seconds()
    with profiled(bench, sidecar, what, duration):
        result = bench.load(sidecar.url, batch=batch, connections=connections,
                            duration=duration, what=what)
    cpu_load = sidecar.cpu_seconds() - cpu0
    events = result.ok * result.events_per_request
    bench.wait_quiet(before + events)
    cpu_all = sidecar.cpu_seconds() - cpu0
    per = max(events, 1)
    return result, {"cpu_us_per_event_during_load": cpu_load / per * 1e6,
                    "cpu_us_per_event_ingest_and_delivery": cpu_all / per * 1e6}


def ingest_single(bench: Bench) -> None:
    """(a) the ceiling and (b) /v1/track at each concurrency, interleaved level by level."""
    c = bench.config
    assert bench.ceiling is not None
    out: dict[str, Any] = {}
    for level in c.levels:
        ceiling = bench.load(bench.ceiling.url, batch=False, connections=level,
                             duration=c.duration, what=f"ceil{level}-")
        sidecar, cpu = _measure_sidecar(bench, batch=False, connections=level,
                                        duration=c.duration, what=f"track{level}")
        out[str(level)] = {"ceiling": ceiling.as_dict(), "sidecar": sidecar.as_dict(), **cpu,
                           "ratio": _ratio(sidecar.rps, ceiling.rps)}
    bench.results["track"] = out


def ingest_batch(bench: Bench) -> None:
    """(c) /v1/batch with 100-event batches, beside the ceiling fed the same bodies."""
    c = bench.config
    assert bench.ceiling is not None
    ceiling = bench.load(bench.ceiling.url, batch=True, connections=c.batch_connections,
                         duration=c.duration, what="ceilb-")
    sidecar, cpu = _measure_sidecar(bench, batch=True, connections=c.batch_connections,
                                    duration=c.duration, what="batch")
    bench.results["batch"] = {"ceiling": ceiling.as_dict(), "sidecar": sidecar.as_dict(), **cpu,
                              "ratio": _ratio(sidecar.events_per_s, ceiling.events_per_s)}


def end_to_end(bench: Bench) -> None:
    """(d) events/s from the first ingest request to the last event delivered."""
    c = bench.config
    assert bench.sidecar is not None
    out: dict[str, Any] = {}
    for label, delay in (("0ms", 0.0), ("100ms", 0.1)):
        http_json("DELETE", bench.graph_url + "/_sandbox/faults")
        if delay:
            http_json("POST", bench.graph_url + "/_sandbox/faults",
                      {"delay_seconds": delay, "times": 0})
        mark = bench.timeline_length()
        before = bench.delivered()
        cpu0 = bench.sidecar.cpu_seconds()
        graph_cpu0 = bench.graph_cpu()
        load = bench.load(bench.sidecar.url, batch=True, connections=c.batch_connections,
                          duration=c.e2e_duration, what=f"e2e{label}")
        accepted = load.ok * load.events_per_request
        total = bench.wait_quiet(before + accepted)
        http_json("DELETE", bench.graph_url + "/_sandbox/faults")
        tail = bench.timeline(mark)
        delivered = total - before
        last_at = tail[-1][0] if tail else time.time()
        span = max(last_at - load.started_at, 1e-9)
        out[label] = {
            "graph_delay_ms": delay * 1000, "accepted": accepted, "delivered": delivered,
            "seconds": span, "events_per_s": delivered / span,
            "ingest_events_per_s": load.events_per_s,
            "delivery_lag_after_load_s": max(0.0, last_at - (load.started_at + load.duration_s)),
            "graph_requests": len(tail),
            "cpu_us_per_event": (bench.sidecar.cpu_seconds() - cpu0) / max(delivered, 1) * 1e6,
            "graph_cpu_us_per_event": (bench.graph_cpu() - graph_cpu0) / max(delivered, 1) * 1e6,
            "load": load.as_dict(),
        }
    bench.results["e2e"] = out


def sdk_path(bench: Bench) -> None:
    """(g) the official SDK, one event per request, to the same stand-in."""
    c = bench.config
    before = bench.delivered()
    argv = [sys.executable, "-m", "bench.sdk", "--graph-url", bench.graph_url,
            "--pixel", procs.PIXEL, "--token", procs.TOKEN, "--threads", str(c.sdk_threads),
            "--duration", str(c.sdk_duration), "--tag", bench.tag("sdk"),
            "--timestamp", bench.workload.message["timestamp"]]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=c.sdk_duration + 120,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"SDK sender failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["delivered_by_graph"] = bench.wait_quiet(before + result["ok"]) - before
    bench.results["sdk"] = result


def _prefill(bench: Bench, size: int, label: str) -> tuple[Path, dict[str, Any]]:
    db = bench.workdir / f"backlog-{label}.db"
    _remove_db(db)
    fill = prefill(db, size, tag=bench.tag(f"bk{label}"), graph_url=bench.graph_url,
                   timestamp=bench.workload.message["timestamp"],
                   workers=bench.config.prefill_workers if size >= 20_000 else 1)
    return db, fill


def _remove_db(db: Path) -> None:
    for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        p.unlink(missing_ok=True)


def _drain_once(bench: Bench, size: int, label: str,
                filled: tuple[Path, dict[str, Any]] | None = None) -> dict[str, Any]:
    c = bench.config
    db, fill = filled or _prefill(bench, size, label)
    mark = bench.timeline_length()
    before = bench.delivered()
    graph_cpu0 = bench.graph_cpu()
    started = time.time()
    proc = bench.start_sidecar(db.name, name=f"drain-{label}")
    ready_at = time.time()
    user0, system0 = proc.cpu_split()
    try:
        with MemorySampler(proc, wal=db.with_name(db.name + "-wal")) as sampler:
            # Profile a stretch of the large drain only (--profile).
            seconds = min(20.0, size / 20_000) if size > c.small_backlog else 0.0
            with profiled(bench, proc, f"drain-{label}", seconds) if seconds >= 1 \
                    else contextlib.nullcontext():
                total = bench.wait_quiet(before + size, timeout=c.settle_timeout + size / 2000)
        memory = proc.memory()
        user, system = proc.cpu_split()
    finally:
        proc.stop()
    tail = bench.timeline(mark)
    rate = 0.0
    if len(tail) >= 3:
        # From the first answered batch to the last: start-up is not drain time.
        (t_first, n_first), (t_last, n_last) = tail[0], tail[-1]
        rate = (n_last - n_first) / max(t_last - t_first, 1e-9)
    elif tail:  # a backlog of a batch or two: from readiness instead
        rate = (tail[-1][1] - before) / max(tail[-1][0] - ready_at, 1e-3)
    result = {
        "backlog": size, "delivered": total - before, "events_per_s": rate,
        "pace": _pace(tail),
        "graph_requests": len(tail), "prefill": fill,
        "ready_seconds": proc.extra.get("ready_seconds"),
        "seconds_start_to_empty": (tail[-1][0] - started) if tail else None,
        "max_rss_mib": sampler.max_rss_mib, "max_anon_mib": sampler.max_anon_mib,
        "max_wal_mib": sampler.max_wal_mib,
        "hwm_mib": memory["hwm_mib"], "end_memory_mib": memory,
        # From readiness on: start-up (imports, quick_check) is not drain work.
        "cpu_us_per_event": (user - user0 + system - system0) / max(size, 1) * 1e6,
        "system_cpu_us_per_event": (system - system0) / max(size, 1) * 1e6,
        "graph_cpu_us_per_event": (bench.graph_cpu() - graph_cpu0) / max(size, 1) * 1e6,
    }
    _remove_db(db)
    return result


def _pace(tail: list[tuple[float, int]]) -> dict[str, Any]:
    """Gaps between answered Graph requests, and events delivered in each 5 s window."""
    if len(tail) < 3:
        return {}
    gaps = sorted(b[0] - a[0] for a, b in itertools.pairwise(tail))
    start = tail[0][0]
    windows: dict[int, int] = {}
    for (_, n0), (t1, n1) in itertools.pairwise(tail):
        key = int((t1 - start) // 5)
        windows[key] = windows.get(key, 0) + n1 - n0
    return {"gap_p50_ms": gaps[len(gaps) // 2] * 1000,
            "gap_p99_ms": gaps[-max(1, len(gaps) // 100)] * 1000, "gap_max_ms": gaps[-1] * 1000,
            "events_per_s_by_5s": [round(windows.get(k, 0) / 5) for k in range(max(windows) + 1)]}


def drain(bench: Bench) -> None:
    """(e) drain rate of a large backlog against a small one (median of a few small runs).

    The large backlog is written first; the small runs go right before and
    after its drain, so the reference is measured minutes, not a prefill, apart.
    """
    c = bench.config
    filled = _prefill(bench, c.backlog, "big")
    before = max(1, c.small_runs - 1)
    small = [_drain_once(bench, c.small_backlog, f"small{k}") for k in range(before)]
    big = _drain_once(bench, c.backlog, "big", filled)
    small += [_drain_once(bench, c.small_backlog, f"small{k}")
              for k in range(before, max(c.small_runs, before + 1))]
    small_rate = statistics.median(r["events_per_s"] for r in small)
    bench.results["drain"] = {
        "small": {"backlog": c.small_backlog, "events_per_s": small_rate, "runs": small},
        "big": big,
        "ratio": _ratio(big["events_per_s"], small_rate),
    }


def _ratio(value: float, reference: float) -> float:
    return value / reference if reference else 0.0
