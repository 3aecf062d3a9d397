"""Metrics: the Prometheus metrics, user_data coverage and the status figures.

Owns every metric definition (on a registry of our own, never the global
one), the coverage bitmask stored with each event row and the running
coverage totals counted from it, and the counts-since-start document that
``/v1/status`` and ``capi-sidecar status`` print. ``docs/observability.md``
lists the metrics; :class:`sidecar.telemetry.Telemetry` is what the stages
call.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sidecar.messages import COVERAGE_BITS as _COVERAGE_BITS
from sidecar.messages import COVERAGE_FIELDS as COVERAGE_FIELDS
from sidecar.messages import coverage_mask as coverage_mask

if TYPE_CHECKING:
    from sidecar.policy import GraphError

OUTCOMES = ("delivered", "retry", "paused", "dead", "skipped")


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
        self.batch_bodies = Counter(
            "capi_ingest_batch_bodies",
            "Batch bodies large enough for a mapping worker, by where they were mapped",
            ["mapped_by"],
            registry=r,
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


class Coverage:
    """Delivered events and per-field counts since start, per destination.

    Kept here as well as in the counters so the ratio gauges and the status
    document need no read-back from the registry.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        # destination -> [events, per-field counts...]
        self._totals: dict[str, list[int]] = {}

    def add_destination(self, name: str) -> None:
        """Make a destination's coverage series exist from the start (at zero)."""
        self._totals.setdefault(name, [0] * (1 + len(COVERAGE_FIELDS)))
        m = self._metrics
        m.delivered_events.labels(name)
        for field in COVERAGE_FIELDS:
            m.coverage.labels(name, field)
            m.coverage_ratio.labels(name, field)

    def record(self, destination: str, masks: Sequence[int]) -> None:
        """Count the coverage fields of delivered events (bitmasks from :func:`coverage_mask`)."""
        m = self._metrics
        totals = self._totals.setdefault(destination, [0] * (1 + len(COVERAGE_FIELDS)))
        totals[0] += len(masks)
        m.delivered_events.labels(destination).inc(len(masks))
        counts = _field_counts(masks)
        for i, (name, _bit) in enumerate(_COVERAGE_BITS):
            totals[i + 1] += counts[i]
            if counts[i]:
                m.coverage.labels(destination, name).inc(counts[i])
            if totals[0]:
                m.coverage_ratio.labels(destination, name).set(totals[i + 1] / totals[0])

    def destinations(self) -> set[str]:
        return set(self._totals)

    def figures(self, destination: str) -> dict[str, Any]:
        """A destination's delivered events and the share carrying each field."""
        totals = self._totals.get(destination, [0] * (1 + len(COVERAGE_FIELDS)))
        shares = {
            field: round(totals[i + 1] / totals[0], 4) if totals[0] else None
            for i, field in enumerate(COVERAGE_FIELDS)
        }
        return {"delivered_events": totals[0], "shares": shares}


def _field_counts(masks: Sequence[int]) -> list[int]:
    counts = [0] * len(COVERAGE_FIELDS)
    for mask, n in Tally(masks).items():
        for i, (_name, bit) in enumerate(_COVERAGE_BITS):
            if mask & bit:
                counts[i] += n
    return counts


def status_figures(m: Metrics, coverage: Coverage) -> dict[str, Any]:
    """Counts since start and coverage shares, for ``/v1/status`` and the CLI."""
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
    for name in sorted({*coverage.destinations(), *outcomes}):
        destinations[name] = {
            "outcomes": outcomes.get(name, dict.fromkeys(OUTCOMES, 0)),
            "coverage": coverage.figures(name),
        }
    return {"messages": messages, "destinations": destinations}


def error_code(error: GraphError | None) -> str:
    """The ``code`` label of a Graph API error ("" for none or no code)."""
    return str(error.code) if error is not None and error.code is not None else ""


def _samples(metric: Counter) -> Iterator[tuple[dict[str, str], float]]:
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                yield sample.labels, sample.value


def _total(metric: Counter) -> int:
    return int(sum(value for _labels, value in _samples(metric)))
