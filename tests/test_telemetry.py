"""Tracing: the exact span tree of an event, from the app's traceparent to Meta's answer.

A real sidecar delivers to the real sandbox; spans land in an in-memory
exporter (conftest). Span names and attributes are the contract that
docs/observability.md documents.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import INVALID_SPAN, SpanKind, StatusCode

from sidecar.outbox import Claimed, Expired
from sidecar.sandbox_faults import Fault
from sidecar.telemetry import OUTCOME_CHUNK, Telemetry, _span_context, new_tracer_provider
from tests.conftest import PIXEL, TOKEN, Sidecar, track

APP_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
APP_SPAN = "00f067aa0ba902b7"


def app_traceparent(span: str = APP_SPAN, trace: str = APP_TRACE) -> dict[str, str]:
    return {"traceparent": f"00-{trace}-{span}-01"}


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = named(spans, name)
    assert len(found) == 1, f"{len(found)} spans named {name!r} in {[s.name for s in spans]}"
    return found[0]


def traceparent_of(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-01"


def ids(ctx: Any) -> tuple[int, int]:
    """A span context's identity (a stored context comes back as remote)."""
    return (ctx.trace_id, ctx.span_id)


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


async def settle(sidecar: Sidecar, outcome: str, count: int = 1) -> list[ReadableSpan]:
    """Wait for ``count`` outcome spans of one kind; return every finished span."""
    name = f"{outcome} meta_capi"
    await sidecar.wait_for(lambda: len(named(sidecar.spans.get_finished_spans(), name)) >= count)
    return list(sidecar.spans.get_finished_spans())


async def test_an_events_trace_runs_from_the_apps_traceparent_through_ingest_to_its_outcome(
    sidecar: Sidecar,
) -> None:
    msg = track()
    resp = await sidecar.post("/v1/track", msg, headers=app_traceparent())
    assert resp.status == 200
    spans = await settle(sidecar, "delivered")
    assert sorted(s.name for s in spans) == sorted(
        ["POST /v1/track", "send capi_outbox", "send meta_capi", "POST", "delivered meta_capi"]
    )
    server = one(spans, "POST /v1/track")
    producer = one(spans, "send capi_outbox")
    send = one(spans, "send meta_capi")
    http = one(spans, "POST")
    outcome = one(spans, "delivered meta_capi")

    # The app's trace continues into the sidecar: SERVER, then PRODUCER.
    assert server.kind is SpanKind.SERVER
    assert trace_id(server) == int(APP_TRACE, 16)
    assert parent_id(server) == int(APP_SPAN, 16)
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/v1/track"
    assert server.attributes["http.response.status_code"] == 200
    assert producer.kind is SpanKind.PRODUCER
    assert trace_id(producer) == int(APP_TRACE, 16)
    assert parent_id(producer) == span_id(server)
    assert producer.attributes is not None
    assert producer.attributes["messaging.message.id"] == msg["messageId"]

    # The event row keeps the PRODUCER span's context.
    stored = await sidecar.event(msg["messageId"])
    assert stored is not None
    assert stored["traceparent"] == traceparent_of(producer)

    # The Graph API request is a root CLIENT span linked to the event's context.
    assert sidecar.sandbox is not None
    answered = sidecar.sandbox.state.requests[-1]
    assert send.kind is SpanKind.CLIENT
    assert send.parent is None
    assert trace_id(send) != int(APP_TRACE, 16)
    assert [(ids(link.context), dict(link.attributes or {})) for link in send.links] == [
        (ids(producer.context), {"messaging.message.id": msg["messageId"]})
    ]
    assert dict(send.attributes or {}) == {
        "messaging.system": "meta_capi",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": PIXEL,
        "messaging.batch.message_count": 1,
        "http.request.method": "POST",
        "http.response.status_code": 200,
        "meta.fbtrace_id": answered.fbtrace_id,
        "meta.events_received": 1,
        "capi.destination": "default",
    }
    # Under it, the aiohttp client instrumentation's HTTP span, without the token.
    assert http.kind is SpanKind.CLIENT
    assert parent_id(http) == span_id(send)
    assert http.attributes is not None
    assert http.attributes["url.full"] == (
        f"{sidecar.sandbox.url}/{answered.version}/{PIXEL}/events"
    )
    assert http.attributes["http.response.status_code"] == 200

    # The outcome lands in the app's trace, under the ingest span.
    assert trace_id(outcome) == int(APP_TRACE, 16)
    assert parent_id(outcome) == span_id(producer)
    assert outcome.attributes is not None
    assert outcome.attributes["messaging.message.id"] == msg["messageId"]
    assert outcome.attributes["messaging.operation.type"] == "settle"
    assert outcome.attributes["messaging.destination.name"] == PIXEL
    assert outcome.attributes["meta.event_name"] == "Purchase"
    assert outcome.attributes["capi.outcome"] == "delivered"
    assert outcome.attributes["meta.fbtrace_id"] == answered.fbtrace_id
    assert [ids(link.context) for link in outcome.links] == [ids(send.context)]
    assert outcome.status.status_code is StatusCode.UNSET


async def test_without_an_incoming_traceparent_the_ingest_span_starts_the_trace(
    sidecar: Sidecar,
) -> None:
    msg = track()
    await sidecar.post("/v1/track", msg)
    spans = await settle(sidecar, "delivered")
    server, producer = one(spans, "POST /v1/track"), one(spans, "send capi_outbox")
    outcome = one(spans, "delivered meta_capi")
    assert server.parent is None
    assert trace_id(producer) == trace_id(server) == trace_id(outcome)
    assert parent_id(outcome) == span_id(producer)


async def test_a_batch_span_links_every_event_beyond_the_sdks_default_of_128(
    sandbox: Any, make_sidecar: Any
) -> None:
    sidecar: Sidecar = await make_sidecar(sandbox, batch_size=1000)
    assert sidecar.runtime.drainer is not None
    # Hold the destination so that three requests' events leave in one batch.
    target = sidecar.runtime.drainer.targets["default"]
    target.hold_until = time.time() + 0.6
    expected: dict[str, str] = {}
    for n in range(3):
        batch = [track() for _ in range(100)]
        parent = f"{n + 1:016x}"
        resp = await sidecar.post("/v1/batch", {"batch": batch}, headers=app_traceparent(parent))
        assert resp.status == 200
        producer = named(sidecar.spans.get_finished_spans(), "send capi_outbox")[-1]
        assert producer.attributes is not None
        assert producer.attributes["messaging.batch.message_count"] == 100
        expected.update((m["messageId"], traceparent_of(producer)) for m in batch)
    spans = await settle(sidecar, "delivered", 300)
    (send,) = named(spans, "send meta_capi")
    assert send.attributes is not None
    assert send.attributes["messaging.batch.message_count"] == 300
    assert len(send.links) == 300
    linked = {
        str((link.attributes or {})["messaging.message.id"]): ids(link.context)
        for link in send.links
    }
    assert linked == {mid: ids(_span_context(tp)) for mid, tp in expected.items()}
    assert len({span for _trace, span in linked.values()}) == 3


async def test_a_failed_attempt_and_the_retry_are_both_in_the_events_trace(
    sidecar: Sidecar,
) -> None:
    assert sidecar.sandbox is not None
    sidecar.sandbox.state.inject(Fault(status=500, times=1))
    msg = track()
    await sidecar.post("/v1/track", msg, headers=app_traceparent())
    spans = await settle(sidecar, "delivered")
    producer = one(spans, "send capi_outbox")
    first, second = sorted(named(spans, "send meta_capi"), key=lambda s: s.start_time or 0)
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["http.response.status_code"] == 500
    assert first.attributes["error.type"] == "500"
    assert first.attributes["meta.error.code"] == 1
    assert "http.request.resend_count" not in first.attributes
    assert first.status.status_code is StatusCode.ERROR
    assert second.attributes["http.request.resend_count"] == 1
    assert second.attributes["http.response.status_code"] == 200
    assert second.status.status_code is StatusCode.UNSET

    retry, delivered = one(spans, "retry meta_capi"), one(spans, "delivered meta_capi")
    for outcome in (retry, delivered):
        assert parent_id(outcome) == span_id(producer)
        assert trace_id(outcome) == int(APP_TRACE, 16)
    assert retry.attributes is not None and delivered.attributes is not None
    assert retry.attributes["meta.error.code"] == 1
    assert retry.attributes["capi.attempts"] == 1
    assert retry.attributes["meta.fbtrace_id"] == first.attributes["meta.fbtrace_id"]
    assert retry.status.status_code is StatusCode.ERROR
    assert [ids(link.context) for link in retry.links] == [ids(first.context)]
    assert delivered.attributes["capi.attempts"] == 2
    assert [ids(link.context) for link in delivered.links] == [ids(second.context)]


async def test_a_poison_event_is_dead_in_its_own_trace_and_the_rest_delivered(
    sidecar: Sidecar,
) -> None:
    assert sidecar.sandbox is not None
    good, bad = [track() for _ in range(2)], track()
    sidecar.sandbox.state.inject(Fault(reject_event_ids={bad["messageId"]}, times=0))
    headers = app_traceparent()
    await sidecar.post("/v1/batch", {"batch": [good[0], bad, good[1]]}, headers=headers)
    spans = await settle(sidecar, "dead")
    spans = await settle(sidecar, "delivered", 2)
    producer = one(spans, "send capi_outbox")
    dead = one(spans, "dead meta_capi")
    assert parent_id(dead) == span_id(producer)
    assert dead.attributes is not None
    assert dead.attributes["messaging.message.id"] == bad["messageId"]
    assert dead.attributes["meta.error.code"] == 100
    assert dead.attributes["meta.error.subcode"] == 2804001
    assert str(dead.attributes["capi.reason"]).startswith("rejected by Meta")
    assert dead.attributes["meta.fbtrace_id"]
    assert dead.status.status_code is StatusCode.ERROR
    delivered = {
        (s.attributes or {})["messaging.message.id"] for s in named(spans, "delivered meta_capi")
    }
    assert delivered == {m["messageId"] for m in good}


async def test_a_credentials_error_records_paused_attempts_until_it_is_fixed(
    sidecar: Sidecar,
) -> None:
    assert sidecar.sandbox is not None
    sidecar.sandbox.state.access_token = "a-different-token"
    msg = track()
    await sidecar.post("/v1/track", msg, headers=app_traceparent())
    spans = await settle(sidecar, "paused")
    paused = named(spans, "paused meta_capi")[0]
    assert paused.attributes is not None
    assert paused.attributes["meta.error.code"] == 190
    assert paused.attributes["messaging.message.id"] == msg["messageId"]
    sidecar.sandbox.state.access_token = TOKEN
    spans = await settle(sidecar, "delivered")
    assert parent_id(one(spans, "delivered meta_capi")) == span_id(one(spans, "send capi_outbox"))


async def test_identify_is_skipped_in_its_trace_at_ingest(sidecar: Sidecar) -> None:
    mid = str(uuid.uuid4())
    body = {"messageId": mid, "userId": "u1", "traits": {"plan": "pro"}}
    await sidecar.post("/v1/identify", body, headers=app_traceparent())
    spans = await settle(sidecar, "skipped")
    skipped, producer = one(spans, "skipped meta_capi"), one(spans, "send capi_outbox")
    assert parent_id(skipped) == span_id(producer)
    assert skipped.attributes is not None
    assert skipped.attributes["messaging.message.id"] == mid
    assert skipped.attributes["capi.reason"]
    assert skipped.status.status_code is StatusCode.UNSET


async def test_a_refused_ingest_request_is_an_error_only_when_it_is_the_sidecars_fault(
    sidecar: Sidecar,
) -> None:
    await sidecar.post("/v1/track", {"type": "track"})  # 400: the caller's fault
    assert sidecar.runtime.outbox is not None
    sidecar.runtime.outbox.pending = sidecar.runtime.outbox.cap  # 503: ours
    try:
        await sidecar.post("/v1/track", track())
    finally:
        sidecar.runtime.outbox.pending = 0
    bad, full = named(sidecar.spans.get_finished_spans(), "POST /v1/track")
    assert (bad.attributes or {})["http.response.status_code"] == 400
    assert bad.status.status_code is StatusCode.UNSET
    assert (full.attributes or {})["http.response.status_code"] == 503
    assert (full.attributes or {})["error.type"] == "503"
    assert full.status.status_code is StatusCode.ERROR


def test_without_a_provider_nothing_is_traced_but_the_apps_context_is_kept() -> None:
    telemetry = Telemetry()
    assert telemetry.server_middlewares() == []
    assert telemetry.client_trace_configs() == []
    incoming = f"00-{APP_TRACE}-{APP_SPAN}-01"
    with telemetry.ingest_span("/v1/track", {"traceparent": incoming}) as span:
        assert not span.is_recording()
        assert Telemetry.traceparent(span, {"traceparent": incoming}) == incoming
    assert Telemetry.traceparent(INVALID_SPAN, {"traceparent": incoming}) == incoming
    assert Telemetry.traceparent(INVALID_SPAN, {"traceparent": "garbage"}) is None
    assert Telemetry.traceparent(INVALID_SPAN, {}) is None


def test_a_stored_traceparent_is_parsed_strictly() -> None:
    good = f"00-{APP_TRACE}-{APP_SPAN}-01"
    ctx = _span_context(good)
    assert ctx is not None and ctx.is_remote and ctx.trace_flags.sampled
    assert ctx.trace_id == int(APP_TRACE, 16)
    assert _span_context(good[:-2] + "00") is not None
    for bad in [
        None,
        "",
        good.upper(),
        good + "-extra",
        f"ff-{APP_TRACE}-{APP_SPAN}-01",
        f"00-{'0' * 32}-{APP_SPAN}-01",
        f"00-{APP_TRACE}-{'0' * 16}-01",
        f"00-{APP_TRACE[:-1]}g-{APP_SPAN}-01",
    ]:
        assert _span_context(bad) is None, bad


def in_memory() -> tuple[Telemetry, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = new_tracer_provider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Telemetry(tracer_provider=provider), exporter


async def test_a_large_batchs_outcome_spans_are_spread_over_loop_turns_and_flushed_on_close() -> (
    None
):
    telemetry, exporter = in_memory()
    parent = f"00-{APP_TRACE}-{APP_SPAN}-01"
    batch = [
        Claimed(i, f"m{i}", b"{}", 1, parent, "Purchase") for i in range(2 * OUTCOME_CHUNK + 50)
    ]
    telemetry.settled("default", batch, "delivered")
    assert len(exporter.get_finished_spans()) == OUTCOME_CHUNK  # ingest may run in between
    await asyncio.sleep(0)
    assert len(exporter.get_finished_spans()) == 2 * OUTCOME_CHUNK
    await telemetry.close()  # shutdown records what is left before flushing
    spans = exporter.get_finished_spans()
    assert [(s.attributes or {})["messaging.message.id"] for s in spans] == [
        c.message_id for c in batch
    ]
    assert {parent_id(s) for s in spans} == {int(APP_SPAN, 16)}


def test_an_event_expired_undelivered_is_dead_in_its_trace() -> None:
    telemetry, exporter = in_memory()
    telemetry.expired([Expired("default", "m1", f"00-{APP_TRACE}-{APP_SPAN}-01", "Purchase")])
    (span,) = exporter.get_finished_spans()
    assert span.name == "dead meta_capi"
    assert trace_id(span) == int(APP_TRACE, 16)
    assert (span.attributes or {})["capi.reason"] == "expired: older than Meta's 7-day limit"
    assert span.status.status_code is StatusCode.ERROR
    assert telemetry.status()["destinations"]["default"]["outcomes"]["dead"] == 1
