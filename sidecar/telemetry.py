"""Telemetry: Prometheus metrics and OpenTelemetry spans for every event.

Owns the metric definitions (on a registry of our own, never the global
one) and the span shapes: the ingest span whose context is stored with each
event, the client span of each delivery request (linked to every event it
carries), and the per-event outcome span in the event's own trace.

Providers are injected; this module never sets a global provider. The entry
point builds the real ones from the ``OTEL_*`` environment
(:func:`tracer_provider_from_env`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sidecar import __version__

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
# A batch holds up to 1,000 events and its span links to each of them.
MAX_LINKS = 1000
COVERAGE_FIELDS = (
    "em", "ph", "fn", "ln", "external_id", "fbc", "fbp", "client_ip_address",
    "client_user_agent",
)


class Metrics:
    """Every Prometheus metric the sidecar exports."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.received = Counter(
            "capi_messages_received", "Messages received on the ingest API", ["type"],
            registry=registry)
        self.accepted = Counter(
            "capi_messages_accepted", "Messages stored durably in the outbox", ["type"],
            registry=registry)
        self.rejected = Counter(
            "capi_messages_rejected", "Messages refused by validation", ["reason"],
            registry=registry)
        self.duplicates = Counter(
            "capi_messages_duplicate", "Messages whose messageId was already stored",
            registry=registry)
        self.generated_ids = Counter(
            "capi_message_ids_generated", "Messages that arrived without a messageId",
            registry=registry)
        self.requests_refused = Counter(
            "capi_ingest_refused", "Ingest requests answered 4xx/5xx as a whole",
            ["status"], registry=registry)
        self.ingest_latency = Histogram(
            "capi_ingest_request_seconds", "Ingest request latency (until durable)",
            ["endpoint"], registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
        self.outbox_depth = Gauge(
            "capi_outbox_pending", "Pending deliveries", ["destination"], registry=registry)
        self.oldest_pending = Gauge(
            "capi_outbox_oldest_pending_age_seconds", "Age of the oldest pending event",
            ["destination"], registry=registry)
        self.deliveries = Counter(
            "capi_deliveries", "Events by delivery outcome",
            ["destination", "outcome", "code"], registry=registry)
        self.graph_requests = Counter(
            "capi_graph_requests", "Requests to the Graph API by verdict",
            ["destination", "verdict", "code"], registry=registry)
        self.graph_latency = Histogram(
            "capi_graph_request_seconds", "Graph API request latency", ["destination"],
            registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
        self.batch_size = Histogram(
            "capi_batch_events", "Events per Graph API request", ["destination"],
            registry=registry, buckets=(1, 5, 10, 50, 100, 250, 500, 1000))
        self.paused = Gauge(
            "capi_destination_paused", "1 while a destination is paused on credentials",
            ["destination"], registry=registry)
        self.coverage = Counter(
            "capi_user_data_field_events", "Delivered events carrying a user_data field",
            ["destination", "field"], registry=registry)
        self.delivered_events = Counter(
            "capi_user_data_events", "Delivered events (denominator for coverage)",
            ["destination"], registry=registry)


def tracer_provider_from_env() -> TracerProvider | None:
    """An SDK provider exporting over OTLP/HTTP when ``OTEL_*`` says so, else None."""
    exporter_names = os.environ.get("OTEL_TRACES_EXPORTER", "")
    has_endpoint = bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    if exporter_names.strip() == "none" or not (has_endpoint or "otlp" in exporter_names):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = new_tracer_provider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def new_tracer_provider() -> TracerProvider:
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "capi-sidecar"),
                                "service.version": __version__})
    return TracerProvider(resource=resource, span_limits=SpanLimits(max_links=MAX_LINKS))


class Telemetry:
    """The sidecar's metrics and tracer, handed to every stage."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.provider = tracer_provider
        self.tracer = (tracer_provider or trace.NoOpTracerProvider()).get_tracer(
            "sidecar", __version__)
        self.metrics = Metrics(registry or CollectorRegistry(auto_describe=True))

    # ---------------------------------------------------------------- ingest
    @contextmanager
    def ingest_span(self, endpoint: str, headers: Mapping[str, str]) -> Iterator[trace.Span]:
        """The span of one ingest request, continuing an incoming ``traceparent``."""
        parent = _PROPAGATOR.extract(carrier=headers)
        with self.tracer.start_as_current_span(
            "capi ingest", context=parent, kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "capi-sidecar", "messaging.operation.type": "send",
                        "messaging.destination.name": "outbox", "url.path": endpoint},
        ) as span:
            yield span

    @staticmethod
    def traceparent(span: trace.Span, headers: Mapping[str, str]) -> str | None:
        """The W3C context to store with each event of this request."""
        ctx = span.get_span_context()
        if ctx.is_valid:
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
            return carrier.get("traceparent")
        return headers.get("traceparent")

    # -------------------------------------------------------------- delivery
    @contextmanager
    def delivery_span(
        self, destination: str, pixel_id: str, traceparents: Sequence[str | None],
        message_ids: Sequence[str], resend: int,
    ) -> Iterator[trace.Span]:
        links = []
        for tp, mid in zip(traceparents, message_ids, strict=True):
            ctx = _span_context(tp)
            if ctx is not None:
                links.append(Link(ctx, {"messaging.message.id": mid}))
        attributes: dict[str, Any] = {
            "messaging.system": "meta_capi",
            "messaging.operation.type": "send",
            "messaging.destination.name": pixel_id,
            "messaging.batch.message_count": len(message_ids),
            "capi.destination": destination,
        }
        if resend:
            attributes["http.request.resend_count"] = resend
        with self.tracer.start_as_current_span(
            "send meta_capi", kind=SpanKind.CLIENT, links=links, attributes=attributes,
            context=trace.set_span_in_context(trace.INVALID_SPAN),
        ) as span:
            yield span

    def outcome(
        self, *, traceparent: str | None, message_id: str, event_name: str | None,
        destination: str, outcome: str, code: int | None = None, reason: str | None = None,
    ) -> None:
        """Record an event's outcome (or a failed attempt) in the event's own trace."""
        if self.provider is None:
            return
        parent_ctx = _span_context(traceparent)
        parent = trace.set_span_in_context(
            trace.NonRecordingSpan(parent_ctx) if parent_ctx else trace.INVALID_SPAN)
        attrs: dict[str, Any] = {
            "messaging.system": "meta_capi", "messaging.operation.type": "settle",
            "messaging.message.id": message_id, "capi.destination": destination,
            "capi.outcome": outcome,
        }
        if event_name:
            attrs["meta.event_name"] = event_name
        if code is not None:
            attrs["meta.error.code"] = code
        if reason:
            attrs["capi.reason"] = reason[:300]
        span = self.tracer.start_span(f"capi {outcome}", context=parent,
                                      kind=SpanKind.INTERNAL, attributes=attrs)
        if outcome in ("dead", "retry"):
            span.set_status(Status(StatusCode.ERROR, reason or outcome))
        span.end()

    def record_coverage(self, destination: str, user_data_fields: Sequence[Sequence[str]]) -> None:
        m = self.metrics
        m.delivered_events.labels(destination).inc(len(user_data_fields))
        counts: dict[str, int] = {}
        for fields in user_data_fields:
            for f in fields:
                counts[f] = counts.get(f, 0) + 1
        for f in COVERAGE_FIELDS:
            if counts.get(f):
                m.coverage.labels(destination, f).inc(counts[f])

    def shutdown(self) -> None:
        """Flush and stop span export (called last on shutdown)."""
        provider = self.provider
        if isinstance(provider, TracerProvider):
            provider.force_flush(5_000)
            provider.shutdown()


def _span_context(traceparent: str | None) -> trace.SpanContext | None:
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent}
    ctx = trace.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
    return ctx if ctx.is_valid else None
