"""Ingest: the Segment-compatible HTTP API that accepts events.

Owns the request path up to the durable commit: write-key auth, body limits
(gzip included, with the decompressed size capped), JSON parsing,
per-message validation, the top-level batch ``context`` merge, mapping each
message for every destination, and the answer. ``200`` is sent only after
the outbox has committed every accepted message.

Status codes: 200 stored (with ``rejected`` listing refused messages), 400
bad request, unsupported encoding, or every message refused, 401 bad write
key, 413 too large, 503 (+ ``Retry-After``) when the outbox is full,
the disk write failed, or the sidecar is shutting down.
"""

from __future__ import annotations

import base64
import hmac
import logging
import time
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from sidecar.errors import OutboxError, OutboxFull
from sidecar.mapping import Dead, Mapped, Mapper, Skipped
from sidecar.outbox import NewDelivery, NewEvent, Outbox
from sidecar.telemetry import Telemetry, coverage_mask

log = logging.getLogger(__name__)

SINGLE_TYPES = ("track", "page", "screen", "identify", "group", "alias")
MESSAGE_TYPES = frozenset(SINGLE_TYPES)
INGEST_PATHS = (*(f"/v1/{kind}" for kind in SINGLE_TYPES), "/v1/batch", "/v1/import")
RETRY_AFTER_SECONDS = "5"


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


class Ingest:
    """Turns HTTP requests into committed outbox rows."""

    def __init__(
        self,
        outbox: Outbox,
        mappers: Mapping[str, Mapper],
        telemetry: Telemetry,
        limits: Limits,
        *,
        write_key: str | None,
        on_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.outbox = outbox
        self.mappers = mappers
        self.telemetry = telemetry
        self.limits = limits
        self.write_key = write_key
        self.on_commit = on_commit
        self.clock = clock
        self.accepting = True

    async def handle(self, request: web.Request) -> web.Response:
        endpoint = request.path
        started = time.perf_counter()
        with self.telemetry.ingest_span(endpoint, request.headers) as span:
            try:
                response = await self._handle(request, endpoint, span)
            except BadRequest as err:
                response = _error(err.status, err.message)
            span.set_attribute("http.response.status_code", response.status)
        m = self.telemetry.metrics
        if response.status != 200:
            m.requests_refused.labels(str(response.status)).inc()
        m.ingest_latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    async def _handle(self, request: web.Request, endpoint: str, span: Any) -> web.Response:
        self._authorize(request)
        if not self.accepting:
            return _unavailable("the sidecar is shutting down")
        if self.outbox.over_cap:
            return _unavailable("the outbox is full; retry later")
        body = await read_body(request, self.limits.max_request_bytes)
        messages, context = parse_messages(endpoint, body, self.limits)
        now = self.clock()
        traceparent = self.telemetry.traceparent(span, request.headers)
        events, rejected = self._prepare(messages, context, now, traceparent)
        self.telemetry.describe_ingest(span, len(messages), events)
        if not events:
            return web.json_response({"success": False, "error": "every message was rejected",
                                      "rejected": rejected}, status=400)
        try:
            fresh = await self.outbox.add(events)
        except OutboxFull as err:
            return _unavailable(str(err))
        except OutboxError as err:
            log.error("ingest could not store %d messages: %s", len(events), err)
            return _unavailable("the outbox could not store the events; retry later")
        self.telemetry.ingested(events, fresh)
        self.on_commit()
        answer: dict[str, Any] = {"success": True}
        if rejected:
            answer["rejected"] = rejected
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    def _authorize(self, request: web.Request) -> None:
        if self.write_key is None:
            return
        header = request.headers.get("Authorization", "")
        supplied = ""
        if header[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(header[6:], validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                decoded = ""
            supplied = decoded.partition(":")[0]
        if not hmac.compare_digest(supplied.encode(), self.write_key.encode()):
            raise BadRequest(401, "missing or wrong write key (HTTP Basic, write key as user name)")

    def _prepare(
        self, messages: Sequence[Any], context: Any, now: float, traceparent: str | None
    ) -> tuple[list[NewEvent], list[dict[str, Any]]]:
        events: list[NewEvent] = []
        rejected: list[dict[str, Any]] = []
        m = self.telemetry.metrics
        # One labelled increment per type and request, not per message: a
        # labels() lookup costs about as much as validating a message.
        received: dict[str, int] = {}
        for index, raw in enumerate(messages):
            kind = raw.get("type") if isinstance(raw, dict) else None
            label = kind if kind in MESSAGE_TYPES else "invalid"
            received[label] = received.get(label, 0) + 1
            try:
                message = validate_message(raw, context, self.limits.max_message_bytes)
            except ValueError as err:
                mid = raw.get("messageId") if isinstance(raw, dict) else None
                rejected.append({"index": index, "messageId": mid if isinstance(mid, str) else None,
                                 "error": str(err)})
                m.rejected.labels(_reason_label(str(err))).inc()
                continue
            if "messageId" not in message:
                message["messageId"] = str(uuid.uuid4())
                m.generated_ids.inc()
            events.append(self._map(message, now, traceparent))
        for label, count in received.items():
            m.received.labels(label).inc(count)
        return events, rejected

    def _map(self, message: dict[str, Any], now: float, traceparent: str | None) -> NewEvent:
        deliveries = []
        event_name: str | None = None
        event_time: int | None = None
        for name, mapper in self.mappers.items():
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


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"success": False, "error": message}, status=status)


def _unavailable(message: str) -> web.Response:
    response = _error(503, message)
    response.headers["Retry-After"] = RETRY_AFTER_SECONDS
    return response


def _reason_label(message: str) -> str:
    # A bounded label set: the first words of the validation message.
    return message.split(":", 1)[0][:40]


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, decompressed, at most ``limit`` bytes either way."""
    if request.content_length is not None and request.content_length > limit:
        raise BadRequest(413, f"request body of {request.content_length} bytes exceeds {limit}")
    raw = await _read_at_most(request, limit + 1)
    if len(raw) > limit:
        raise BadRequest(413, f"request body exceeds {limit} bytes")
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding != "gzip":
        raise BadRequest(400, f"unsupported Content-Encoding {encoding!r} (use gzip or none)")
    inflater = zlib.decompressobj(wbits=31)
    try:
        body = inflater.decompress(raw, limit + 1)
    except zlib.error as err:
        raise BadRequest(400, f"body is not valid gzip: {err}") from None
    if len(body) > limit or inflater.unconsumed_tail:
        raise BadRequest(413, f"decompressed body exceeds {limit} bytes")
    return body


async def _read_at_most(request: web.Request, most: int) -> bytes:
    """Up to ``most`` bytes of the body, however many segments it arrives in.

    ``StreamReader.read(n)`` returns only what is buffered so far, which for
    a body sent in several TCP segments is a prefix of it.
    """
    chunks: list[bytes] = []
    size = 0
    while size < most:  # each pass adds at least one byte or ends the body
        chunk = await request.content.read(most - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if request.content_length is not None and size >= request.content_length:
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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
