"""The app factory: wires ingest, outbox, mapping, delivery and telemetry.

``create_app(settings)`` returns the ingest application; its resources are
opened by one ``cleanup_ctx`` each, in dependency order (telemetry → outbox
→ sandbox → HTTP client → drainer → housekeeping), and closed in reverse:
cleanup runs if and only if startup finished. ``create_ops_app(app)`` serves
health, readiness, metrics and status on the second listener from the same
state. ``serve`` runs both until SIGTERM/SIGINT and shuts down in the order
SPEC §5 gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry.trace import TracerProvider

from sidecar import __version__
from sidecar.config import DestinationSettings, Settings, parse_address
from sidecar.delivery import Drainer
from sidecar.errors import OutboxError
from sidecar.geo import GeoLookup, open_geo
from sidecar.ingest import Ingest
from sidecar.mapping import Mapper
from sidecar.mapping_pool import MappingPool
from sidecar.mapworker import config_frame
from sidecar.messages import Limits
from sidecar.outbox import Outbox
from sidecar.telemetry import Telemetry

log = logging.getLogger(__name__)
HOUSEKEEPING_SECONDS = 5.0
# aiohttp would inflate gzip bodies itself, without a limit on the inflated
# size; ingest inflates them with one (a gzip bomb gets 413).
RUNNER_OPTIONS: dict[str, Any] = {"auto_decompress": False, "access_log": None}
PURGE_EVERY_SECONDS = 60.0


@dataclass
class Runtime:
    """Everything the running sidecar holds; one per ingest app."""

    settings: Settings
    telemetry: Telemetry
    clock: Callable[[], float] = time.time
    outbox: Outbox | None = None
    drainer: Drainer | None = None
    ingest: Ingest | None = None
    destinations: tuple[DestinationSettings, ...] = ()
    geo: GeoLookup | None = None
    sandbox_url: str | None = None
    shutting_down: bool = False
    started_at: float = field(default_factory=time.time)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime", Runtime)


def create_app(
    settings: Settings,
    *,
    tracer_provider: TracerProvider | None = None,
    telemetry: Telemetry | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The ingest application; resources open on startup, close on cleanup."""
    app = web.Application(client_max_size=settings.max_request_bytes + 1024)
    rt = Runtime(settings=settings, clock=clock,
                 telemetry=telemetry or Telemetry(tracer_provider=tracer_provider))
    app[RUNTIME] = rt
    app.middlewares.extend(rt.telemetry.server_middlewares())
    if settings.geoip_db is not None:
        rt.geo = open_geo(settings.geoip_db)
    from sidecar.ingest import INGEST_PATHS

    for path in INGEST_PATHS:
        app.router.add_post(path, _ingest)
    app.cleanup_ctx.extend([_telemetry_ctx, _outbox_ctx, _sandbox_ctx, _delivery_ctx,
                            _housekeeping_ctx])
    return app


async def _ingest(request: web.Request) -> web.StreamResponse:
    ingest = request.app[RUNTIME].ingest
    if ingest is None:  # pragma: no cover - the listener starts after startup
        raise web.HTTPServiceUnavailable(text="starting")
    return await ingest.handle(request)


async def _telemetry_ctx(app: web.Application) -> AsyncIterator[None]:
    rt = app[RUNTIME]
    yield
    await rt.telemetry.close()


async def _outbox_ctx(app: web.Application) -> AsyncIterator[None]:
    rt = app[RUNTIME]
    s = rt.settings
    rt.outbox = Outbox(s.db_path, cap=s.outbox_cap, synchronous=s.synchronous, clock=rt.clock)
    await rt.outbox.open()
    log.info("outbox open at %s (%d pending deliveries)", s.db_path, rt.outbox.pending)
    yield
    await rt.outbox.close()


async def _sandbox_ctx(app: web.Application) -> AsyncIterator[None]:
    rt = app[RUNTIME]
    runner = None
    if rt.settings.needs_sandbox:
        from sidecar.sandbox import start_sandbox

        runner, rt.sandbox_url, _state = await start_sandbox("127.0.0.1", 0)
        log.warning(
            "NO META CREDENTIALS CONFIGURED: events are delivered to the in-process sandbox "
            "at %s, not to Meta. Set CAPI_PIXEL_ID and CAPI_ACCESS_TOKEN to deliver for real.",
            rt.sandbox_url,
        )
    rt.destinations = rt.settings.resolved_destinations(rt.sandbox_url)
    yield
    if runner is not None:
        await runner.cleanup()


async def _delivery_ctx(app: web.Application) -> AsyncIterator[None]:
    rt = app[RUNTIME]
    s = rt.settings
    assert rt.outbox is not None
    connector = aiohttp.TCPConnector(limit=s.concurrency * max(1, len(rt.destinations)) * 2)
    async with aiohttp.ClientSession(
        connector=connector, headers={"User-Agent": f"capi-sidecar/{__version__}"},
        json_serialize=lambda _o: "",  # bodies are pre-serialised bytes
        trace_configs=rt.telemetry.client_trace_configs(),
    ) as session:
        rt.drainer = Drainer(rt.outbox, rt.destinations, s, session, rt.telemetry, clock=rt.clock)
        mappers = {d.name: Mapper(d, rt.geo) for d in rt.destinations}
        limits = Limits(s.max_message_bytes, s.max_request_bytes, s.max_batch_messages)
        write_key = s.write_key.get_secret_value() if s.write_key else None
        pool = None
        if s.mapping_workers:
            pool = MappingPool(s.mapping_workers,
                               config_frame(list(rt.destinations), s.geoip_db, limits))
        rt.ingest = Ingest(rt.outbox, mappers, rt.telemetry, limits, write_key=write_key,
                           on_commit=rt.drainer.notify, clock=rt.clock, pool=pool)
        rt.drainer.start()
        for d in rt.destinations:
            log.info("delivering to destination %s (pixel %s) at %s", d.name, d.pixel_id,
                     d.graph_url)
        try:
            yield
        finally:
            if pool is not None:
                await pool.close()
        await rt.drainer.stop(s.drain_budget_seconds)


async def _housekeeping_ctx(app: web.Application) -> AsyncIterator[None]:
    rt = app[RUNTIME]
    task = asyncio.create_task(_housekeeping(rt), name="housekeeping")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _housekeeping(rt: Runtime) -> None:
    """Off the request path: WAL checkpoints, retention, gauges."""
    assert rt.outbox is not None
    s = rt.settings
    last_purge = 0.0
    while True:
        await asyncio.sleep(HOUSEKEEPING_SECONDS)
        try:
            now = rt.clock()
            await rt.outbox.checkpoint()
            # Expiry is not here: each destination's drain loop sweeps its own
            # too-old events every second (delivery.Drainer._expire).
            if now - last_purge >= PURGE_EVERY_SECONDS:
                last_purge = now
                await rt.outbox.purge(now=now, delivered_age=s.retention_delivered_seconds,
                                      dead_age=s.retention_dead_seconds)
            # The gauges need the pending side only: counting the retained
            # final rows every 5 s would cost in proportion to retention.
            await refresh_gauges(rt, final_states=False)
        except OutboxError:
            log.exception("housekeeping failed; will try again")


async def refresh_gauges(rt: Runtime, *, final_states: bool = True) -> dict[str, dict[str, Any]]:
    """Set the outbox gauges; the stats (``final_states``: with the final-state counts)."""
    assert rt.outbox is not None
    stats = await rt.outbox.stats(now=rt.clock(), final_states=final_states)
    m = rt.telemetry.metrics
    for dest in rt.destinations:
        entry = stats.get(dest.name, {})
        m.outbox_depth.labels(dest.name).set(entry.get("pending", 0))
        m.oldest_pending.labels(dest.name).set(entry.get("oldest_pending_age_seconds", 0.0))
    return stats


def create_ops_app(main: web.Application) -> web.Application:
    from sidecar.ops import ops_routes

    ops = web.Application()
    ops[RUNTIME] = main[RUNTIME]
    ops.add_routes(ops_routes())
    return ops


async def serve(settings: Settings, *, tracer_provider: TracerProvider | None = None) -> None:
    """Run both listeners until SIGTERM or SIGINT, then shut down in order."""
    app = create_app(settings, tracer_provider=tracer_provider)
    rt = app[RUNTIME]
    # shutdown_timeout bounds how long in-flight ingest requests may take.
    runner = web.AppRunner(app, shutdown_timeout=5.0, **RUNNER_OPTIONS)
    await runner.setup()
    ops_runner = web.AppRunner(create_ops_app(app), access_log=None)
    await ops_runner.setup()
    host, port = parse_address(settings.listen)
    ops_host, ops_port = parse_address(settings.ops_listen)
    await web.TCPSite(runner, host, port, backlog=1024).start()
    await web.TCPSite(ops_runner, ops_host, ops_port).start()
    log.info("capi-sidecar %s listening on %s (ops on %s)", __version__, settings.listen,
             settings.ops_listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: readiness false, ingest closed, draining up to %.0fs",
             settings.drain_budget_seconds)
    rt.shutting_down = True
    if rt.ingest is not None:
        rt.ingest.accepting = False
    await runner.cleanup()  # stops the listener, finishes in-flight requests, drains
    await ops_runner.cleanup()
    log.info("stopped")
