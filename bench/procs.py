"""Processes of a bench run: start, wait for, measure and stop them.

Every server the bench loads is its own OS process on loopback: the ceiling
(``bench.ceiling``), the Graph stand-in (``bench.graph``), and the sidecar as
a real ``capi-sidecar serve``. Resident memory comes from
``/proc/<pid>/status`` (VmRSS now, VmHWM the peak), CPU time from
``/proc/<pid>/stat`` (user + system, every thread).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
PIXEL = "1234567890"
TOKEN = "bench-token-0123456789"  # the local stand-in's token, not a secret
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def http_json(method: str, url: str, body: Any = None, timeout: float = 10.0) -> Any:
    """One request to a loopback control endpoint; the decoded JSON answer."""
    assert url.startswith(f"http://{LOOPBACK}:"), "the bench talks to loopback only"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def wait_until_answers(url: str, proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Poll ``url`` until it answers 200; seconds it took. Raises if the process dies."""
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
            urllib.request.urlopen(url, timeout=1.0).read()
            return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


@dataclass
class Proc:
    """A child process of the bench, with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def family(self) -> list[int]:
        """This process and its live children (the sidecar's mapping workers)."""
        pids = [self.pid]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.pid:
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.pid:
                    pids.append(int(entry.name))
        return pids

    def memory(self) -> dict[str, float]:
        """VmRSS, VmHWM (peak), RssAnon (heap) and RssFile (mapped files) in MiB.

        Summed over the process and its children; ``children_*`` is their share.
        """
        keys = {"VmRSS:": "rss_mib", "VmHWM:": "hwm_mib", "RssAnon:": "anon_mib",
                "RssFile:": "file_mib"}
        out = dict.fromkeys(keys.values(), 0.0)
        out.update(children_rss_mib=0.0, children_hwm_mib=0.0, children=0.0)
        for pid in self.family():
            mine = dict.fromkeys(keys.values(), 0.0)
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    key = keys.get(line.split(maxsplit=1)[0]) if line else None
                    if key:
                        mine[key] = int(line.split()[1]) / 1024
            for key, value in mine.items():
                out[key] += value
            if pid != self.pid:
                out["children"] += 1
                out["children_rss_mib"] += mine["rss_mib"]
                out["children_hwm_mib"] += mine["hwm_mib"]
        return out

    def cpu_seconds(self) -> float:
        user, system = self.cpu_split()
        return user + system

    def cpu_split(self) -> tuple[float, float]:
        """User and system CPU seconds, all threads, live and exited children included."""
        user = system = 0.0
        for pid in self.family():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            user += int(fields[11]) / _CLK_TCK
            system += int(fields[12]) / _CLK_TCK
            if pid == self.pid:  # children it has reaped
                user += int(fields[13]) / _CLK_TCK
                system += int(fields[14]) / _CLK_TCK
        return user, system

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def spawn(name: str, argv: list[str], workdir: Path, env: Mapping[str, str] | None = None) -> Proc:
    log_path = workdir / f"{name}.log"
    # The log file handle is inherited by the child; the parent's copy closes at once.
    with log_path.open("ab") as log:
        popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                 env=dict(env) if env is not None else None,
                                 start_new_session=True)
    return Proc(name, popen, log_path)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without CAPI_* and OTEL_* (the bench sets its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPI_", "OTEL_"))}
    env.update(extra)
    return env


def start_ceiling(workdir: Path, timeout: float = 30.0) -> Proc:
    port = free_port()
    proc = spawn("ceiling", [sys.executable, "-m", "bench.ceiling", "--port", str(port)],
                 workdir, clean_env())
    proc.url = f"http://{LOOPBACK}:{port}"
    wait_until_answers(proc.url + "/healthz", proc.popen, timeout)
    return proc


def start_graph(workdir: Path, timeout: float = 30.0) -> Proc:
    port = free_port()
    proc = spawn("graph", [sys.executable, "-m", "bench.graph", "--port", str(port),
                           "--token", TOKEN, "--pixel", PIXEL], workdir, clean_env())
    proc.url = f"http://{LOOPBACK}:{port}"
    wait_until_answers(proc.url + "/_sandbox/health", proc.popen, timeout)
    return proc


def sidecar_command(experiment: str | None = None) -> list[str]:
    if experiment:
        return [sys.executable, "-m", "bench.patched", experiment]
    script = Path(sys.executable).with_name("capi-sidecar")
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-m", "sidecar.cli", "serve"]


def start_sidecar(workdir: Path, db_path: Path, graph_url: str, name: str = "sidecar",
                  timeout: float = 300.0, experiment: str | None = None,
                  **settings: str) -> Proc:
    """``capi-sidecar serve``, durable (synchronous=FULL), delivering to ``graph_url``."""
    port, ops_port = free_port(), free_port()
    env = clean_env(
        CAPI_DB_PATH=str(db_path), CAPI_LISTEN=f"{LOOPBACK}:{port}",
        CAPI_OPS_LISTEN=f"{LOOPBACK}:{ops_port}", CAPI_PIXEL_ID=PIXEL, CAPI_ACCESS_TOKEN=TOKEN,
        CAPI_GRAPH_URL=graph_url, CAPI_SYNCHRONOUS="FULL", CAPI_OUTBOX_CAP="100000000",
        CAPI_LOG_LEVEL="WARNING",
    )
    env.update({f"CAPI_{k.upper()}": v for k, v in settings.items()})
    started = time.monotonic()
    proc = spawn(name, sidecar_command(experiment), workdir, env)
    proc.url = f"http://{LOOPBACK}:{port}"
    proc.extra["ops_url"] = f"http://{LOOPBACK}:{ops_port}"
    try:
        wait_until_answers(proc.extra["ops_url"] + "/readyz", proc.popen, timeout)
    except (RuntimeError, TimeoutError) as err:
        raise RuntimeError(f"{err}\n--- {name} log ---\n{proc.log_tail()}") from err
    proc.extra["ready_seconds"] = time.monotonic() - started
    return proc


class MemorySampler:
    """Samples a process's VmRSS every ``interval`` seconds on a thread; keeps the max."""

    def __init__(self, proc: Proc, interval: float = 0.2, wal: Path | None = None) -> None:
        self.proc = proc
        self.interval = interval
        self.wal = wal  # also sample this file's size (the outbox's -wal)
        self.max_rss_mib = 0.0
        self.max_anon_mib = 0.0
        self.max_wal_mib = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{proc.name}", daemon=True)

    def _run(self) -> None:
        # Bounded by the stop event and by a generous count (an hour of samples).
        for _ in range(int(3600 / self.interval)):
            memory = self.proc.memory()
            self.max_rss_mib = max(self.max_rss_mib, memory["rss_mib"])
            self.max_anon_mib = max(self.max_anon_mib, memory["anon_mib"])
            if self.wal is not None:
                with contextlib.suppress(OSError):
                    self.max_wal_mib = max(self.max_wal_mib, self.wal.stat().st_size / 2**20)
            self.samples += 1
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


async def serve_until_signal(runner: Any, port: int) -> None:
    """Serve an aiohttp ``AppRunner`` on loopback until SIGTERM or SIGINT."""
    import asyncio

    from aiohttp import web

    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
