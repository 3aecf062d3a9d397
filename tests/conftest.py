"""Shared fixtures: a real sandbox and a real sidecar on free loopback ports."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sidecar.app import RUNNER_OPTIONS, RUNTIME, Runtime, create_app, create_ops_app
from sidecar.config import Settings, load_settings
from sidecar.sandbox import SandboxState, start_sandbox
from sidecar.telemetry import new_tracer_provider

TOKEN = "test-token-a1b2c3"
PIXEL = "1234567890"


def track(event: str = "Order Completed", **kw: Any) -> dict[str, Any]:
    """A recent track message with an email (raw, messy spacing), IP and user agent."""
    msg: dict[str, Any] = {
        "type": "track",
        "messageId": str(uuid.uuid4()),
        "userId": "user-1",
        "event": event,
        "properties": {"total": 42.5, "currency": "eur", "email": " Jane@Example.com "},
        "context": {"ip": "203.0.113.9", "userAgent": "Mozilla/5.0 test"},
        "timestamp": datetime.now(UTC).isoformat(),
    }
    msg.update(kw)
    return msg


@dataclass
class Sandbox:
    url: str
    state: SandboxState


@dataclass
class Sidecar:
    url: str
    ops_url: str
    runtime: Runtime
    sandbox: Sandbox | None
    spans: InMemorySpanExporter
    session: aiohttp.ClientSession

    async def post(self, path: str, body: Any, **kw: Any) -> aiohttp.ClientResponse:
        resp = await self.session.post(self.url + path, json=body, **kw)
        await resp.read()
        return resp

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("condition not met in time")
            await asyncio.sleep(0.02)

    async def event(self, message_id: str) -> dict[str, Any] | None:
        assert self.runtime.outbox is not None
        return await self.runtime.outbox.event_status(message_id)


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    runner, url, state = await start_sandbox("127.0.0.1", 0, access_token=TOKEN, pixel_id=PIXEL)
    yield Sandbox(url, state)
    await runner.cleanup()


@pytest.fixture
async def graph() -> AsyncIterator[tuple[str, SandboxState]]:
    """A sandbox for tests that run the sidecar as a subprocess."""
    runner, url, state = await start_sandbox(access_token=TOKEN, pixel_id=PIXEL)
    yield url, state
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def sidecar_settings(tmp_path: Path, sandbox: Sandbox | None, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "db_path": tmp_path / "outbox.db",
        "listen": "127.0.0.1:0",
        "ops_listen": "127.0.0.1:0",
        "linger_ms": 5,
        "backoff_base_seconds": 0.05,
        "backoff_cap_seconds": 0.2,
        "paused_retry_seconds": 0.3,
        "drain_budget_seconds": 2.0,
        "lease_seconds": 30.0,
        "request_timeout_seconds": 5.0,
    }
    if sandbox is not None and "destinations" not in overrides:
        base.update(pixel_id=PIXEL, access_token=TOKEN, graph_url=sandbox.url)
    base.update(overrides)
    return load_settings(**base)


@pytest.fixture
def span_exporter() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()


@pytest.fixture
async def make_sidecar(
    tmp_path: Path, span_exporter: InMemorySpanExporter
) -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(sandbox: Sandbox | None, **overrides: Any) -> Sidecar:
        settings = sidecar_settings(tmp_path, sandbox, **overrides)
        provider: TracerProvider = new_tracer_provider()
        provider.add_span_processor(SimpleSpanProcessor(span_exporter))
        app = create_app(settings, tracer_provider=provider)
        runner = web.AppRunner(app, shutdown_timeout=2.0, **RUNNER_OPTIONS)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ops_runner = web.AppRunner(create_ops_app(app))
        await ops_runner.setup()
        ops_site = web.TCPSite(ops_runner, "127.0.0.1", 0)
        await ops_site.start()
        runners.extend([runner, ops_runner])
        session = aiohttp.ClientSession()
        sessions.append(session)
        port = runner.addresses[0][1]
        ops_port = ops_runner.addresses[0][1]
        return Sidecar(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ops_port}",
                       app[RUNTIME], sandbox, span_exporter, session)

    async def stop_all() -> None:
        for s in sessions:
            await s.close()
        for r in runners:
            await r.cleanup()

    yield start
    await stop_all()


@pytest.fixture
async def sidecar(sandbox: Sandbox, make_sidecar: Any) -> AsyncIterator[Sidecar]:
    yield await make_sidecar(sandbox)
