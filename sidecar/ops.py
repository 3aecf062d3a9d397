"""The ops listener: health, readiness, metrics, status and per-event lookup.

None of these depends on Meta: readiness means "this sidecar can accept and
store events", which stays true while Meta is down (that is what the outbox
is for) and while a destination is paused on bad credentials.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar import __version__
from sidecar.app import RUNTIME, Runtime, refresh_gauges


def ops_routes() -> list[web.RouteDef]:
    return [
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", metrics),
        web.get("/v1/status", status),
        web.get("/v1/events/{message_id}", event),
    ]


async def healthz(request: web.Request) -> web.Response:
    # Answering at all proves the event loop runs.
    return web.json_response({"ok": True})


def not_ready_reasons(rt: Runtime) -> list[str]:
    reasons = []
    if rt.shutting_down:
        reasons.append("shutting down")
    if rt.outbox is None or rt.ingest is None:
        reasons.append("starting")
    else:
        if rt.outbox.over_cap:
            reasons.append(f"outbox over its cap ({rt.outbox.pending} >= {rt.outbox.cap})")
        if rt.outbox.write_failed:
            reasons.append("the last write to the outbox failed")
    return reasons


async def readyz(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    # Probe first: a probe that finds room again clears an earlier write
    # failure, so readiness comes back on its own when disk space returns.
    writable = rt.outbox is not None and await rt.outbox.check_writable()
    reasons = not_ready_reasons(rt)
    if not reasons and not writable:
        reasons.append("the outbox database is not writable or has no room left")
    if reasons:
        return web.json_response({"ready": False, "reasons": reasons}, status=503)
    return web.json_response({"ready": True})


async def metrics(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    if rt.outbox is not None:
        await refresh_gauges(rt, final_states=False)
    body = generate_latest(rt.telemetry.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def status_document(rt: Runtime) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": __version__,
        "ready": not not_ready_reasons(rt),
        "not_ready_reasons": not_ready_reasons(rt),
        "uptime_seconds": round(rt.clock() - rt.started_at, 1),
        "geo_lookup": "on" if rt.geo is not None else "off (no geoip_db configured)",
        "sandbox": rt.sandbox_url,
        "destinations": {},
    }
    if rt.outbox is None or rt.drainer is None:
        return doc
    stats = await refresh_gauges(rt)
    doc["outbox"] = {"path": str(rt.outbox.path), "pending": rt.outbox.pending,
                     "cap": rt.outbox.cap}
    figures = rt.telemetry.status()  # counts since start and coverage shares
    doc["messages"] = figures["messages"]
    for name, info in rt.drainer.status().items():
        doc["destinations"][name] = {**info, **stats.get(name, {}),
                                     **figures["destinations"].get(name, {})}
    return doc


async def status(request: web.Request) -> web.Response:
    return web.json_response(await status_document(request.app[RUNTIME]))


async def event(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    if rt.outbox is None:
        return web.json_response({"error": "starting"}, status=503)
    found = await rt.outbox.event_status(request.match_info["message_id"])
    if found is None:
        return web.json_response({"error": "no event with this messageId"}, status=404)
    return web.json_response(found)
