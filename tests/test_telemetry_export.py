"""Span export: the standard OTEL_* environment, OTLP over HTTP/protobuf, flushed on shutdown.

The collector here is a real aiohttp server on port 0 that decodes what it
receives with opentelemetry-proto, the way an OpenTelemetry Collector would.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.sdk.trace import TracerProvider

from sidecar.app import RUNNER_OPTIONS, create_app
from sidecar.telemetry import MAX_LINKS, tracer_provider_from_env
from tests.conftest import Sandbox, sidecar_settings
from tests.test_telemetry import APP_SPAN, APP_TRACE, app_traceparent, track


@dataclass
class Collector:
    url: str
    requests: list[ExportTraceServiceRequest] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    def spans(self) -> list[Any]:
        return [
            span
            for req in self.requests
            for rs in req.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]

    def resources(self) -> list[dict[str, Any]]:
        return [attrs(rs.resource.attributes) for req in self.requests for rs in req.resource_spans]


def attrs(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        assert isinstance(kv, KeyValue)
        kind = kv.value.WhichOneof("value")
        assert kind is not None
        out[kv.key] = getattr(kv.value, kind)
    return out


@pytest.fixture
def clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    yield monkeypatch


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    app = web.Application()
    found = Collector(url="")

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        found.requests.append(ExportTraceServiceRequest.FromString(await request.read()))
        found.headers.append(dict(request.headers))
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    found.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield found
    await runner.cleanup()


async def test_spans_reach_an_otlp_http_collector_configured_by_the_standard_environment(
    clean_otel_env: pytest.MonkeyPatch, collector: Collector, sandbox: Sandbox, tmp_path: Path
) -> None:
    env = clean_otel_env
    env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    env.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=shop-eu")
    env.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging")
    provider = tracer_provider_from_env()
    assert isinstance(provider, TracerProvider)
    app = create_app(sidecar_settings(tmp_path, sandbox), tracer_provider=provider)
    runner = web.AppRunner(app, **RUNNER_OPTIONS)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    msg = track()
    try:
        async with aiohttp.ClientSession() as session:
            resp = await session.post(url + "/v1/track", json=msg, headers=app_traceparent())
            assert resp.status == 200
        for _ in range(500):
            if sandbox.state.events:
                break
            await asyncio.sleep(0.01)
        assert sandbox.state.events
        # Nothing reached the collector yet: the batch processor waits 5 s by
        # default. Shutting the app down must flush.
        assert not collector.requests
    finally:
        await runner.cleanup()
    try:
        by_name = {span.name: span for span in collector.spans()}
        outcome = by_name["delivered meta_capi"]
        assert outcome.trace_id.hex() == APP_TRACE
        assert outcome.parent_span_id == by_name["send capi_outbox"].span_id
        assert attrs(outcome.attributes)["messaging.message.id"] == msg["messageId"]
        assert attrs(outcome.attributes)["meta.event_name"] == "Purchase"
        assert by_name["POST /v1/track"].parent_span_id.hex() == APP_SPAN
        send = attrs(by_name["send meta_capi"].attributes)
        assert send["messaging.batch.message_count"] == 1
        assert send["http.response.status_code"] == 200
        assert send["meta.fbtrace_id"] == sandbox.state.requests[-1].fbtrace_id
        (link,) = by_name["send meta_capi"].links
        assert link.span_id == by_name["send capi_outbox"].span_id
        assert attrs(link.attributes) == {"messaging.message.id": msg["messageId"]}
        resource = collector.resources()[0]
        assert resource["service.name"] == "capi-sidecar"
        assert resource["deployment.environment"] == "staging"
        assert collector.headers[0]["x-tenant"] == "shop-eu"
    finally:
        await asyncio.to_thread(provider.shutdown)


def test_export_is_off_when_no_otel_variable_asks_for_it(
    clean_otel_env: pytest.MonkeyPatch,
) -> None:
    assert tracer_provider_from_env() is None


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"},
        {"OTEL_SERVICE_NAME": "shop"},
    ],
)
def test_export_stays_off_when_the_environment_says_so(
    clean_otel_env: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for name, value in env.items():
        clean_otel_env.setenv(name, value)
    assert tracer_provider_from_env() is None


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "otlp"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/v1/traces"},
        {"OTEL_TRACES_EXPORTER": "console"},
    ],
)
def test_export_is_on_when_an_exporter_or_endpoint_is_named(
    clean_otel_env: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for name, value in env.items():
        clean_otel_env.setenv(name, value)
    provider = tracer_provider_from_env()
    assert isinstance(provider, TracerProvider)
    try:
        assert provider._span_limits.max_links == MAX_LINKS
        assert provider.resource.attributes["service.name"] == "capi-sidecar"
    finally:
        provider.shutdown()


def test_a_grpc_protocol_request_is_warned_about_and_served_over_http(
    clean_otel_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clean_otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    clean_otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    clean_otel_env.setenv("OTEL_SERVICE_NAME", "shop-sidecar")
    with caplog.at_level(logging.WARNING, logger="sidecar.telemetry"):
        provider = tracer_provider_from_env()
    assert provider is not None
    try:
        assert "not supported" in caplog.text
        assert provider.resource.attributes["service.name"] == "shop-sidecar"
    finally:
        provider.shutdown()
