"""The no-loss invariant every fault test ends with, and the harness around it.

After quiescence, every acknowledged messageId is in exactly one final state
per destination (delivered, skipped, or dead with a reason); nothing is
pending or leased; every delivered event reached its sandbox with the same
event_id; no dead event was ever accepted by a sandbox. The database is read
directly (a second connection, as an operator's sqlite3 shell would), so the
same check serves an in-process sidecar and a ``capi-sidecar serve``
subprocess.

Also here: wait-for-condition helpers (no sleeping as synchronisation),
message builders, and :class:`SidecarProcess` for the crash and shutdown
tests that run the real command.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from sidecar.sandbox import SandboxState

FINAL = ("delivered", "skipped", "dead")


# ------------------------------------------------------------------ waiting
async def eventually(
    predicate: Callable[[], Any | Awaitable[Any]],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> Any:
    """Poll ``predicate`` (sync or async) until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(interval)


def _connect(db_path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(db_path, timeout=5.0)
    con.execute("PRAGMA query_only=ON")
    return con


def count_unsettled(db_path: Path) -> int:
    """Deliveries still pending (in any destination)."""
    with closing(_connect(db_path)) as con:
        return int(con.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'")
                   .fetchone()[0])


async def wait_until_settled(db_path: Path, *, timeout: float = 15.0) -> None:
    """Quiescence: no delivery is pending any more."""
    await eventually(lambda: count_unsettled(db_path) == 0, timeout=timeout,
                     what="every delivery in a final state")


def stored_message_ids(db_path: Path) -> set[str]:
    with closing(_connect(db_path)) as con:
        return {r[0] for r in con.execute("SELECT message_id FROM events")}


@dataclass(frozen=True)
class Row:
    state: str
    reason: str | None
    last_error: str | None
    leased: int
    attempts: int


def delivery_rows(db_path: Path) -> dict[tuple[str, str], Row]:
    """(messageId, destination) → its delivery row."""
    with closing(_connect(db_path)) as con:
        return {
            (mid, dest): Row(state, reason, err, leased, attempts)
            for mid, dest, state, reason, err, leased, attempts in con.execute(
                "SELECT e.message_id, d.destination, d.state, d.reason, d.last_error, "
                "d.leased, d.attempts FROM deliveries d JOIN events e ON e.id = d.event_id"
            )
        }


# --------------------------------------------------------------- invariant
@dataclass
class Settled:
    """What the invariant found, per destination, for further assertions."""

    delivered: dict[str, set[str]] = field(default_factory=dict)
    skipped: dict[str, set[str]] = field(default_factory=dict)
    dead: dict[str, dict[str, Row]] = field(default_factory=dict)


def assert_no_loss(
    db_path: Path,
    acknowledged: Iterable[str],
    sandboxes: Mapping[str, SandboxState],
    *,
    dead_never_accepted: bool = True,
) -> Settled:
    """Every acknowledged messageId ends in exactly one final state per destination.

    ``sandboxes`` maps each destination name to the sandbox it delivers to.
    """
    acked = set(acknowledged)
    rows = delivery_rows(db_path)
    with closing(_connect(db_path)) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    problems: list[str] = []
    stuck = {k: r for k, r in rows.items() if r.state not in FINAL or r.leased}
    if stuck:
        problems.append(f"{len(stuck)} rows not final or still leased, e.g. "
                        f"{next(iter(stuck.items()))}")
    out = Settled()
    accepted = {name: {e.get("event_id") for e in sb.events} for name, sb in sandboxes.items()}
    for dest in sandboxes:
        mine = {mid: r for (mid, d), r in rows.items() if d == dest}
        missing = acked - mine.keys()
        if missing:
            problems.append(f"{dest}: {len(missing)} acknowledged ids have no row, "
                            f"e.g. {sorted(missing)[:3]}")
        out.delivered[dest] = {m for m, r in mine.items() if r.state == "delivered"}
        out.skipped[dest] = {m for m, r in mine.items() if r.state == "skipped"}
        out.dead[dest] = {m: r for m, r in mine.items() if r.state == "dead"}
        lost = out.delivered[dest] - accepted[dest]
        if lost:
            problems.append(f"{dest}: {len(lost)} delivered ids never reached the sandbox, "
                            f"e.g. {sorted(lost)[:3]}")
        unexplained = [m for m, r in out.dead[dest].items() if not r.reason]
        if unexplained:
            problems.append(f"{dest}: dead without a reason: {unexplained[:3]}")
        if dead_never_accepted:
            wrongly = out.dead[dest].keys() & accepted[dest]
            if wrongly:
                problems.append(f"{dest}: dead but accepted by the sandbox: {sorted(wrongly)[:3]}")
    assert not problems, "no-loss invariant broken:\n" + "\n".join(problems)
    return out


# --------------------------------------------------------------- messages
def track(event: str = "Product Added", *, message_id: str | None = None,
          **properties: Any) -> dict[str, Any]:
    """A track message the sandbox accepts once mapped (no timestamp: event_time = receipt)."""
    return {
        "type": "track",
        "messageId": message_id or str(uuid.uuid4()),
        "userId": "user-1",
        "event": event,
        "properties": {"sku": "SKU-1", "price": 9.5, "currency": "USD", **properties},
        "context": {"ip": "203.0.113.9", "userAgent": "Mozilla/5.0 (invariants)"},
    }


def batch(n: int, event: str = "Product Added") -> list[dict[str, Any]]:
    return [track(event) for _ in range(n)]


async def post_batch(
    session: aiohttp.ClientSession, url: str, messages: list[dict[str, Any]]
) -> aiohttp.ClientResponse:
    resp = await session.post(url + "/v1/batch", json={"batch": messages})
    await resp.read()
    return resp


def http_date(ts: float) -> str:
    from email.utils import format_datetime

    return format_datetime(datetime.fromtimestamp(ts, UTC), usegmt=True)


# ------------------------------------------------------- sidecar subprocess
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SidecarProcess:
    """``capi-sidecar serve`` in a subprocess, configured through CAPI_* variables."""

    db_path: Path
    graph_url: str
    token: str
    pixel_id: str
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    ops_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{self.ops_port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPI_", "OTEL_"))}
        env.update(
            CAPI_DB_PATH=str(self.db_path),
            CAPI_LISTEN=f"127.0.0.1:{self.port}",
            CAPI_OPS_LISTEN=f"127.0.0.1:{self.ops_port}",
            CAPI_PIXEL_ID=self.pixel_id,
            CAPI_ACCESS_TOKEN=self.token,
            CAPI_GRAPH_URL=self.graph_url,
            CAPI_LINGER_MS="5",
            CAPI_BACKOFF_BASE_SECONDS="0.05",
            CAPI_BACKOFF_CAP_SECONDS="0.2",
            CAPI_REQUEST_TIMEOUT_SECONDS="5",
            CAPI_LEASE_SECONDS="30",
            CAPI_DRAIN_BUDGET_SECONDS="2",
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        self.port, self.ops_port = free_port(), free_port()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar.cli", "serve"],
                env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            )

    async def start_ready(self, session: aiohttp.ClientSession, timeout: float = 20.0) -> None:
        self.start()

        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"sidecar exited with {self.proc.returncode}:\n{self.log()}")
            try:
                async with session.get(self.ops_url + "/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, timeout=timeout, interval=0.05, what="sidecar ready")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    async def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        proc = self.proc
        await eventually(lambda: proc.poll() is not None, timeout=timeout, interval=0.02,
                         what="sidecar exit")
        return int(proc.returncode)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# ------------------------------------------------------ in-process sidecar
@contextlib.asynccontextmanager
async def running_sidecar(
    tmp_path: Path,
    sandbox: Any,
    *,
    clock: Callable[[], float] | None = None,
    **overrides: Any,
) -> AsyncIterator[Any]:
    """Like conftest's ``make_sidecar``, plus an injected clock; yields a ``Sidecar``."""
    from aiohttp import web
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from sidecar.app import RUNNER_OPTIONS, RUNTIME, create_app, create_ops_app
    from tests.conftest import Sidecar, sidecar_settings

    settings = sidecar_settings(tmp_path, sandbox, **overrides)
    kwargs: dict[str, Any] = {} if clock is None else {"clock": clock}
    app = create_app(settings, **kwargs)
    runner = web.AppRunner(app, shutdown_timeout=2.0, **RUNNER_OPTIONS)
    ops_runner = web.AppRunner(create_ops_app(app))
    session = aiohttp.ClientSession()
    try:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        await ops_runner.setup()
        await web.TCPSite(ops_runner, "127.0.0.1", 0).start()
        port, ops_port = runner.addresses[0][1], ops_runner.addresses[0][1]
        yield Sidecar(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ops_port}",
                      app[RUNTIME], sandbox, InMemorySpanExporter(), session)
    finally:
        await session.close()
        await runner.cleanup()
        await ops_runner.cleanup()


async def hammer(session: aiohttp.ClientSession, url: str, acked: set[str],
                 refused: list[int] | None = None, *, size: int = 20) -> None:
    """One client posting batches until the sidecar stops answering.

    The messageIds of every batch answered 200 go to ``acked``; the status
    of every other answer goes to ``refused`` (and the client backs off a
    moment, as an SDK would).
    """
    while True:
        messages = batch(size)
        try:
            resp = await post_batch(session, url, messages)
        except (TimeoutError, aiohttp.ClientError):
            return
        if resp.status == 200:
            acked.update(m["messageId"] for m in messages)
            continue
        if refused is not None:
            refused.append(resp.status)
        await asyncio.sleep(0.01)
