"""From a request body to mapped events: the pure middle of ingest.

Owns what happens between reading a body and storing it: JSON parsing, the
per-message checks, the top-level batch ``context`` merge, a generated
``messageId`` where a message has none, mapping each message for every
destination, and the counts ingest reports as metrics. Nothing here touches
HTTP, SQLite, telemetry or the clock, so the same code runs in the server
process (:mod:`sidecar.ingest`) and in a mapping worker process
(:mod:`sidecar.mapworker`), which imports only this module, the mapping
stage and the row types of :mod:`sidecar.rows`.

The user_data coverage bitmask (which customer-information fields an event
carries) is computed here too, from the payload already in hand, and stored
with each row for the delivery metrics.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from sidecar.mapping import Dead, Mapped, Skipped
from sidecar.rows import NewDelivery, NewEvent

if TYPE_CHECKING:
    from sidecar.mapping import Mapper

SINGLE_TYPES = ("track", "page", "screen", "identify", "group", "alias")
MESSAGE_TYPES = frozenset(SINGLE_TYPES)

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
COVERAGE_BITS = tuple((name, 1 << i) for i, name in enumerate(COVERAGE_FIELDS))


class BadRequest(Exception):
    """The request as a whole is unusable; carries the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_bytes: int
    max_request_bytes: int
    max_batch_messages: int


@dataclass(slots=True)
class Prepared:
    """A request's messages, checked and mapped, with the counts for its metrics."""

    events: list[NewEvent] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    received: dict[str, int] = field(default_factory=dict)  # per type, or "invalid"
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    generated_ids: int = 0

    @property
    def message_count(self) -> int:
        return sum(self.received.values())


def coverage_mask(user_data: Mapping[str, Any] | None) -> int:
    """The coverage fields an event carries, as a bitmask stored with its row.

    Computed at ingest from the payload ingest already holds as a dict, so the
    drainer counts coverage from one integer per event instead of parsing
    every payload it delivers.
    """
    if not user_data:
        return 0
    mask = 0
    for name, bit in COVERAGE_BITS:
        if name in user_data:
            mask |= bit
    return mask


def prepare_body(
    endpoint: str, body: bytes, limits: Limits, mappers: Mapping[str, Mapper], *,
    now: float, traceparent: str | None,
) -> Prepared:
    """Parse, check and map a request body; :class:`BadRequest` if it is unusable whole."""
    messages, context = parse_messages(endpoint, body, limits)
    return prepare(messages, context, mappers, limits.max_message_bytes,
                   now=now, traceparent=traceparent)


def prepare(
    messages: Sequence[Any], context: Any, mappers: Mapping[str, Mapper], max_bytes: int, *,
    now: float, traceparent: str | None,
) -> Prepared:
    """Check and map each message; a refused one goes to ``rejected`` with the reason."""
    out = Prepared()
    received = out.received
    for index, raw in enumerate(messages):
        kind = raw.get("type") if isinstance(raw, dict) else None
        label = kind if kind in MESSAGE_TYPES else "invalid"
        received[label] = received.get(label, 0) + 1
        try:
            message = validate_message(raw, context, max_bytes)
        except ValueError as err:
            mid = raw.get("messageId") if isinstance(raw, dict) else None
            out.rejected.append({"index": index, "messageId": mid if isinstance(mid, str) else None,
                                 "error": str(err)})
            reason = _reason_label(str(err))
            out.rejected_reasons[reason] = out.rejected_reasons.get(reason, 0) + 1
            continue
        if "messageId" not in message:
            message["messageId"] = str(uuid.uuid4())
            out.generated_ids += 1
        out.events.append(map_message(message, mappers, now, traceparent))
    return out


def map_message(
    message: dict[str, Any], mappers: Mapping[str, Mapper], now: float, traceparent: str | None
) -> NewEvent:
    """One checked message as the rows to store: its Meta payload per destination."""
    deliveries = []
    event_name: str | None = None
    event_time: int | None = None
    for name, mapper in mappers.items():
        outcome = mapper.map(message, received_at=now, now=now)
        event_name = event_name or outcome.event_name
        if isinstance(outcome, Mapped):
            event_time = int(outcome.payload["event_time"])
            payload = outcome.payload
            deliveries.append(NewDelivery(name, "pending", orjson.dumps(payload),
                                          coverage=coverage_mask(payload.get("user_data"))))
        elif isinstance(outcome, Skipped):
            deliveries.append(NewDelivery(name, "skipped", reason=outcome.reason))
        elif isinstance(outcome, Dead):
            deliveries.append(NewDelivery(name, "dead", reason=outcome.reason))
    return NewEvent(
        message_id=message["messageId"], type=message["type"], event_name=event_name,
        received_at=now, event_time=event_time if event_time is not None else int(now),
        traceparent=traceparent, deliveries=tuple(deliveries),
    )


def _reason_label(message: str) -> str:
    # A bounded label set: the first words of the validation message.
    return message.split(":", 1)[0][:40]


def parse_messages(endpoint: str, body: bytes, limits: Limits) -> tuple[list[Any], Any]:
    """The messages of a request and its top-level batch context."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise BadRequest(400, f"body is not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise BadRequest(400, "body must be a JSON object")
    kind = endpoint.rsplit("/", 1)[-1]
    if kind in MESSAGE_TYPES:
        if len(body) > limits.max_message_bytes:
            raise BadRequest(413, f"message of {len(body)} bytes exceeds "
                                  f"{limits.max_message_bytes}")
        doc["type"] = kind
        return [doc], None
    batch = doc.get("batch")
    if not isinstance(batch, list):
        raise BadRequest(400, 'a batch body must be {"batch": [messages...]}')
    if not batch:
        raise BadRequest(400, "batch is empty")
    if len(batch) > limits.max_batch_messages:
        raise BadRequest(413, f"batch holds {len(batch)} messages; the limit is "
                              f"{limits.max_batch_messages}")
    context = doc.get("context")
    if context is None:
        return batch, {}  # a batch's messages are size-checked one by one
    if not isinstance(context, dict):
        raise BadRequest(400, "batch context must be an object")
    return batch, context


def validate_message(raw: Any, batch_context: Any, max_bytes: int) -> dict[str, Any]:
    """Check one message and return it ready for mapping; ValueError says why not."""
    if not isinstance(raw, dict):
        raise ValueError("message must be a JSON object")
    kind = raw.get("type")
    if kind not in MESSAGE_TYPES:
        raise ValueError(f"type: must be one of {', '.join(SINGLE_TYPES)}")
    if batch_context is not None and len(orjson.dumps(raw)) > max_bytes:
        raise ValueError(f"size: message exceeds {max_bytes} bytes")
    _check_fields(raw, kind)
    if batch_context:
        raw["context"] = merge_context(batch_context, raw.get("context") or {})
    return raw


def _check_fields(raw: Mapping[str, Any], kind: str) -> None:
    mid = raw.get("messageId")
    if mid is not None and (not isinstance(mid, str) or not mid.strip() or len(mid) > 200):
        raise ValueError("messageId: must be a non-empty string of at most 200 characters")
    if kind == "track":
        event = raw.get("event")
        if not isinstance(event, str) or not event.strip():
            raise ValueError("event: a track call needs a non-empty event name")
    if kind in ("track", "page", "screen") and not (raw.get("userId") or raw.get("anonymousId")):
        raise ValueError("userId: a message needs userId or anonymousId")
    for key in ("properties", "context", "traits"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise ValueError(f"{key}: must be an object")
    for key in ("timestamp", "originalTimestamp"):
        if raw.get(key) is not None:
            _check_timestamp(key, raw[key])


def _check_timestamp(key: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{key}: must be an ISO 8601 string")
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{key}: {value[:40]!r} is not an ISO 8601 time") from None


def merge_context(base: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    """The batch context under the message's own: the message wins, objects merge."""
    merged = dict(base)
    for key, value in own.items():
        below = merged.get(key)
        if isinstance(value, dict) and isinstance(below, dict):
            merged[key] = merge_context(below, value)
        else:
            merged[key] = value
    return merged


# --- the wire form between a mapping worker and the server ------------------
# Plain tuples, so ``marshal`` (C, and several times faster than pickle for
# this shape) can carry them over the worker's private pipe.

def to_wire(p: Prepared) -> tuple[Any, ...]:
    events = [
        (ev.message_id, ev.type, ev.event_name, ev.received_at, ev.event_time, ev.traceparent,
         tuple((d.destination, d.state, d.payload, d.reason, d.coverage) for d in ev.deliveries))
        for ev in p.events
    ]
    return (events, p.rejected, p.received, p.rejected_reasons, p.generated_ids)


def from_wire(wire: tuple[Any, ...]) -> Prepared:
    events, rejected, received, reasons, generated = wire
    return Prepared(
        events=[
            NewEvent(mid, kind, name, received_at, event_time, tp,
                     tuple(NewDelivery(*d) for d in deliveries))
            for mid, kind, name, received_at, event_time, tp, deliveries in events
        ],
        rejected=rejected, received=received, rejected_reasons=reasons, generated_ids=generated,
    )
