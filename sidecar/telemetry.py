"""Telemetry: Prometheus metrics and OpenTelemetry spans for every event.

Owns the metric definitions (on a registry of our own, never the global
one), the user_data coverage figures, and the span shapes of an event's
life (attribute names follow the OpenTelemetry messaging and HTTP semantic
conventions; ours carry a ``capi.`` or ``meta.`` prefix):

- ``POST /v1/...`` (SERVER): one ingest request, continuing the app's
  ``traceparent``;
- ``send capi_outbox`` (PRODUCER), its child: the events being stored; its
  context is what each event row keeps (``traceparent``);
- ``send meta_capi`` (CLIENT): one Graph API request, a root span that LINKS
  to every event it carries (up to 1,000: the provider raises the SDK's
  default of 128 links), with the aiohttp client instrumentation's HTTP
  ``POST`` span below it;
- ``delivered|retry|paused|dead|skipped meta_capi``: each event's outcome
  (and each failed attempt), a child of the event's stored context, so the
  app's own trace shows what became of the event, down to Meta's
  ``fbtrace_id``.

Providers are injected; this module never sets a global provider. The entry
point builds the real one from the ``OTEL_*`` environment
(:func:`tracer_provider_from_env`); without one no span is made at all.
``docs/observability.md`` is the operator's view of this module.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
from collections import Counter as Tally
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

import yarl
from aiohttp import TraceConfig, web
from aiohttp.typedefs import Handler, Middleware
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sidecar import __version__

if TYPE_CHECKING:
    from sidecar.outbox import Claimed, Expired, NewEvent
    from sidecar.policy import Classified, GraphError

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
# A batch holds up to 1,000 events and its span links to each of them; the
# SDK keeps only 128 links per span unless told otherwise.
MAX_LINKS = 1000
COVERAGE_FIELDS = (
    "em",
    "ph",
    "fn",
    "ln",
    "external_id",
    "fbc",
    "fbp",
    "client_ip_address",
    "client_user_agent",
)
_COVERAGE_BITS = tuple((name, 1 << i) for i, name in enumerate(COVERAGE_FIELDS))
OUTCOMES = ("delivered", "retry", "paused", "dead", "skipped")
_FAILED = frozenset({"retry", "paused", "dead"})
_MAX_REASON = 300
OUTCOME_CHUNK = 100


def coverage_mask(user_data: Mapping[str, Any] | None) -> int:
    """The coverage fields an event carries, as a bitmask stored with its row.

    Computed at ingest from the payload ingest already holds as a dict, so the
    drainer counts coverage from one integer per event instead of parsing
    every payload it delivers.
    """
    if not user_data:
        return 0
    mask = 0
    for name, bit in _COVERAGE_BITS:
        if name in user_data:
            mask |= bit
    return mask


class Metrics:
    """Every Prometheus metric the sidecar exports (``docs/observability.md`` lists them)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.received = Counter(
            "capi_messages_received",
            "Messages received on the ingest API (valid or not)",
            ["type"],
            registry=r,
        )
        self.accepted = Counter(
            "capi_messages_accepted", "Messages stored durably in the outbox", ["type"], registry=r
        )
        self.rejected = Counter(
            "capi_messages_rejected", "Messages refused by validation", ["reason"], registry=r
        )
        self.duplicates = Counter(
            "capi_messages_duplicate", "Messages whose messageId was already stored", registry=r
        )
        self.generated_ids = Counter(
            "capi_message_ids_generated", "Messages that arrived without a messageId", registry=r
        )
        self.requests_refused = Counter(
            "capi_ingest_refused",
            "Ingest requests answered 4xx/5xx as a whole",
            ["status"],
            registry=r,
        )
        self.ingest_latency = Histogram(
            "capi_ingest_request_seconds",
            "Ingest request latency (until durable)",
            ["endpoint"],
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.outbox_depth = Gauge(
            "capi_outbox_pending", "Pending deliveries", ["destination"], registry=r
        )
        self.oldest_pending = Gauge(
            "capi_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending event",
            ["destination"],
            registry=r,
        )
        self.deliveries = Counter(
            "capi_deliveries",
            "Event outcomes per destination: delivered, retry, paused, dead, skipped",
            ["destination", "outcome", "code"],
            registry=r,
        )
        self.graph_requests = Counter(
            "capi_graph_requests",
            "Requests to the Graph API by verdict",
            ["destination", "verdict", "code"],
            registry=r,
        )
        self.graph_latency = Histogram(
            "capi_graph_request_seconds",
            "Graph API request latency",
            ["destination"],
            registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )
        self.batch_size = Histogram(
            "capi_batch_events",
            "Events per Graph API request",
            ["destination"],
            registry=r,
            buckets=(1, 5, 10, 50, 100, 250, 500, 1000),
        )
        self.paused = Gauge(
            "capi_destination_paused",
            "1 while a destination is paused on credentials",
            ["destination"],
            registry=r,
        )
        self.coverage = Counter(
            "capi_user_data_field_events",
            "Delivered events carrying a user_data field",
            ["destination", "field"],
            registry=r,
        )
        self.delivered_events = Counter(
            "capi_user_data_events",
            "Delivered events (denominator for coverage)",
            ["destination"],
            registry=r,
        )
        self.coverage_ratio = Gauge(
            "capi_user_data_coverage_ratio",
            "Share of delivered events carrying a user_data field, since start",
            ["destination", "field"],
            registry=r,
        )


def tracer_provider_from_env() -> TracerProvider | None:
    """An SDK provider exporting as ``OTEL_*`` says, or None when nothing asks for export.

    Export is on when ``OTEL_TRACES_EXPORTER`` names ``otlp`` (OTLP over
    HTTP/protobuf) or ``console``, or when an OTLP endpoint variable is set;
    ``OTEL_TRACES_EXPORTER=none`` or ``OTEL_SDK_DISABLED=true`` turn it off.
    The exporter, batch processor, sampler and resource read their own
    standard variables.
    """
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = {n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")} - {""}
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not names and endpoint:
        names = {"otlp"}
    if not names or "none" in names:
        return None
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = new_tracer_provider()
    for name in sorted(names):
        if name == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(endpoint)))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        else:
            log.warning("OTEL_TRACES_EXPORTER: %r is not supported (use otlp or console)", name)
    return provider


def _otlp_exporter(endpoint: str | None) -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    env = os.environ
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol.strip() != "http/protobuf":
        log.warning(
            "OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported; exporting with http/protobuf "
            "(point the endpoint at the collector's HTTP port, usually 4318)",
            protocol,
        )
    shown = yarl.URL(endpoint).with_user(None).with_query(None) if endpoint else "default"
    log.info("exporting traces over OTLP/HTTP (protobuf) to %s", shown)
    return OTLPSpanExporter()


def new_tracer_provider() -> TracerProvider:
    """A provider with our resource and room for a link per event of a full batch."""
    resource = Resource.create({"service.version": __version__})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "capi-sidecar"}))
    return TracerProvider(resource=resource, span_limits=SpanLimits(max_links=MAX_LINKS))


class _Outcome(NamedTuple):
    """One outcome span waiting to be recorded."""

    traceparent: str | None
    message_id: str
    event_name: str | None
    destination: str
    outcome: str
    extra: Mapping[str, Any]
    request: trace.SpanContext | None = None


# The Graph API request (span context, fbtrace_id) whose answer the current
# task is settling; set by ``request_done``, read by ``settled``.
_REQUEST: contextvars.ContextVar[tuple[Sequence[Any], trace.SpanContext, str | None]] = (
    contextvars.ContextVar("capi_graph_request")
)


class Telemetry:
    """The sidecar's metrics and tracer, handed to every stage."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.provider = tracer_provider
        self.tracing = tracer_provider is not None
        self.tracer = (tracer_provider or trace.NoOpTracerProvider()).get_tracer(
            "sidecar", __version__
        )
        self.metrics = Metrics(registry or CollectorRegistry(auto_describe=True))
        self._pixels: dict[str, str] = {}
        self._covered: dict[str, list[int]] = {}  # destination -> [events, per-field counts...]
        self._backlog: deque[_Outcome] = deque()
        self._emit_scheduled = False

    def add_destination(self, name: str, pixel_id: str) -> None:
        """Make a destination's series exist from the start (at zero)."""
        self._pixels[name] = pixel_id
        self._covered.setdefault(name, [0] * (1 + len(COVERAGE_FIELDS)))
        m = self.metrics
        m.paused.labels(name).set(0)
        m.delivered_events.labels(name)
        for field in COVERAGE_FIELDS:
            m.coverage.labels(name, field)
            m.coverage_ratio.labels(name, field)

    # ---------------------------------------------------------------- ingest
    def server_middlewares(self) -> list[Middleware]:
        """The SERVER span of each ingest request; none when tracing is off.

        Written here rather than taken from opentelemetry-instrumentation-aiohttp-server:
        its middleware (0.66b1) works only after a global ``instrument()``,
        which replaces ``aiohttp.web.Application`` process-wide and uses the
        global meter; a library must not do that.
        """
        if not self.tracing:
            return []
        tracer = self.tracer

        @web.middleware
        async def server_span(request: web.Request, handler: Handler) -> web.StreamResponse:
            route = _route(request)
            with tracer.start_as_current_span(
                f"{request.method} {route}" if route else request.method,
                context=_PROPAGATOR.extract(request.headers),
                kind=SpanKind.SERVER,
                attributes=_server_attributes(request, route),
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                try:
                    response = await handler(request)
                except web.HTTPException as exc:
                    _server_status(span, exc.status)
                    raise
                except Exception as exc:
                    span.set_attribute("error.type", type(exc).__qualname__)
                    span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
                    raise
                _server_status(span, response.status)
                return response

        return [server_span]

    @contextmanager
    def ingest_span(self, endpoint: str, headers: Mapping[str, str]) -> Iterator[trace.Span]:
        """The PRODUCER span of one ingest request: the context stored with its events."""
        # Under the SERVER span it is that span's child; alone, it continues
        # the incoming traceparent itself.
        current = trace.get_current_span().get_span_context()
        parent = None if current.is_valid else _PROPAGATOR.extract(headers)
        with self.tracer.start_as_current_span(
            "send capi_outbox",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "capi_sidecar",
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.destination.name": "capi_outbox",
                "capi.endpoint": endpoint,
            },
        ) as span:
            yield span

    @staticmethod
    def traceparent(span: trace.Span, headers: Mapping[str, str]) -> str | None:
        """The W3C context to store with each event of this request.

        The ingest span's when tracing is on; otherwise the app's own (when it
        sent a valid one), so the event still names the trace it came from.
        """
        ctx = span.get_span_context()
        if not ctx.is_valid:
            ctx = _span_context(headers.get("traceparent")) or ctx
        if not ctx.is_valid:
            return None
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"

    @staticmethod
    def describe_ingest(span: trace.Span, received: int, events: Sequence[NewEvent]) -> None:
        if not span.is_recording():
            return
        if received == 1 and len(events) == 1:
            span.set_attribute("messaging.message.id", events[0].message_id)
        else:
            span.set_attribute("messaging.batch.message_count", received)

    def ingested(self, events: Sequence[NewEvent], fresh: Sequence[bool]) -> None:
        """Count committed events; settle the deliveries ingest already decided."""
        m = self.metrics
        for ev, is_new in zip(events, fresh, strict=True):
            if not is_new:
                m.duplicates.inc()
                continue
            m.accepted.labels(ev.type).inc()
            for d in ev.deliveries:
                if d.state == "pending":
                    continue
                m.deliveries.labels(d.destination, d.state, "").inc()
                if self.tracing:
                    self._queue_outcomes(
                        [
                            _Outcome(
                                ev.traceparent,
                                ev.message_id,
                                ev.event_name,
                                d.destination,
                                d.state,
                                {"capi.reason": (d.reason or "")[:_MAX_REASON]},
                                None,
                            )
                        ]
                    )

    # -------------------------------------------------------------- delivery
    def client_trace_configs(self) -> list[TraceConfig]:
        """aiohttp client instrumentation for the Graph API session; none when tracing is off.

        The URL it records is stripped of query and user info. The access token
        is never in the URL in the first place (it travels in the body).
        """
        if not self.tracing:
            return []
        from opentelemetry.instrumentation._semconv import _StabilityMode
        from opentelemetry.instrumentation.aiohttp_client import create_trace_config
        from opentelemetry.metrics import NoOpMeterProvider

        return [
            create_trace_config(
                url_filter=_bare_url,
                tracer_provider=self.provider,
                meter_provider=NoOpMeterProvider(),
                sem_conv_opt_in_mode=_StabilityMode.HTTP,
            )
        ]

    @contextmanager
    def delivery_span(
        self,
        destination: str,
        pixel_id: str,
        traceparents: Sequence[str | None],
        message_ids: Sequence[str],
        resend: int,
    ) -> Iterator[trace.Span]:
        """The CLIENT span of one Graph API request, linked to every event it carries."""
        links: list[Link] = []
        if self.tracing:
            cache: dict[str | None, trace.SpanContext | None] = {}
            for tp, mid in zip(traceparents, message_ids, strict=True):
                ctx = cache[tp] if tp in cache else cache.setdefault(tp, _span_context(tp))
                if ctx is not None:
                    links.append(Link(ctx, {"messaging.message.id": mid}))
        attributes: dict[str, Any] = {
            "messaging.system": "meta_capi",
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": pixel_id,
            "messaging.batch.message_count": len(message_ids),
            "http.request.method": "POST",
            "capi.destination": destination,
        }
        if resend > 0:
            attributes["http.request.resend_count"] = resend
        with self.tracer.start_as_current_span(
            "send meta_capi",
            kind=SpanKind.CLIENT,
            links=links,
            attributes=attributes,
            context=trace.set_span_in_context(trace.INVALID_SPAN),
        ) as span:
            yield span

    def request_done(
        self,
        span: trace.Span,
        destination: str,
        batch: Sequence[Claimed],
        status: int | None,
        body: Any,
        result: Classified,
        seconds: float,
    ) -> None:
        """Record a Graph API answer on its span and in the metrics."""
        m = self.metrics
        error = result.error
        fbtrace_id = error.fbtrace_id if error is not None else None
        if isinstance(body, dict):
            fbtrace_id = fbtrace_id or _str_or_none(body.get("fbtrace_id"))
            received = body.get("events_received")
            if isinstance(received, int) and not isinstance(received, bool):
                span.set_attribute("meta.events_received", received)
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if fbtrace_id:
            span.set_attribute("meta.fbtrace_id", fbtrace_id)
        if error is not None:
            span.set_attributes(_error_attributes(error))
            span.set_attribute("error.type", str(status) if status else result.verdict.value)
            span.set_attribute("capi.verdict", result.verdict.value)
            span.set_status(Status(StatusCode.ERROR, error.message[:_MAX_REASON]))
        _REQUEST.set((batch, span.get_span_context(), fbtrace_id))
        m.graph_latency.labels(destination).observe(seconds)
        m.batch_size.labels(destination).observe(len(batch))
        m.graph_requests.labels(destination, result.verdict.value, _code(error)).inc()

    def settled(
        self,
        destination: str,
        batch: Sequence[Claimed],
        outcome: str,
        error: GraphError | None = None,
        reason: str | None = None,
    ) -> None:
        """Count a batch's outcome (or failed attempt) and record it in each event's trace."""
        self.metrics.deliveries.labels(destination, outcome, _code(error)).inc(len(batch))
        if outcome == "delivered":
            self.record_coverage(destination, [c.coverage for c in batch])
        if not self.tracing:
            return
        attrs: dict[str, Any] = {}
        request = _REQUEST.get(None)
        link = None
        if request is not None and request[0] is batch:
            link = request[1]
            if request[2]:
                attrs["meta.fbtrace_id"] = request[2]
        attrs.update(_error_attributes(error))
        text = reason or (error.message if error is not None else None)
        if text:
            attrs["capi.reason"] = text[:_MAX_REASON]
        self._queue_outcomes(
            [
                _Outcome(
                    c.traceparent,
                    c.message_id,
                    c.event_name,
                    destination,
                    outcome,
                    {**attrs, "capi.attempts": c.attempts},
                    link,
                )
                for c in batch
            ]
        )

    def expired(self, rows: Sequence[Expired]) -> None:
        """Count and trace deliveries dead-lettered at Meta's 7-day limit."""
        reason = {"capi.reason": "expired: older than Meta's 7-day limit"}
        for r in rows:
            self.metrics.deliveries.labels(r.destination, "dead", "expired").inc()
        if self.tracing:
            self._queue_outcomes(
                [
                    _Outcome(
                        r.traceparent, r.message_id, r.event_name, r.destination, "dead", reason
                    )
                    for r in rows
                ]
            )

    def _queue_outcomes(self, items: Sequence[_Outcome]) -> None:
        """Record outcome spans, a chunk now and the rest in later turns of the loop.

        A span costs the SDK some 25 µs; a full batch's thousand in one go
        would hold ingest up for 25 ms.
        """
        self._backlog.extend(items)
        if not self._emit_scheduled:
            self._emit_outcomes()

    def _emit_outcomes(self) -> None:
        self._emit_scheduled = False
        backlog = self._backlog
        for _ in range(min(OUTCOME_CHUNK, len(backlog))):
            self._outcome_span(backlog.popleft())
        if backlog:
            try:
                asyncio.get_running_loop().call_soon(self._emit_outcomes)
            except RuntimeError:  # no loop (a direct call): finish now
                while backlog:
                    self._outcome_span(backlog.popleft())
            else:
                self._emit_scheduled = True

    def _outcome_span(self, o: _Outcome) -> None:
        parent = _span_context(o.traceparent)
        if parent is None:
            # No stored context, no trace of the event's own to put it in.
            return
        attrs: dict[str, Any] = {
            "messaging.system": "meta_capi",
            "messaging.operation.type": "settle",
            "messaging.operation.name": o.outcome,
            "messaging.message.id": o.message_id,
            "capi.destination": o.destination,
            "capi.outcome": o.outcome,
        }
        pixel = self._pixels.get(o.destination)
        if pixel:
            attrs["messaging.destination.name"] = pixel
        if o.event_name:
            attrs["meta.event_name"] = o.event_name
        attrs.update(o.extra)
        span = self.tracer.start_span(
            f"{o.outcome} meta_capi",
            context=trace.set_span_in_context(trace.NonRecordingSpan(parent)),
            kind=SpanKind.INTERNAL,
            attributes=attrs,
            links=[Link(o.request)] if o.request is not None else None,
        )
        if o.outcome in _FAILED:
            span.set_status(Status(StatusCode.ERROR, o.outcome))
        span.end()

    # -------------------------------------------------------------- coverage
    def record_coverage(self, destination: str, masks: Sequence[int]) -> None:
        """Count the coverage fields of delivered events (bitmasks from :func:`coverage_mask`)."""
        m = self.metrics
        totals = self._covered.setdefault(destination, [0] * (1 + len(COVERAGE_FIELDS)))
        totals[0] += len(masks)
        m.delivered_events.labels(destination).inc(len(masks))
        counts = [0] * len(COVERAGE_FIELDS)
        for mask, n in Tally(masks).items():
            for i, (_name, bit) in enumerate(_COVERAGE_BITS):
                if mask & bit:
                    counts[i] += n
        for i, (name, _bit) in enumerate(_COVERAGE_BITS):
            totals[i + 1] += counts[i]
            if counts[i]:
                m.coverage.labels(destination, name).inc(counts[i])
            if totals[0]:
                m.coverage_ratio.labels(destination, name).set(totals[i + 1] / totals[0])

    # ---------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        """Counts since start and coverage shares, for ``/v1/status`` and the CLI."""
        m = self.metrics
        messages = {
            "received": _total(m.received),
            "accepted": _total(m.accepted),
            "rejected": _total(m.rejected),
            "duplicate": _total(m.duplicates),
            "ids_generated": _total(m.generated_ids),
        }
        outcomes: dict[str, dict[str, int]] = {}
        for labels, value in _samples(m.deliveries):
            per = outcomes.setdefault(labels["destination"], dict.fromkeys(OUTCOMES, 0))
            per[labels["outcome"]] = per.get(labels["outcome"], 0) + int(value)
        destinations: dict[str, Any] = {}
        for name in sorted({*self._covered, *outcomes}):
            totals = self._covered.get(name, [0] * (1 + len(COVERAGE_FIELDS)))
            shares = {
                field: round(totals[i + 1] / totals[0], 4) if totals[0] else None
                for i, field in enumerate(COVERAGE_FIELDS)
            }
            destinations[name] = {
                "outcomes": outcomes.get(name, dict.fromkeys(OUTCOMES, 0)),
                "coverage": {"delivered_events": totals[0], "shares": shares},
            }
        return {"messages": messages, "destinations": destinations}

    async def close(self) -> None:
        """Flush spans (called last on shutdown), off the event loop.

        The exporter's HTTP calls are blocking; on a thread they cannot stall
        the loop, nor deadlock with a collector served by this same loop.
        """
        while self._backlog:
            self._outcome_span(self._backlog.popleft())
        provider = self.provider
        if isinstance(provider, TracerProvider):
            await asyncio.to_thread(provider.force_flush, 5_000)


def _span_context(traceparent: str | None) -> trace.SpanContext | None:
    """A stored or received W3C ``traceparent`` as a remote span context (None: unusable)."""
    if not traceparent or len(traceparent) < 55:
        return None
    parts = traceparent.split("-")
    if len(parts) < 4 or parts[0] == "ff" or len(parts[0]) != 2:
        return None
    version, trace_hex, span_hex, flags_hex = parts[:4]
    if len(trace_hex) != 32 or len(span_hex) != 16 or len(flags_hex) != 2:
        return None
    if version == "00" and len(parts) != 4:
        return None
    try:
        trace_id, span_id, flags = int(trace_hex, 16), int(span_hex, 16), int(flags_hex, 16)
    except ValueError:
        return None
    if not trace_id or not span_id or not (trace_hex + span_hex + flags_hex).islower():
        return None
    return trace.SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(flags & 0x01)
    )


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else ""


def _server_attributes(request: web.Request, route: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "http.request.method": request.method,
        "url.scheme": request.scheme,
        "url.path": request.path,
        "network.protocol.version": f"{request.version.major}.{request.version.minor}",
    }
    if route:
        attrs["http.route"] = route
    host = request.url.host
    if host:
        attrs["server.address"] = host
    if request.url.port:
        attrs["server.port"] = request.url.port
    agent = request.headers.get("User-Agent")
    if agent:
        attrs["user_agent.original"] = agent[:256]
    return attrs


def _server_status(span: trace.Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR))


def _bare_url(url: yarl.URL) -> str:
    return str(url.with_user(None).with_query(None).with_fragment(None))


def _error_attributes(error: GraphError | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if error is not None:
        if error.code is not None:
            attrs["meta.error.code"] = error.code
        if error.subcode is not None:
            attrs["meta.error.subcode"] = error.subcode
        if error.fbtrace_id:
            attrs["meta.fbtrace_id"] = error.fbtrace_id
    return attrs


def _code(error: GraphError | None) -> str:
    return str(error.code) if error is not None and error.code is not None else ""


def _str_or_none(value: Any) -> str | None:
    return str(value) if value else None


def _samples(metric: Counter) -> Iterator[tuple[dict[str, str], float]]:
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                yield sample.labels, sample.value


def _total(metric: Counter) -> int:
    return int(sum(value for _labels, value in _samples(metric)))
