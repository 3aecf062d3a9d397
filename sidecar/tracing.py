"""Tracing: the OpenTelemetry span shapes of an event's life, and the provider.

Attribute names follow the OpenTelemetry messaging and HTTP semantic
conventions; ours carry a ``capi.`` or ``meta.`` prefix:

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

Also owns the W3C ``traceparent`` parsing and formatting, and the
construction of a provider from the ``OTEL_*`` environment
(:func:`tracer_provider_from_env`, called by the entry point only). This
module never sets a global provider; :class:`sidecar.telemetry.Telemetry`
is what the stages call.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
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

from sidecar import __version__

if TYPE_CHECKING:
    from sidecar.outbox import Claimed, NewEvent
    from sidecar.policy import Classified, GraphError

# The name this code logged under before it left sidecar/telemetry.py; log
# filters and docs/observability.md use it.
log = logging.getLogger("sidecar.telemetry")

_PROPAGATOR = TraceContextTextMapPropagator()
# A batch holds up to 1,000 events and its span links to each of them; the
# SDK keeps only 128 links per span unless told otherwise.
MAX_LINKS = 1000
MAX_REASON = 300
OUTCOME_CHUNK = 100
_FAILED = frozenset({"retry", "paused", "dead"})


# ------------------------------------------------------------------ provider
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


# --------------------------------------------------------------- traceparent
def span_context(traceparent: str | None) -> trace.SpanContext | None:
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


def stored_traceparent(span: trace.Span, headers: Mapping[str, str]) -> str | None:
    """The W3C context to store with each event of an ingest request.

    The ingest span's when tracing is on; otherwise the app's own (when it
    sent a valid one), so the event still names the trace it came from.
    """
    ctx = span.get_span_context()
    if not ctx.is_valid:
        ctx = span_context(headers.get("traceparent")) or ctx
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


# -------------------------------------------------------------------- ingest
def server_middleware(tracer: trace.Tracer) -> Middleware:
    """The SERVER span of each ingest request, continuing the app's ``traceparent``.

    Written here rather than taken from opentelemetry-instrumentation-aiohttp-server:
    its middleware (0.66b1) works only after a global ``instrument()``,
    which replaces ``aiohttp.web.Application`` process-wide and uses the
    global meter; a library must not do that.
    """

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

    return server_span


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


@contextmanager
def ingest_span(
    tracer: trace.Tracer, endpoint: str, headers: Mapping[str, str]
) -> Iterator[trace.Span]:
    """The PRODUCER span of one ingest request: the context stored with its events."""
    # Under the SERVER span it is that span's child; alone, it continues
    # the incoming traceparent itself.
    current = trace.get_current_span().get_span_context()
    parent = None if current.is_valid else _PROPAGATOR.extract(headers)
    with tracer.start_as_current_span(
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


def describe_ingest(span: trace.Span, received: int, events: Sequence[NewEvent]) -> None:
    """Name the message an ingest span carries, or count them for a batch."""
    if not span.is_recording():
        return
    if received == 1 and len(events) == 1:
        span.set_attribute("messaging.message.id", events[0].message_id)
    else:
        span.set_attribute("messaging.batch.message_count", received)


# ------------------------------------------------------------------ delivery
def client_trace_configs(provider: trace.TracerProvider | None) -> list[TraceConfig]:
    """aiohttp client instrumentation for the Graph API session.

    The URL it records is stripped of query and user info. The access token
    is never in the URL in the first place (it travels in the body).
    """
    from opentelemetry.instrumentation._semconv import _StabilityMode
    from opentelemetry.instrumentation.aiohttp_client import create_trace_config
    from opentelemetry.metrics import NoOpMeterProvider

    return [
        create_trace_config(
            url_filter=_bare_url,
            tracer_provider=provider,
            meter_provider=NoOpMeterProvider(),
            sem_conv_opt_in_mode=_StabilityMode.HTTP,
        )
    ]


def _bare_url(url: yarl.URL) -> str:
    return str(url.with_user(None).with_query(None).with_fragment(None))


def event_links(traceparents: Sequence[str | None], message_ids: Sequence[str]) -> list[Link]:
    """A link to each event's stored context (events without one get none)."""
    links: list[Link] = []
    cache: dict[str | None, trace.SpanContext | None] = {}
    for tp, mid in zip(traceparents, message_ids, strict=True):
        ctx = cache[tp] if tp in cache else cache.setdefault(tp, span_context(tp))
        if ctx is not None:
            links.append(Link(ctx, {"messaging.message.id": mid}))
    return links


@contextmanager
def delivery_span(
    tracer: trace.Tracer,
    destination: str,
    pixel_id: str,
    links: Sequence[Link],
    message_count: int,
    resend: int,
) -> Iterator[trace.Span]:
    """The CLIENT span of one Graph API request, a root span linked to its events."""
    attributes: dict[str, Any] = {
        "messaging.system": "meta_capi",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": pixel_id,
        "messaging.batch.message_count": message_count,
        "http.request.method": "POST",
        "capi.destination": destination,
    }
    if resend > 0:
        attributes["http.request.resend_count"] = resend
    with tracer.start_as_current_span(
        "send meta_capi",
        kind=SpanKind.CLIENT,
        links=links,
        attributes=attributes,
        context=trace.set_span_in_context(trace.INVALID_SPAN),
    ) as span:
        yield span


# The Graph API request (span context, fbtrace_id) whose answer the current
# task is settling; set by ``describe_answer``, read by ``answered_request``.
_REQUEST: contextvars.ContextVar[tuple[Sequence[Any], trace.SpanContext, str | None]] = (
    contextvars.ContextVar("capi_graph_request")
)


def describe_answer(
    span: trace.Span, batch: Sequence[Claimed], status: int | None, body: Any, result: Classified
) -> None:
    """Record a Graph API answer on its CLIENT span, and remember it for the outcome spans."""
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
        span.set_attributes(error_attributes(error))
        span.set_attribute("error.type", str(status) if status else result.verdict.value)
        span.set_attribute("capi.verdict", result.verdict.value)
        span.set_status(Status(StatusCode.ERROR, error.message[:MAX_REASON]))
    _REQUEST.set((batch, span.get_span_context(), fbtrace_id))


def answered_request(batch: Sequence[Any]) -> tuple[trace.SpanContext | None, dict[str, Any]]:
    """The request span that carried this very batch, and its ``fbtrace_id`` attribute."""
    request = _REQUEST.get(None)
    if request is None or request[0] is not batch:
        return None, {}
    return request[1], ({"meta.fbtrace_id": request[2]} if request[2] else {})


def error_attributes(error: GraphError | None) -> dict[str, Any]:
    """A Graph API error's code, subcode and ``fbtrace_id`` as span attributes."""
    attrs: dict[str, Any] = {}
    if error is not None:
        if error.code is not None:
            attrs["meta.error.code"] = error.code
        if error.subcode is not None:
            attrs["meta.error.subcode"] = error.subcode
        if error.fbtrace_id:
            attrs["meta.fbtrace_id"] = error.fbtrace_id
    return attrs


def _str_or_none(value: Any) -> str | None:
    return str(value) if value else None


# ------------------------------------------------------------------ outcomes
class Outcome(NamedTuple):
    """One outcome span waiting to be recorded."""

    traceparent: str | None
    message_id: str
    event_name: str | None
    destination: str
    outcome: str
    extra: Mapping[str, Any]
    request: trace.SpanContext | None = None


class OutcomeSpans:
    """Records each event's outcome span in the event's own trace, a chunk at a time."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer
        self._pixels: dict[str, str] = {}
        self._backlog: deque[Outcome] = deque()
        self._emit_scheduled = False

    def add_destination(self, name: str, pixel_id: str) -> None:
        self._pixels[name] = pixel_id

    def queue(self, items: Sequence[Outcome]) -> None:
        """Record outcome spans, a chunk now and the rest in later turns of the loop.

        A span costs the SDK some 25 µs; a full batch's thousand in one go
        would hold ingest up for 25 ms.
        """
        self._backlog.extend(items)
        if not self._emit_scheduled:
            self._emit()

    def flush(self) -> None:
        """Record every span still waiting (on shutdown)."""
        while self._backlog:
            self._span(self._backlog.popleft())

    def _emit(self) -> None:
        self._emit_scheduled = False
        backlog = self._backlog
        for _ in range(min(OUTCOME_CHUNK, len(backlog))):
            self._span(backlog.popleft())
        if backlog:
            try:
                asyncio.get_running_loop().call_soon(self._emit)
            except RuntimeError:  # no loop (a direct call): finish now
                self.flush()
            else:
                self._emit_scheduled = True

    def _span(self, o: Outcome) -> None:
        parent = span_context(o.traceparent)
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
        span = self._tracer.start_span(
            f"{o.outcome} meta_capi",
            context=trace.set_span_in_context(trace.NonRecordingSpan(parent)),
            kind=SpanKind.INTERNAL,
            attributes=attrs,
            links=[Link(o.request)] if o.request is not None else None,
        )
        if o.outcome in _FAILED:
            span.set_status(Status(StatusCode.ERROR, o.outcome))
        span.end()
