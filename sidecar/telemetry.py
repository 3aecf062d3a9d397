"""Telemetry: what each stage reports about an event, as metrics and spans.

Owns :class:`Telemetry`, the one object handed to ingest, outbox and
delivery: each of its methods is a moment of an event's life (ingested,
sent to the Graph API, settled, expired) and records it both ways. The
metric definitions, coverage and status figures live in
:mod:`sidecar.metrics`; the span shapes, ``traceparent`` handling and the
provider built from the ``OTEL_*`` environment in :mod:`sidecar.tracing`.
The names other modules import from here are re-exported (``__all__``).

Providers are injected; nothing here sets a global provider. Without one
no span is made at all. ``docs/observability.md`` is the operator's view.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from aiohttp import TraceConfig
from aiohttp.typedefs import Middleware
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from sidecar import __version__, tracing
from sidecar.metrics import (
    COVERAGE_FIELDS,
    OUTCOMES,
    Coverage,
    Metrics,
    coverage_mask,
    error_code,
    status_figures,
)
from sidecar.tracing import (
    MAX_LINKS,
    MAX_REASON,
    OUTCOME_CHUNK,
    Outcome,
    OutcomeSpans,
    new_tracer_provider,
    tracer_provider_from_env,
)
from sidecar.tracing import span_context as _span_context

if TYPE_CHECKING:
    from sidecar.outbox import Claimed, Expired, NewEvent
    from sidecar.policy import Classified, GraphError

__all__ = [
    "COVERAGE_FIELDS",
    "MAX_LINKS",
    "OUTCOMES",
    "OUTCOME_CHUNK",
    "Metrics",
    "Telemetry",
    "_span_context",
    "coverage_mask",
    "new_tracer_provider",
    "tracer_provider_from_env",
]


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
        self._coverage = Coverage(self.metrics)
        self._outcomes = OutcomeSpans(self.tracer)

    def add_destination(self, name: str, pixel_id: str) -> None:
        """Make a destination's series exist from the start (at zero)."""
        self._outcomes.add_destination(name, pixel_id)
        self._coverage.add_destination(name)
        self.metrics.paused.labels(name).set(0)

    # ---------------------------------------------------------------- ingest
    def server_middlewares(self) -> list[Middleware]:
        """The SERVER span of each ingest request; none when tracing is off."""
        return [tracing.server_middleware(self.tracer)] if self.tracing else []

    @contextmanager
    def ingest_span(self, endpoint: str, headers: Mapping[str, str]) -> Iterator[trace.Span]:
        """The PRODUCER span of one ingest request: the context stored with its events."""
        if not self.tracing:
            # Off: skip the no-op span's context juggling on the hot path; the
            # app's own traceparent is still stored (see ``traceparent``).
            yield trace.INVALID_SPAN
            return
        with tracing.ingest_span(self.tracer, endpoint, headers) as span:
            yield span

    @staticmethod
    def traceparent(span: trace.Span, headers: Mapping[str, str]) -> str | None:
        """The W3C context to store with each event of this request (see ``tracing``)."""
        return tracing.stored_traceparent(span, headers)

    @staticmethod
    def describe_ingest(span: trace.Span, received: int, events: Sequence[NewEvent]) -> None:
        tracing.describe_ingest(span, received, events)

    def ingested(self, events: Sequence[NewEvent], fresh: Sequence[bool]) -> None:
        """Count committed events; settle the deliveries ingest already decided."""
        m = self.metrics
        accepted: dict[str, int] = {}
        settled: dict[tuple[str, str], int] = {}
        duplicates = 0
        for ev, is_new in zip(events, fresh, strict=True):
            if not is_new:
                duplicates += 1
                continue
            accepted[ev.type] = accepted.get(ev.type, 0) + 1
            for d in ev.deliveries:
                if d.state == "pending":
                    continue
                key = (d.destination, d.state)
                settled[key] = settled.get(key, 0) + 1
                if self.tracing:
                    reason = {"capi.reason": (d.reason or "")[:MAX_REASON]}
                    self._outcomes.queue(
                        [
                            Outcome(
                                ev.traceparent,
                                ev.message_id,
                                ev.event_name,
                                d.destination,
                                d.state,
                                reason,
                                None,
                            )
                        ]
                    )
        # One labels() lookup per series and request, not per event.
        if duplicates:
            m.duplicates.inc(duplicates)
        for kind, n in accepted.items():
            m.accepted.labels(kind).inc(n)
        for (dest, state), n in settled.items():
            m.deliveries.labels(dest, state, "").inc(n)

    # -------------------------------------------------------------- delivery
    def client_trace_configs(self) -> list[TraceConfig]:
        """aiohttp client instrumentation for the Graph API session; none when tracing is off."""
        return tracing.client_trace_configs(self.provider) if self.tracing else []

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
        links = tracing.event_links(traceparents, message_ids) if self.tracing else []
        with tracing.delivery_span(
            self.tracer, destination, pixel_id, links, len(message_ids), resend
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
        tracing.describe_answer(span, batch, status, body, result)
        m = self.metrics
        m.graph_latency.labels(destination).observe(seconds)
        m.batch_size.labels(destination).observe(len(batch))
        m.graph_requests.labels(destination, result.verdict.value, error_code(result.error)).inc()

    def settled(
        self,
        destination: str,
        batch: Sequence[Claimed],
        outcome: str,
        error: GraphError | None = None,
        reason: str | None = None,
    ) -> None:
        """Count a batch's outcome (or failed attempt) and record it in each event's trace."""
        self.metrics.deliveries.labels(destination, outcome, error_code(error)).inc(len(batch))
        if outcome == "delivered":
            self.record_coverage(destination, [c.coverage for c in batch])
        if not self.tracing:
            return
        link, attrs = tracing.answered_request(batch)
        attrs.update(tracing.error_attributes(error))
        text = reason or (error.message if error is not None else None)
        if text:
            attrs["capi.reason"] = text[:MAX_REASON]
        self._outcomes.queue(
            [
                Outcome(
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
        per_destination: dict[str, int] = {}
        for r in rows:
            per_destination[r.destination] = per_destination.get(r.destination, 0) + 1
        for dest, n in per_destination.items():
            self.metrics.deliveries.labels(dest, "dead", "expired").inc(n)
        if self.tracing:
            self._outcomes.queue(
                [
                    Outcome(
                        r.traceparent, r.message_id, r.event_name, r.destination, "dead", reason
                    )
                    for r in rows
                ]
            )

    # ------------------------------------------------------ coverage, status
    def record_coverage(self, destination: str, masks: Sequence[int]) -> None:
        """Count the coverage fields of delivered events (bitmasks from :func:`coverage_mask`)."""
        self._coverage.record(destination, masks)

    def status(self) -> dict[str, Any]:
        """Counts since start and coverage shares, for ``/v1/status`` and the CLI."""
        return status_figures(self.metrics, self._coverage)

    async def close(self) -> None:
        """Flush spans (called last on shutdown), off the event loop.

        The exporter's HTTP calls are blocking; on a thread they cannot stall
        the loop, nor deadlock with a collector served by this same loop.
        """
        self._outcomes.flush()
        provider = self.provider
        if isinstance(provider, TracerProvider):
            await asyncio.to_thread(provider.force_flush, 5_000)
